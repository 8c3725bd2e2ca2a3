r"""Training a VAE with the estimator of your choice: minimise −bound with Adam, one epoch at a time.

Each epoch shuffles the training images (``torch.randperm`` from the data generator), takes one
Adam step per batch on the objective's surrogate loss, then records in ``OUT/metrics.jsonl``

    epoch, train_neg_elbo, train_neg_bound (batch averages over the epoch), test_neg_elbo, test_kl
    (nats per image), seconds (the training pass, the monitor's time left out), monitor_seconds,
    grad_var, grad_snr (the encoder's gradient variance and SNR at the epoch's last measurement)

and writes ``OUT/checkpoint.pt`` atomically: model, optimizer, baseline, generator states, metrics
and the monitor's records. ``resume=True`` continues from it and reproduces the uninterrupted run
number for number; it first rewrites metrics.jsonl, monitor.jsonl and config.json from the
checkpoint, so a process killed between two of an epoch's writes loses nothing. config.json is
written with the first checkpoint: a run stopped in its first epoch leaves no config behind.
Under ``torchrun`` the global batch is shared by the processes (:mod:`gradest.vae.distributed`).

The gradient variance is measured by :class:`gradest.monitor.GradientMonitor` after every
``monitor_every`` Adam steps (default: the steps of an epoch, so at each epoch's end), with
``var_repeats`` = R estimates (:func:`gradest.vae.variance.repeat_gradients`) on a fixed batch of
``var_batch`` training images; ``OUT/monitor.jsonl`` holds one record per measurement and group
(encoder, decoder, all: variance, its standard error, SNR, mean-gradient norm; ``step`` counts the
Adam steps so far) and is rewritten with the checkpoint, so it always matches it. Measuring changes
nothing in the run: the same seed gives the same weights with any ``monitor_every`` and
``var_repeats``, or none.
A NaN/inf loss, or inf/NaN weights or test −ELBO at an epoch's end, stops training with
:class:`NonFiniteLoss`; the checkpoint of the last good epoch stays. At the end,
``OUT/summary.json`` holds the test figures of :mod:`gradest.vae.evaluate`.

Randomness: four generators derived from the seed — setup (train/test split, fixed binarization,
initialisation), data (shuffling), noise (z and dynamic binarization) and diagnostics (the
monitor's gradient estimates) — plus a fresh evaluation generator for every test evaluation.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import pickle
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from gradest.device import resolve_device
from gradest.diagnostics import to_json_value
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.baselines import MovingAverage
from gradest.io import write_atomic, write_json
from gradest.limits import refuse_beyond_time
from gradest.monitor import GradientMonitor
from gradest.rng import make_generator
from gradest.vae.catalog import get_objective
from gradest.vae.data import ImageData, absolute_spec, binarize, check_binarize, load_images
from gradest.vae.distributed import Group, check_batches
from gradest.vae.evaluate import Evaluation, evaluate, neg_elbo
from gradest.vae.model import VAE, SigmoidBeliefVAE
from gradest.vae.objectives import Objective, check_architecture, make_baseline
from gradest.vae.variance import repeat_gradients

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = "config.json"
MONITOR = "monitor.jsonl"
# Offsets of the derived seeds: one stream per purpose, so that e.g. tracking variance never
# shifts the noise training draws.
STREAM_SETUP, STREAM_DATA, STREAM_NOISE, STREAM_DIAG, STREAM_EVAL = range(5)
SEED_MAX = 2**63 - 1
#: Adam's first step is lr / (1 − β₁) = 10 lr per unit gradient, applied in the model's float32: a
#: larger learning rate cannot even be taken (torch refuses the step's value)
LR_MAX = 3.4e37
#: lower bounds of a training epoch's time, for the check of --epochs: an epoch's checkpoint and
#: test pass cost more than a millisecond, each Adam step more than 0.1 ms (measured: ~1 ms on the
#: smallest model, 1 image of digits per step)
EPOCH_SECONDS = 1e-3
STEP_SECONDS = 1e-4
#: images × importance samples one evaluation may decode: 10^10 takes hours on a CPU
MAX_IWAE_DECODES = 10**10


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a run (saved with it; ``resume`` reuses it)."""

    dataset: str = "mnist5k"
    binarize: str = "none"
    hidden: tuple[int, ...] = (400,)
    latent: int = 20
    estimator: str = "pathwise"
    k: int = 1
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0
    device: str = "cpu"
    var_repeats: int = 10  # R estimates per monitor measurement (--monitor-repeats); 0 turns it off
    monitor_every: int | None = None  # Adam steps between measurements; None: once per epoch
    var_batch: int = 128
    iwae_k: int = 1000
    baseline_decay: float = 0.9
    latent_dist: str = "gaussian"  # or "bernoulli": the binary-latent VAE (gradest.vae.bernoulli)
    arch: str | None = None  # bernoulli: "linear" (hidden must be ()) or "nonlinear" (tanh hidden layers)

    def check(self) -> TrainConfig:
        check_binarize(self.binarize)
        get_objective(self.estimator, self.k, self.latent_dist)
        check_architecture(self.latent_dist, self.arch, self.hidden)
        positive = {
            "latent": self.latent,
            "k": self.k,
            "epochs": self.epochs,
            "batch-size": self.batch_size,
            "var-batch": self.var_batch,
            "iwae-k": self.iwae_k,
        }
        for name, value in positive.items():
            if value < 1:
                raise GradestError(f"--{name} must be ≥ 1, got {value}")
        if any(h < 1 for h in self.hidden):
            raise GradestError(f"--hidden sizes must be ≥ 1, got {list(self.hidden)}")
        if self.var_repeats == 1 or self.var_repeats < 0:
            raise GradestError(f"--monitor-repeats must be 0 (off) or ≥ 2, got {self.var_repeats}")
        if self.monitor_every is not None and self.monitor_every < 1:
            raise GradestError(f"--monitor-every must be ≥ 1 (Adam steps), got {self.monitor_every}")
        if not (self.lr > 0 and math.isfinite(self.lr)) or self.lr > LR_MAX:
            raise GradestError(f"--lr must be a positive finite number ≤ {LR_MAX:g} (Adam's step must fit "
                               f"in float32), got {self.lr}")
        if not 0 <= self.seed <= SEED_MAX:
            # the streams are seed + 0…4: the seed must leave room for them below torch's 2^64
            raise GradestError(f"--seed must be an integer from 0 to 2^63 − 1, got {self.seed}")
        if not 0 <= self.baseline_decay < 1:
            raise GradestError(f"--baseline-decay must lie in [0, 1), got {self.baseline_decay}")
        resolve_device(self.device)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        if "hidden" in d:
            d["hidden"] = tuple(int(h) for h in d["hidden"])
        return cls(**d)


