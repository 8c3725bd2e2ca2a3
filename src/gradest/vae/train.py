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
import json
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from gradest.device import resolve_device
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.baselines import MovingAverage
from gradest.limits import refuse_beyond_time
from gradest.monitor import GradientMonitor
from gradest.rng import make_generator
from gradest.vae.catalog import get_objective
from gradest.vae.config import (
    EPOCH_SECONDS,
    STEP_SECONDS,
    STREAM_DATA,
    STREAM_DIAG,
    STREAM_EVAL,
    STREAM_NOISE,
    TrainConfig,
    check_iwae,
)
from gradest.vae.data import absolute_spec, binarize
from gradest.vae.distributed import Group, check_batches
from gradest.vae.evaluate import ELBO_SAMPLES, Evaluation, evaluate, final_neg_elbo, neg_elbo
from gradest.vae.files import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    MONITOR,
    BackgroundWriter,
    baseline_state,
    load_checkpoint,
    metrics_text,
    restore,
    rewrite,
    serialize,
    write_summary,
)
from gradest.vae.model import VAE
from gradest.vae.objectives import Objective, make_baseline
from gradest.vae.prepare import Setup, setup
from gradest.vae.variance import repeat_gradients


class NonFiniteLoss(GradestError):
    """The loss became NaN or inf; the message names the epoch, the step and what was kept."""


class TrainResult(NamedTuple):
    model: VAE
    metrics: list[dict[str, Any]]
    evaluation: Evaluation | None  # None in a data-parallel process other than rank 0
    out: Path


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
        restore(path, "weights", lambda: model.load_state_dict(state["model"]))
        restore(path, "optimizer state", lambda: optimizer.load_state_dict(state["optimizer"]))
        if isinstance(baseline, MovingAverage):
            restored: list[MovingAverage] = []
            restore(path, "baseline", lambda: restored.append(MovingAverage(**state["baseline"])))
            baseline = restored[0]
        elif baseline is not None:
            restore(path, "estimator state", lambda: baseline.load_state_dict(state["baseline"]))
        for name, gen in (("data", g_data), ("noise", g_noise), ("diag", g_diag)):
            restore(path, f"{name} generator", lambda gen=gen, name=name: gen.set_state(
                state["generators"][name].cpu()))
        metrics = list(state["metrics"])
        saved_monitor = state.get("monitor") or {}  # absent from checkpoints written before the monitor
        records = list(saved_monitor.get("records", []))
        start_epoch = int(state["epoch"]) + 1
    # After the restore: the monitor's loss must see the baseline object that training updates.
    monitor = _monitor(config, run, model, objective, baseline, g_diag, steps) if group.is_writer else None
    if monitor is not None and saved_monitor.get("state") is not None:
        restore(out / CHECKPOINT, "monitor state", lambda: monitor.load_state_dict(saved_monitor["state"]))
    if state is not None and metrics and metrics[-1].get("test_elbo_samples") == ELBO_SAMPLES \
            and start_epoch <= config.epochs:
        # The saved run's last epoch was its final one, evaluated with the final evaluation's draws; it
        # is an ordinary epoch now: its one-z figures, as the uninterrupted run has them.
        metrics[-1] = _one_z(config, run, model, metrics[-1])
    if group.is_writer and state is not None:
        # The checkpoint is the record: a kill between its write and the others' loses nothing.
        rewrite(out, config, metrics, records)

    # Disk latency (fsync of an ~8 MB checkpoint) overlaps the next epoch; leaving the block waits
    # for the writes, so even a NaN stop leaves the last good checkpoint complete on disk.
    g_eval = None
    with BackgroundWriter() as writer:
        for epoch in range(start_epoch, config.epochs + 1):
            seconds, neg_elbo_train, neg_bound_train, measured, monitor_seconds = _train_pass(
                config, run, model, objective, optimizer, baseline, g_data, g_noise, epoch, out, on_step,
                monitor, group,
            )
            records += measured
            # the last epoch's test −ELBO is the final evaluation's (more z per image): one number for the
            # console, metrics.jsonl, summary.json and the report
            g_eval = make_generator(config.seed + STREAM_EVAL, device) if epoch == config.epochs else None
            record = _epoch_record(config, run, model, epoch, seconds, measured, monitor_seconds, g_eval)
            if not math.isfinite(record["test_neg_elbo"]):
                raise _diverged(
                    config, epoch, out, f"test −ELBO became {record['test_neg_elbo']} after epoch {epoch}"
                )
            record["train_neg_elbo"] = neg_elbo_train
            record["train_neg_bound"] = neg_bound_train
            metrics.append(record)
            checkpoint = serialize(
                {
                    "epoch": epoch,
                    "config": config.to_dict(),
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "baseline": baseline_state(baseline),
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
            files = [(out / CHECKPOINT, checkpoint), (out / METRICS, metrics_text(metrics)),
                     (out / CONFIG, json.dumps(config.to_dict(), indent=2, allow_nan=False) + "\n")]
            if monitor is not None or records:
                files.append((out / MONITOR, metrics_text(records)))
            if group.is_writer:
                writer.write(files)
            if on_epoch is not None:
                on_epoch(record)

    if not group.is_writer:
        group.barrier()  # returns once rank 0's checkpoint and summary are on disk
        return TrainResult(model, metrics, None, out)
    if on_phase is not None:
        on_phase(f"evaluating on {run.test.shape[0]} test images (IWAE, K = {config.iwae_k})")
    if g_eval is not None:  # the last epoch's record holds the final −ELBO; the evaluation goes on from it
        evaluation = evaluate(model, run.test, config.iwae_k, g_eval,
                              elbo=(metrics[-1]["test_neg_elbo"], metrics[-1]["test_kl"]))
    else:  # nothing trained in this call (a resume at its last epoch): the full evaluation
        g_eval = make_generator(config.seed + STREAM_EVAL, device)
        evaluation = evaluate(model, run.test, config.iwae_k, g_eval)
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


def _one_z(config: TrainConfig, run: Setup, model: VAE, record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the test −ELBO and KL of one z per image (the weights are that epoch's)."""
    model.eval()
    test_elbo, test_kl = neg_elbo(model, run.test, make_generator(config.seed + STREAM_EVAL, run.test.device))
    model.train()
    return {**record, "test_neg_elbo": test_elbo, "test_kl": test_kl, "test_elbo_samples": 1}


def _epoch_record(config, run, model, epoch, seconds, measured, monitor_seconds,
                  g_eval: torch.Generator | None = None) -> dict[str, Any]:
    """The epoch's record; its test −ELBO from one z per image, or, given the final evaluation's
    generator ``g_eval`` (the last epoch), the final evaluation's −ELBO and KL (``test_elbo_samples``)."""
    model.eval()
    if g_eval is None:
        samples = 1
        g_epoch = make_generator(config.seed + STREAM_EVAL, run.test.device)
        test_elbo, test_kl = neg_elbo(model, run.test, g_epoch)
    else:
        samples = ELBO_SAMPLES
        test_elbo, test_kl = final_neg_elbo(model, run.test, g_eval)
    # The encoder's figures at the epoch's last measurement (by default the epoch's end, as before
    # the monitor); null where no measurement fell into the epoch.
    encoder = [r for r in measured if r["group"] == "encoder"]
    last = encoder[-1] if encoder else {}
    return {
        "epoch": epoch,
        "test_neg_elbo": test_elbo,
        "test_kl": test_kl,
        "test_elbo_samples": samples,
        "seconds": seconds,
        "monitor_seconds": monitor_seconds,
        "grad_var": last.get("variance"),
        "grad_snr": last.get("snr"),
    }


