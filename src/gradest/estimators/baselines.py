r"""Baselines b for the score-function estimator: ĝ_n = Σ_b (f_b(x_n) − b_n,b) ∇θ log p(x_n,b; θ).

Any b_n independent of x_n keeps the estimator unbiased, since E[∇θ log p(x; θ)] = 0; a good b_n
close to E[f] lowers its variance. A baseline is a callable ``(values [N, *C], groups) -> b [N, *C]``
on the detached costs of the current call: with per-element costs (``C`` = the batch elements)
it works per element, along the sample axis. ``groups`` labels dependent samples (antithetic
pairs, quasi-Monte Carlo randomizations; None when i.i.d.).

``couples_samples`` says whether b_n depends on the other samples of the same call: then the
estimates are dependent and their standard error comes from independent calls
(:mod:`gradest.batches`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch

from gradest.errors import GradestError


class Baseline(Protocol):
    min_samples: int
    couples_samples: bool

    def __call__(self, values: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor: ...


class NoBaseline:
    """b = 0: plain REINFORCE."""

    min_samples = 1
    couples_samples = False

    def __call__(self, values: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        return torch.zeros_like(values)

    def __repr__(self) -> str:
        return "NoBaseline()"


@dataclass(frozen=True)
class Constant:
    """b = c, a number fixed before sampling (e.g. E[f] or the variance-optimal constant)."""

    value: float
    min_samples = 1
    couples_samples = False

    def __post_init__(self) -> None:
        if isinstance(self.value, bool) or not isinstance(self.value, int | float) \
                or not math.isfinite(self.value):
            raise GradestError(f"a constant baseline must be a finite number, got {self.value!r}")

    def __call__(self, values: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        return torch.full_like(values, float(self.value))


class LeaveOneOut:
    """b_n,b = (Σ_m f_b(x_m) − f_b(x_n)) / (N − 1): the mean of the other samples, per element (RLOO).

    Unbiased, because b_n does not depend on x_n. Needs N ≥ 2. Kool et al. (2019). Given the
    sampler's groups (dependent samples), b_n is the mean outside x_n's group instead.
    The single-sample estimates are then dependent (through b): their mean is the sample covariance
    of f and the score, whose variance has a 1/N² term the spread of the ĝ_n misses — dominant where
    the single-sample variance is tiny — so its standard error comes from independent calls.
    """

    min_samples = 2
    couples_samples = True

    def __call__(self, values: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        n = values.shape[0]
        if groups is None:
            return (values.sum(0) - values) / (n - 1)
        # An antithetic partner or a point of the same randomization depends on x_n, so leaving
        # only x_n out would bias the estimate: the baseline leaves its whole group out.
        size = int(groups.max()) + 1
        sums = values.new_zeros(size, *values.shape[1:]).index_add_(0, groups, values)
        counts = torch.bincount(groups, minlength=size).to(values.dtype)
        if (counts > 0).sum() < 2:
            raise GradestError(
                "the leave-one-out baseline needs at least 2 independent groups of samples "
                "(antithetic pairs or randomizations); use more samples"
            )
        counts = counts.reshape(size, *([1] * (values.dim() - 1)))
        return (values.sum(0) - sums[groups]) / (n - counts[groups])

    def __repr__(self) -> str:
        return "LeaveOneOut()"


@dataclass
class MovingAverage:
    """b = bias-corrected exponential moving average of the mean cost of *earlier* calls.

    For training loops: the current batch is used only after b is read, so each estimate stays
    unbiased. One number for all elements (a minibatch's elements change from step to step).
    State lives in this object (the caller owns it); the first call uses b = 0.
    """

    decay: float = 0.9
    _raw: float = field(default=0.0, repr=False)
    _count: int = field(default=0, repr=False)
    min_samples = 1
    couples_samples = False  # b comes from earlier calls only

    def __post_init__(self) -> None:
        if not 0.0 <= self.decay < 1.0:
            raise GradestError(f"decay must lie in [0, 1), got {self.decay}")

    @property
    def value(self) -> float:
        """The current moving average (0 before the first update)."""
        return 0.0 if self._count == 0 else self._raw / (1.0 - self.decay**self._count)

    def __call__(self, values: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
        b = torch.full_like(values, self.value)
        self._raw = self.decay * self._raw + (1.0 - self.decay) * float(values.mean())
        self._count += 1
        return b
