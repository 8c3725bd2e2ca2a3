"""The PyTorch Lightning callback (skipped unless lightning or pytorch_lightning is installed)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gradest.monitor import GradientMonitor
from gradest.rng import make_generator

try:
    import lightning.pytorch as pl
except ImportError:
    pl = pytest.importorskip("pytorch_lightning",
                             reason="needs PyTorch Lightning: pip install 'gradest[lightning]'")


class NoisyRegression(pl.LightningModule):
    """y ≈ (x + σε) W: a stochastic loss whose noise comes from the generator it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 1).double()
        self.head = nn.Linear(1, 1).double()
        self.train_gen = make_generator(0)

    def stochastic_loss(self, batch, generator):
        x, y = batch
        noisy = x + 0.3 * torch.randn(x.shape, generator=generator, dtype=x.dtype)
        return ((self.head(self.layer(noisy)).squeeze(-1) - y) ** 2).mean()

    def training_step(self, batch, batch_idx):
        return self.stochastic_loss(batch, self.train_gen)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Collect(pl.loggers.Logger):
    """A logger that keeps the metrics it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int, dict]] = []

    name = "collect"
    version = "0"

    def log_metrics(self, metrics, step=None):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, *args, **kwargs):
        pass


def _fit(callback_monitor: bool):
    from gradest.monitor_lightning import MonitorCallback

    gen = make_generator(1)
    x = torch.randn(48, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    module = NoisyRegression()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    logger = Collect()
    monitor = GradientMonitor(module, module.stochastic_loss, every=2, repeats=4, seed=3)
    callbacks = [MonitorCallback(monitor)] if callback_monitor else []
    trainer = pl.Trainer(max_steps=6, logger=logger, callbacks=callbacks, accelerator="cpu", devices=1,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0)
    trainer.fit(module, loader)
    return module, monitor, logger


# Lightning's advice (few workers, few batches) and its deprecation notices about torch's pytree
@pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning", "ignore::DeprecationWarning")
def test_the_callback_measures_logs_and_changes_nothing():
    module, monitor, logger = _fit(True)
    plain, _, _ = _fit(False)
    assert [r.step for r in monitor.records if r.group == "all"] == [0, 2, 4]
    assert {r.group for r in monitor.records} == {"layer", "head", "all"}
    logged = [m for _, m in logger.metrics if "gradient/all/variance" in m]
    assert len(logged) == 3 and "gradient/monitor_share" in logged[0]
    # the same scalars as the monitor's TensorBoard output (gradest.monitor.sinks.scalars)
    assert {f"gradient/{g}/{k}" for g in ("layer", "head", "all")
            for k in ("variance", "variance_stderr", "snr", "mean_norm")} <= set(logged[0])
    assert all(math.isfinite(v) for m in logged for v in m.values())
    for a, b in zip(module.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)
