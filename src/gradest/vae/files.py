r"""A run folder's files, each written atomically: the checkpoint, metrics, monitor records, summary.

``checkpoint.pt`` (model, optimizer, estimator state, generators, metrics, the monitor's records) is
the record; ``metrics.jsonl``, ``monitor.jsonl`` and ``config.json`` are rewritten from it on resume,
so a process killed between two of an epoch's writes loses nothing. Checkpoints load with
``weights_only=True`` (no pickled code) and are refused, with the fix, when truncated, foreign or
holding NaN/inf weights.
"""

from __future__ import annotations

import dataclasses
import io
import json
import pickle
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from gradest.device import resolve_device
from gradest.diagnostics import to_json_value
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.baselines import MovingAverage
from gradest.io import write_atomic, write_json
from gradest.vae.config import TrainConfig
from gradest.vae.evaluate import Evaluation
from gradest.vae.model import VAE
from gradest.vae.prepare import Setup, setup

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"
MONITOR = "monitor.jsonl"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def serialize(obj: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


_CHECKPOINT_KEYS = {"epoch", "config", "model", "optimizer", "baseline", "generators", "metrics"}


def load_checkpoint(out: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint of run folder ``out``, loaded with ``weights_only=True`` (no pickled code)."""
    path = Path(out) / CHECKPOINT
    if not path.is_file():
        raise GradestError(f"{out} holds no {CHECKPOINT}; train a run there first (gradest vae train)")
    fix = f"train the run again into a new --out, or put back a copy of {CHECKPOINT}"
    if path.stat().st_size == 0:
        raise GradestError(f"{path} is empty (0 bytes): the write was cut short or the file emptied; {fix}")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        # torch's message advises weights_only=False, i.e. running the file's code: never repeat it
        raise GradestError(
            f"{path} is not a gradest checkpoint: it holds Python objects beyond tensors and numbers, "
            f"which gradest refuses to load (loading them could run code); {fix}"
        ) from None
    except Exception as err:  # torch raises several types for truncated or corrupt files
        raise GradestError(
            f"{path} is truncated or corrupted, not a loadable checkpoint ({_first_line(err)}); {fix}"
        ) from None
    if not isinstance(state, dict) or not _CHECKPOINT_KEYS <= set(state):
        raise GradestError(f"{path} is not a checkpoint of gradest vae train (it lacks a run's state); {fix}")
    try:
        TrainConfig.from_dict(state["config"])
    except (TypeError, ValueError, AttributeError) as err:
        raise GradestError(f"{path} holds a malformed run config ({_first_line(err)}); {fix}") from None
    epoch, metrics = state["epoch"], state["metrics"]
    # written after each epoch with that epoch's number and one metrics record per epoch so far
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not isinstance(metrics, list) \
            or epoch < 1 or epoch != len(metrics):
        records = len(metrics) if isinstance(metrics, list) else "no list of"
        raise GradestError(f"{path} records epoch {epoch!r} with {records} metrics records; a checkpoint "
                           f"is written after epoch 1 or later, one record per epoch: the file is damaged; "
                           f"{fix}")
    weights = state["model"] if isinstance(state["model"], dict) else {}
    for name, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() \
                and not bool(torch.isfinite(value).all()):
            bad = int((~torch.isfinite(value)).sum())
            raise NonFiniteError(
                f"{path} holds NaN or inf weights ({bad} of {value.numel()} in {name!r}): every figure from "
                f"it would be meaningless; {fix}, with a smaller --lr if the run diverged"
            )
    return state


def restore(path: Path, what: str, load: Callable[[], Any]) -> None:
    """Load one part of a checkpoint; a part of another run (shapes, keys) or corrupted is one error."""
    try:
        load()
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise GradestError(
            f"{path} does not fit this run: its {what} could not be restored ({_first_line(err)}); the file "
            f"is from another run or corrupted: train again into a new --out, or put back a copy"
        ) from None


def baseline_state(baseline: Any) -> dict[str, Any] | None:
    if baseline is None or isinstance(baseline, MovingAverage):
        return None if baseline is None else dataclasses.asdict(baseline)
    return baseline.state_dict()  # the binary-latent estimator (gradest.vae.bernoulli.LatentEstimator)



def metrics_text(metrics: list[dict[str, Any]]) -> str:
    """JSON lines; a NaN/inf figure (a diverging monitor, an overflowing KL) is null."""
    finite = ({k: to_json_value(v) if isinstance(v, float) else v for k, v in m.items()} for m in metrics)
    return "".join(json.dumps(m, allow_nan=False) + "\n" for m in finite)



class BackgroundWriter:
    """Atomic file writes on one worker thread, in submission order.

    The contents are final bytes before they are handed over (the state is serialized on the
    training thread); ``write`` first waits for the previous batch, so at most one epoch's files
    are in flight, and leaving the ``with`` block waits for them and re-raises any write error.
    """

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1)
        self._pending: Future | None = None

    def write(self, files: list[tuple[Path, bytes | str]]) -> None:
        self._wait()
        self._pending = self._pool.submit(lambda: [write_atomic(path, data) for path, data in files])

    def _wait(self) -> None:
        if self._pending is not None:
            self._pending.result()
            self._pending = None

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._pool.shutdown(wait=True)
        if exc_type is None:
            self._wait()



def rewrite(out: Path, config: TrainConfig, metrics: list[dict[str, Any]],
            records: list[dict[str, Any]]) -> None:
    """On resume, the files the checkpoint is the record of: config.json, metrics.jsonl, monitor.jsonl."""
    write_json(out / CONFIG, config.to_dict())
    write_atomic(out / METRICS, metrics_text(metrics))
    if records:
        write_atomic(out / MONITOR, metrics_text(records))


def write_summary(out: Path, config: TrainConfig, evaluation: Evaluation, metrics) -> dict[str, Any]:
    summary = {
        "estimator": config.estimator,
        "k": config.k,
        "dataset": config.dataset,
        "binarize": config.binarize,
        "epochs": len(metrics),
        **evaluation.to_dict(),
    }
    if config.latent_dist != "gaussian":
        summary.update(latent_dist=config.latent_dist, arch=config.arch)
    if metrics:
        summary["train_neg_elbo"] = metrics[-1]["train_neg_elbo"]
        summary["grad_var"] = metrics[-1]["grad_var"]
        summary["seconds_per_epoch"] = sum(m["seconds"] for m in metrics) / len(metrics)
        monitored = [m["monitor_seconds"] for m in metrics if m.get("monitor_seconds") is not None]
        if monitored:
            # The monitor's share of the training time (training passes and measurements together).
            summary["monitor_seconds"] = sum(monitored)
            summary["monitor_share"] = sum(monitored) / (sum(m["seconds"] for m in metrics) + sum(monitored))
    summary = {k: to_json_value(v) if isinstance(v, float) else v for k, v in summary.items()}
    write_json(out / SUMMARY, summary)
    return summary


def load_run(out: str | Path, device: str = "cpu", model: VAE | None = None) -> tuple[TrainConfig, Setup]:
    """A saved run's config and setup, with the checkpoint's weights loaded into the model."""
    state = load_checkpoint(out, resolve_device(device))
    config = dataclasses.replace(TrainConfig.from_dict(state["config"]), device=device)
    run = setup(config, model)
    restore(Path(out) / CHECKPOINT, "weights", lambda: run.model.load_state_dict(state["model"]))
    return config, run


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / METRICS
    if not path.is_file():
        raise GradestError(f"{out} holds no {METRICS}; is it a gradest vae run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
