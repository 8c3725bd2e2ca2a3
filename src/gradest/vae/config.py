r"""What defines a VAE training run: :class:`TrainConfig`, checked as a whole, and its limits.

A run is trained from four generators derived from its seed (``seed + STREAM_*``: setup, data,
noise, diagnostics) plus the evaluation's; the limits below are where a value cannot be trained
(``LR_MAX``) or would take hours (``MAX_IWAE_DECODES``), refused before any work.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass
from typing import Any

from gradest.device import resolve_device
from gradest.errors import GradestError
from gradest.vae.catalog import get_objective
from gradest.vae.data import check_binarize
from gradest.vae.objectives import check_architecture

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
