"""A PyTorch Lightning callback that runs a :class:`gradest.monitor.GradientMonitor` while training.

Needs the ``lightning`` extra (``pip install 'gradest[lightning]'``); ``lightning.pytorch`` is used
when installed, else the older ``pytorch_lightning``. Importing this module without either raises
an ImportError that names the extra. In a training script::

    monitor = GradientMonitor(module, lambda batch, g: module.stochastic_loss(batch, g),
                              every=50, repeats=16, state=[module.estimator])
    trainer = Trainer(callbacks=[MonitorCallback(monitor)])

At the start of each training batch (before Lightning's forward, backward and optimizer step) the
callback hands the batch and ``trainer.global_step`` to ``monitor.step``: the monitor measures every
``every`` steps and leaves the run unchanged. Each measurement is also logged to the trainer's
logger as ``<prefix>/<group>/variance``, ``…/variance_stderr``, ``…/snr``, ``…/mean_norm`` and
``<prefix>/monitor_share`` (from the second measurement on: :func:`gradest.monitor.sinks.scalars`; with a
loss built by :func:`gradest.graph`, the groups include one ``node:NAME`` per stochastic node).
"""

from __future__ import annotations

from typing import Any

try:
    from lightning.pytorch import Callback
except ImportError:
    try:
        from pytorch_lightning import Callback
    except ImportError:
        raise ImportError(
            "gradest.monitor_lightning needs PyTorch Lightning: pip install 'gradest[lightning]'"
        ) from None

from gradest.monitor import GradientMonitor
from gradest.monitor.sinks import scalars


class MonitorCallback(Callback):
    """Measure the gradient variance with ``monitor`` every ``monitor.every`` training steps."""

    def __init__(self, monitor: GradientMonitor) -> None:
        super().__init__()
        self.monitor = monitor

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        records = self.monitor.step(trainer.global_step, batch)
        if records and trainer.logger is not None:  # the same scalars as the monitor's TensorBoard output
            metrics = scalars(records, self.monitor.prefix, self.monitor.overhead().share)
            trainer.logger.log_metrics(metrics, step=trainer.global_step)

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self.monitor.close()