class NonFiniteLoss(GradestError):
    """The loss became NaN or inf; the message names the epoch, the step and what was kept."""


class Setup(NamedTuple):
    """A run's data (on the device), fixed batches and freshly initialised model."""

    data: ImageData
    train: torch.Tensor
    test: torch.Tensor
    var_batch: torch.Tensor
    model: VAE


class TrainResult(NamedTuple):
    model: VAE
    metrics: list[dict[str, Any]]
    evaluation: Evaluation | None  # None in a data-parallel process other than rank 0
    out: Path


def setup(config: TrainConfig, model: VAE | None = None) -> Setup:
    """Load and split the data, binarize the fixed parts, build the model (all from the seed)."""
    device = resolve_device(config.device)
    gen = make_generator(config.seed + STREAM_SETUP)
    data = load_images(config.dataset, gen)
    train, test = data.train, data.test
    if config.binarize != "none":
        # The test set is binarized once even with dynamic binarization: comparable test figures.
        test = binarize(test, gen)
        train = binarize(train, gen) if config.binarize == "fixed" else train
    var_batch = train[: config.var_batch]
    if config.binarize == "dynamic":
        var_batch = binarize(var_batch, gen)
    if model is None:
        check_memory(config, data.dim)
    if model is None and config.latent_dist == "bernoulli":
        model = SigmoidBeliefVAE.build(data.dim, config.hidden, config.latent, gen)
    if model is None:
        model = VAE.mlp(data.dim, config.hidden, config.latent, gen)
    model = model.to(device)
    # Images follow the model's precision (float32 by default; a float64 model gets float64 data).
    dtype = next(model.parameters()).dtype
    _check_shapes(model, train[:2].to(device, dtype), config.dataset)
    return Setup(data, train.to(device, dtype), test.to(device, dtype), var_batch.to(device, dtype), model)


def check_memory(config: TrainConfig, dim: int) -> None:
    """Refuse a model and batch that would not fit in memory, before allocating them.

    Bytes ≈ 4 · (4 P + 3 B K A): P parameters (weights, gradients, Adam's two moments) and, per image
    and sample, A activations (D + Σ hidden + 2 L, kept for the backward pass, about 3 copies).
    """
    from gradest.compare import available_memory

    sizes = [dim, *config.hidden, config.latent]
    params = 2 * sum(a * b + b for a, b in itertools.pairwise(sizes)) + sizes[-2] * config.latent
    activations = config.batch_size * config.k * (dim + sum(config.hidden) + 2 * config.latent)
    need = 4 * (4 * params + 3 * activations)
    available = available_memory()
    if available is not None and need > available:
        raise GradestError(
            f"a {'-'.join(map(str, sizes))} VAE with --batch-size {config.batch_size} and --k {config.k} "
            f"needs about {need / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB available; give "
            "a smaller --latent, --hidden, --batch-size or --k"
        )


def check_iwae(iwae_k: int, images: int) -> None:
    """Refuse an IWAE evaluation of more than :data:`MAX_IWAE_DECODES` decoded images (hours of work)."""
    if iwae_k * images > MAX_IWAE_DECODES:
        raise GradestError(
            f"--iwae-k {iwae_k} on {images} test images decodes {iwae_k * images:.2g} images, hours of "
            f"work; give --iwae-k ≤ {MAX_IWAE_DECODES // images} (K = 1000 already puts the bound within a "
            "few tenths of a nat of −log p(x) on MNIST)"
        )


def _check_shapes(model: VAE, x: torch.Tensor, dataset: str) -> None:
    """A user's encoder/decoder that does not fit the data fails here, with the shapes it must have."""
    b, d, latent = x.shape[0], x.shape[1], model.latent
    need = (
        f"{dataset} images have D = {d} pixels: the encoder must map [B, {d}] to (μ, σ), each "
        f"[B, {latent}] (latent = {latent}), and the decoder [B, {latent}] to logits [B, {d}]"
    )
    # Eval mode: a probe must not move batch-norm statistics or draw dropout masks.
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            if isinstance(model, SigmoidBeliefVAE):  # one output, the logits of q(b|x)
                loc = scale = model.encode(x)
            else:
                loc, scale = model.encode(x)
            logits = model.decoder(loc)
    except (RuntimeError, ValueError, TypeError) as err:
        raise GradestError(f"the model does not fit the data ({str(err).splitlines()[0]}); {need}") from None
    finally:
        model.train(was_training)
    got = [tuple(loc.shape), tuple(scale.shape), tuple(logits.shape)]
    if got != [(b, latent), (b, latent), (b, d)]:
        raise GradestError(f"the model gives μ, σ, logits of shapes {got}; {need}")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _serialize(obj: dict[str, Any]) -> bytes:
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


def _restore(path: Path, what: str, load: Callable[[], Any]) -> None:
    """Load one part of a checkpoint; a part of another run (shapes, keys) or corrupted is one error."""
    try:
        load()
    except (RuntimeError, KeyError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise GradestError(
            f"{path} does not fit this run: its {what} could not be restored ({_first_line(err)}); the file "
            f"is from another run or corrupted: train again into a new --out, or put back a copy"
        ) from None


def _baseline_state(baseline: Any) -> dict[str, Any] | None:
    if baseline is None or isinstance(baseline, MovingAverage):
        return None if baseline is None else dataclasses.asdict(baseline)
    return baseline.state_dict()  # the binary-latent estimator (gradest.vae.bernoulli.LatentEstimator)


def _metrics_text(metrics: list[dict[str, Any]]) -> str:
    """JSON lines; a NaN/inf figure (a diverging monitor, an overflowing KL) is null."""
    finite = ({k: to_json_value(v) if isinstance(v, float) else v for k, v in m.items()} for m in metrics)
    return "".join(json.dumps(m, allow_nan=False) + "\n" for m in finite)


class _BackgroundWriter:
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

    def __enter__(self) -> _BackgroundWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._pool.shutdown(wait=True)
        if exc_type is None:
            self._wait()


def train(
    config: TrainConfig,
    out: str | Path,
    *,
    resume: bool = False,
    model: VAE | None = None,
    on_step: Callable[[int, int, int], None] | None = None,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
    on_phase: Callable[[str], None] | None = None,
    group: Group | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue) the run in folder ``out``.

    Args:
        config: the run; with ``resume`` only its ``epochs`` (and ``device``) override the saved one.
        out: the run folder (metrics.jsonl, monitor.jsonl, checkpoint.pt, summary.json, config.json).
        model: your own ``VAE(encoder, decoder, latent)``; default the MLP of ``config``.
        on_step(epoch, step, steps), on_epoch(record), on_phase(text): progress callbacks.
        group: the data-parallel group of this process (:mod:`gradest.vae.distributed`); default
            one process. Only its rank 0 writes files and evaluates (other ranks' ``evaluation`` is None).
    """
    group = Group() if group is None else group
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise GradestError(f"--out {out} is a file; give a folder for the run")
    state = None
    if resume:
        state = load_checkpoint(out, resolve_device(config.device))
        saved = TrainConfig.from_dict(state["config"])
        if resolve_device(saved.device).type != resolve_device(config.device).type:
            # CPU and CUDA generators have different states and streams: the numbers could not match.
            raise GradestError(
                f"the run in {out} was trained with --device {saved.device}; resume it with --device "
                f"{saved.device} (evaluation may use either: gradest vae eval --device)"
            )
        config = dataclasses.replace(saved, epochs=config.epochs, device=config.device)
        if config.epochs < int(state["epoch"]):
            raise GradestError(
                f"the run in {out} has already trained {state['epoch']} epochs; --resume continues "
                f"it up to --epochs, so pass --epochs greater than {state['epoch']} (got {config.epochs})"
            )
    elif (out / CHECKPOINT).exists():
        raise GradestError(
            f"{out} already holds a run; pass --resume to continue it, or choose another --out"
        )
    else:
        config = dataclasses.replace(config, dataset=absolute_spec(config.dataset))
    config.check()
    objective = get_objective(config.estimator, config.k, config.latent_dist)
    run = setup(config, model)
    check_iwae(config.iwae_k, run.test.shape[0])
    model = run.model
    device = run.train.device
    steps = -(-run.train.shape[0] // config.batch_size)
    refuse_beyond_time("--epochs", config.epochs, EPOCH_SECONDS + STEP_SECONDS * steps, unit="epoch",
                       hint=f"{steps} Adam steps per epoch")
    check_batches(group, run.train.shape[0], config.batch_size)
    if group.world > 1 and config.latent_dist != "gaussian":
        # the binary-latent estimators keep state of their own (learned controls, their optimizers),
        # which the data-parallel split does not carry yet: refuse rather than train something else
        raise GradestError(
            f"data-parallel training supports Gaussian latents only; train --latent-dist "
            f"{config.latent_dist} in one process (gradest vae train without torchrun)")
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    baseline = make_baseline(objective, config.baseline_decay)
    g_data = make_generator(config.seed + STREAM_DATA)
    g_noise = make_generator(config.seed + STREAM_NOISE, device)
    g_diag = make_generator(config.seed + STREAM_DIAG, device)
    metrics: list[dict[str, Any]] = []
    records: list[dict[str, Any]] = []  # the monitor's, as JSON (monitor.jsonl)
    saved_monitor: dict[str, Any] = {}
    start_epoch = 1
    if state is not None:
        path = out / CHECKPOINT
        _restore(path, "weights", lambda: model.load_state_dict(state["model"]))
        _restore(path, "optimizer state", lambda: optimizer.load_state_dict(state["optimizer"]))
        if isinstance(baseline, MovingAverage):
            restored: list[MovingAverage] = []
            _restore(path, "baseline", lambda: restored.append(MovingAverage(**state["baseline"])))
            baseline = restored[0]
        elif baseline is not None:
            _restore(path, "estimator state", lambda: baseline.load_state_dict(state["baseline"]))
        for name, gen in (("data", g_data), ("noise", g_noise), ("diag", g_diag)):
            _restore(path, f"{name} generator", lambda gen=gen, name=name: gen.set_state(
                state["generators"][name].cpu()))
        metrics = list(state["metrics"])
        saved_monitor = state.get("monitor") or {}  # absent from checkpoints written before the monitor
        records = list(saved_monitor.get("records", []))
        start_epoch = int(state["epoch"]) + 1
    # After the restore: the monitor's loss must see the baseline object that training updates.
    monitor = _monitor(config, run, model, objective, baseline, g_diag, steps) if group.is_writer else None
    if monitor is not None and saved_monitor.get("state") is not None:
        _restore(out / CHECKPOINT, "monitor state", lambda: monitor.load_state_dict(saved_monitor["state"]))
    if group.is_writer and state is not None:
        # The checkpoint is the record: a kill between its write and the others' loses nothing.
        write_json(out / CONFIG, config.to_dict())
        write_atomic(out / METRICS, _metrics_text(metrics))
        if records:
            write_atomic(out / MONITOR, _metrics_text(records))

    # Disk latency (fsync of an ~8 MB checkpoint) overlaps the next epoch; leaving the block waits
    # for the writes, so even a NaN stop leaves the last good checkpoint complete on disk.
    with _BackgroundWriter() as writer:
        for epoch in range(start_epoch, config.epochs + 1):
            seconds, neg_elbo_train, neg_bound_train, measured, monitor_seconds = _train_pass(
                config, run, model, objective, optimizer, baseline, g_data, g_noise, epoch, out, on_step,
                monitor, group,
            )
            records += measured
            record = _epoch_record(config, run, model, epoch, seconds, measured, monitor_seconds)
            if not math.isfinite(record["test_neg_elbo"]):
                raise _diverged(
                    config, epoch, out, f"test −ELBO became {record['test_neg_elbo']} after epoch {epoch}"
                )
            record["train_neg_elbo"] = neg_elbo_train
            record["train_neg_bound"] = neg_bound_train
            metrics.append(record)
            checkpoint = _serialize(
                {
                    "epoch": epoch,
                    "config": config.to_dict(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "baseline": _baseline_state(baseline),
                    "generators": {
                        "data": g_data.get_state(),
                        "noise": g_noise.get_state(),
                        "diag": g_diag.get_state(),
                    },
                    "metrics": metrics,
                    "monitor": {
                        "records": records,
                        "state": None if monitor is None else monitor.state_dict(),
                    },
                }
            )
            # Checkpoint first: metrics.jsonl never lists an epoch whose weights were not saved.
            # config.json comes with the first checkpoint: a run stopped before it leaves no config behind
            files = [(out / CHECKPOINT, checkpoint), (out / METRICS, _metrics_text(metrics)),
                     (out / CONFIG, json.dumps(config.to_dict(), indent=2, allow_nan=False) + "\n")]
            if monitor is not None or records:
                files.append((out / MONITOR, _metrics_text(records)))
            if group.is_writer:
                writer.write(files)
            if on_epoch is not None:
                on_epoch(record)

    if not group.is_writer:
        group.barrier()  # returns once rank 0's checkpoint and summary are on disk
        return TrainResult(model, metrics, None, out)
    if on_phase is not None:
        on_phase(f"evaluating on {run.test.shape[0]} test images (IWAE, K = {config.iwae_k})")
    evaluation = evaluate(model, run.test, config.iwae_k, make_generator(config.seed + STREAM_EVAL, device))
    write_summary(out, config, evaluation, metrics)
    group.barrier()
    return TrainResult(model, metrics, evaluation, out)


def _monitor(config: TrainConfig, run: Setup, model: VAE, objective: Objective,
             baseline: MovingAverage | None, g_diag: torch.Generator, steps: int) -> GradientMonitor | None:
    """The run's gradient monitor on the fixed batch (None with ``var_repeats`` 0)."""
    if config.var_repeats < 2:
        return None
    if config.latent_dist == "bernoulli":
        from gradest.vae.bernoulli import monitor_loss

        return GradientMonitor(model, monitor_loss(model, objective, config.k, baseline),
                               every=config.monitor_every or steps, repeats=config.var_repeats,
                               batch=run.var_batch, state=[baseline], seed=g_diag)

    def estimates(x: torch.Tensor, generator: torch.Generator, repeats: int) -> dict[str, torch.Tensor]:
        try:
            return repeat_gradients(model, objective, x, config.k, repeats, generator, baseline)
        except NonFiniteError:  # a diverging model: recorded as null; training decides whether to stop
            return {n: torch.full((repeats, *p.shape), math.nan, dtype=p.dtype, device=p.device)
                    for n, p in model.named_parameters() if p.requires_grad}

    return GradientMonitor(model, estimates_fn=estimates, every=config.monitor_every or steps,
                           repeats=config.var_repeats, batch=run.var_batch,
                           state=[] if baseline is None else [baseline], seed=g_diag)


def _train_pass(config, run, model, objective, optimizer, baseline, g_data, g_noise, epoch, out, on_step,
                monitor=None, group: Group | None = None):
    """One epoch of Adam steps: (seconds without the monitor's, −ELBO and −bound averaged over the
    training images, the monitor's records as JSON, the monitor's seconds or None without one)."""
    n = run.train.shape[0]
    steps = -(-n // config.batch_size)
    device = run.train.device
    group = Group() if group is None else group
    done = (epoch - 1) * steps  # Adam steps before this epoch
    measured: list[dict[str, Any]] = []
    monitor_start = None if monitor is None else monitor.overhead().monitor_seconds
    model.train()
    order = torch.randperm(n, generator=g_data).to(device)
    sum_elbo = torch.zeros((), device=device)
    sum_bound = torch.zeros((), device=device)
    start = time.perf_counter()
    for step, idx in enumerate(order.split(config.batch_size)):
        xb = run.train[idx]
        if config.binarize == "dynamic":
            xb = binarize(xb, g_noise)
        images = xb.shape[0]
        xb = group.shard(xb)  # this process's images of the batch (all of them in one process)
        bad = None
        try:
            with group.noise(g_noise, images):
                est = objective.fn(model, xb, config.k, g_noise, group.baseline(baseline))
        except NonFiniteError:
            bad = f"loss became non-finite at epoch {epoch}, step {step + 1}/{steps}"
        else:
            if not torch.isfinite(est.loss + est.elbo.sum()):
                bad = f"loss became {float(est.loss.detach())} at epoch {epoch}, step {step + 1}/{steps}"
        if group.any(bad is not None):  # every process stops at the same step
            raise _diverged(
                config, epoch, out, bad or f"loss became non-finite in another process at epoch {epoch}, "
                f"step {step + 1}/{steps}"
            )
        optimizer.zero_grad(set_to_none=True)
        # Adam's ε is an absolute floor under √v: with per-image means, the small gradients of
        # rarely used pixels sit near it and learn slowly. Steps use the batch sum (nats per
        # batch, as the classic PyTorch example does); metrics stay per image.
        (est.loss * xb.shape[0]).backward()
        group.sum_gradients(model.parameters())  # the batch's gradient: the sum over the processes
        optimizer.step()
        if monitor is not None:
            # Measures after every monitor.every Adam steps, at the parameters the next step starts from.
            for r in monitor.step(done + step + 1) or ():
                measured.append({"epoch": epoch, **r.to_json()})
        sum_elbo += est.elbo.sum()
        sum_bound += est.bound.sum()
        if on_step is not None:
            on_step(epoch, step + 1, steps)
    # A finite loss can still give an inf/NaN gradient: the last step of an epoch must not poison
    # the checkpoint about to be written.
    if not torch.stack([torch.isfinite(p).all() for p in model.parameters()]).all():
        raise _diverged(config, epoch, out, f"parameters became inf/NaN during epoch {epoch}")
    sum_elbo, sum_bound = group.sum(sum_elbo), group.sum(sum_bound)
    seconds = time.perf_counter() - start
    monitor_seconds = None if monitor is None else monitor.overhead().monitor_seconds - monitor_start
    return seconds - (monitor_seconds or 0.0), -float(sum_elbo) / n, -float(sum_bound) / n, measured, \
        monitor_seconds


def _diverged(config: TrainConfig, epoch: int, out: Path, what: str) -> NonFiniteLoss:
    kept = (
        f"the checkpoint of epoch {epoch - 1} is kept in {out / CHECKPOINT}"
        if epoch > 1
        else "no epoch ended in a finite state, so there is no checkpoint"
    )
    return NonFiniteLoss(
        f"the {config.estimator} {what}; training stopped and {kept}. Start a new run (another "
        "--out) with a lower --lr or a lower-variance --estimator"
    )


def _epoch_record(config, run, model, epoch, seconds, measured, monitor_seconds) -> dict[str, Any]:
    model.eval()
    test_elbo, test_kl = neg_elbo(model, run.test, make_generator(config.seed + STREAM_EVAL, run.test.device))
    # The encoder's figures at the epoch's last measurement (by default the epoch's end, as before
    # the monitor); null where no measurement fell into the epoch.
    encoder = [r for r in measured if r["group"] == "encoder"]
    last = encoder[-1] if encoder else {}
    return {
        "epoch": epoch,
        "test_neg_elbo": test_elbo,
        "test_kl": test_kl,
        "seconds": seconds,
        "monitor_seconds": monitor_seconds,
        "grad_var": last.get("variance"),
        "grad_snr": last.get("snr"),
    }


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
    _restore(Path(out) / CHECKPOINT, "weights", lambda: run.model.load_state_dict(state["model"]))
    return config, run


def read_metrics(out: str | Path) -> list[dict[str, Any]]:
    path = Path(out) / METRICS
    if not path.is_file():
        raise GradestError(f"{out} holds no {METRICS}; is it a gradest vae run folder?")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
