r"""SGD through the stochastic node: θ_{t+1} = θ_t − η · scale ⊙ ĝ_t, with ĝ_t from an estimator.

The gradient ĝ_t is the autograd gradient of the estimator's ``surrogate`` (the mean of
``samples_per_step`` single-sample estimates), so the pathwise and score-function fits differ only
in the estimator's noise: equal samples per step, equal step budget, equal step sizes. σ is
projected back above a tiny floor after each step (projected SGD).

A constant step leaves the iterates jittering around the optimum with a spread set by the gradient
noise; the reported answer is therefore the Polyak–Ruppert average of the latter half of the
iterates, ā_t = mean(θ_s : t/2 ≤ s ≤ t), which averages that jitter away at rate 1/√t.

Convergence is measured in the data's own unit √v: ``steps_to_1pct`` is the first step from which
both |ā_μ − μ*| and |ā_σ − σ*| stay within 1% of √v for the rest of the run (None if never).

A fit has *diverged* at the first step whose iterate is not finite or lies more than
``DIVERGENCE_BOUND`` √v from the target (|μ − μ*| or |σ − σ*|): every fit starts within a few √v of
its target, and SGD at these step sizes does not come back from a thousand times the data's spread
(the gradient noise of the score function without a baseline grows with the distance). The run stops
there; its trajectory up to that step is kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from gradest.errors import GradestError
from gradest.estimators import get_estimator
from gradest.gaussian.closed_form import Pair
from gradest.gaussian.objectives import Objective
from gradest.rng import make_generator

TOLERANCE = 0.01
#: a fit whose iterate strays further than this many √v from its target has diverged
DIVERGENCE_BOUND = 1e3


class FitSettings(NamedTuple):
    """eta multiplies each parameter's step-size scale (see :mod:`gradest.gaussian.objectives`)."""

    steps: int = 3000
    samples_per_step: int = 64
    eta: float = 0.1
    seed: int = 0


class FitResult(NamedTuple):
    """Final (μ, σ) (suffix-averaged), target, convergence step, and the raw trajectory ``[steps + 1]``.

    diverged_at: the step at which the iterates left the floating-point range or strayed beyond
    ``DIVERGENCE_BOUND`` √v from the target (None if they did not); the trajectory is NaN from there on
    and the final (μ, σ) are NaN.
    mu_se, sigma_se: standard errors of the averaged (μ, σ) from the SGD noise (``tail_stderr``).
    family_optimum: the objective's exact optimum within its family when it differs from the target.
    """

    objective: str
    estimator: str
    mu: float
    sigma: float
    target: Pair
    steps_to_1pct: int | None
    mu_path: np.ndarray
    sigma_path: np.ndarray
    seconds: float
    diverged_at: int | None = None
    mu_se: float = math.nan
    sigma_se: float = math.nan
    family_optimum: Pair | None = None

    def error(self, unit: float) -> float:
        """max(|μ − μ*|, |σ − σ*|) in units of ``unit`` (the data's √v); inf after divergence."""
        err = max(abs(self.mu - self.target.mu), abs(self.sigma - self.target.sigma)) / unit
        return err if math.isfinite(err) else math.inf


def suffix_average(path: np.ndarray) -> np.ndarray:
    """ā_t = mean of θ_s over ⌊t/2⌋ ≤ s ≤ t (Polyak–Ruppert averaging of the latter half)."""
    # cumulative sums of the offsets from the start: raw sums of values near 1e9 would round away
    # the digits that separate the iterates
    ref = path[0] if np.isfinite(path[0]) else 0.0
    cum = np.concatenate([[0.0], np.cumsum(path - ref)])
    t = np.arange(path.shape[0])
    lo = t // 2
    return ref + (cum[t + 1] - cum[lo]) / (t + 1 - lo)


def tail_stderr(path: np.ndarray, batches: int = 10) -> float:
    """Standard error of the mean of the latter half of ``path`` by batch means.

    The iterates are autocorrelated, so their plain standard error would be too small; the means of
    ``batches`` consecutive blocks are nearly independent once a block outlasts the correlation time
    (about 1/η steps here), and their spread gives the standard error: sd(block means)/√batches.
    """
    tail = path[path.shape[0] // 2 :]
    usable = (tail.shape[0] // batches) * batches
    if usable < 2 * batches or not np.isfinite(tail).all():
        return math.nan
    means = tail[:usable].reshape(batches, -1).mean(1)
    return float(means.std(ddof=1) / math.sqrt(batches))


def steps_to_tolerance(mu_path: np.ndarray, sigma_path: np.ndarray, target: Pair, tol: float) -> int | None:
    """First t with |μ_s − μ*| ≤ tol and |σ_s − σ*| ≤ tol for every s ≥ t; None if the last fails."""
    inside = (np.abs(mu_path - target.mu) <= tol) & (np.abs(sigma_path - target.sigma) <= tol)
    if not inside[-1]:
        return None
    outside = np.flatnonzero(~inside)
    return 0 if outside.size == 0 else int(outside[-1] + 1)


def fit(
    objective: Objective,
    estimator: str,
    settings: FitSettings,
    unit: float,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Run ``settings.steps`` SGD steps of ``objective`` with the named estimator ("exact" for nll).

    The reported (μ, σ) and ``steps_to_1pct`` use the suffix-averaged iterates (``suffix_average``):
    averaging removes most of the noise a stochastic gradient leaves in the last iterate, for every
    estimator alike.
    """
    start = time.perf_counter()
    est = get_estimator(estimator) if objective.stochastic else None
    params = objective.init()
    # the generator lives where the objective's parameters do (see the objective's device)
    generator = make_generator(settings.seed, next(iter(params.values())).device)
    mu_path = np.full(settings.steps + 1, np.nan)
    sigma_path = np.full(settings.steps + 1, np.nan)
    mu_path[0], sigma_path[0] = objective.readout(params)
    report_every = max(1, settings.steps // 100)
    diverged_at = None
    for t in range(settings.steps):
        try:
            state = _step(objective, params, est, settings, generator)
        except (GradestError, OverflowError):
            # f overflowed at a wild sample: the noise has thrown the iterates out of range
            state = None
        if state is None or _strayed(state, objective.target, unit):
            diverged_at = t + 1
            break
        mu_path[t + 1], sigma_path[t + 1] = state
        if on_step is not None and ((t + 1) % report_every == 0 or t + 1 == settings.steps):
            on_step(t + 1)
    if on_step is not None and diverged_at is not None:
        on_step(settings.steps)
    mu_avg, sigma_avg = suffix_average(mu_path), suffix_average(sigma_path)
    steps = None if diverged_at is not None else steps_to_tolerance(
        mu_avg, sigma_avg, objective.target, TOLERANCE * unit)
    return FitResult(
        objective=objective.name,
        estimator=estimator if objective.stochastic else "exact",
        mu=float(mu_avg[-1]),
        sigma=float(sigma_avg[-1]),
        target=objective.target,
        steps_to_1pct=steps,
        mu_path=mu_path,
        sigma_path=sigma_path,
        seconds=time.perf_counter() - start,
        diverged_at=diverged_at,
        mu_se=tail_stderr(mu_path),
        sigma_se=tail_stderr(sigma_path),
        family_optimum=objective.family_optimum,
    )


def _strayed(state: tuple[float, float], target: Pair, unit: float) -> bool:
    """Whether (μ, σ) lies beyond ``DIVERGENCE_BOUND`` √v from the target (see the module's docstring)."""
    return max(abs(state[0] - target.mu), abs(state[1] - target.sigma)) > DIVERGENCE_BOUND * unit


def _step(objective, params, est, settings, generator) -> tuple[float, float] | None:
    """One projected SGD step; the new (μ, σ), or None when the iterates are no longer finite."""
    for p in params.values():
        p.grad = None
    loss = objective.loss(params, est, settings.samples_per_step, generator)
    loss.backward()
    with torch.no_grad():
        for name, p in params.items():
            p -= settings.eta * objective.scales[name] * p.grad
        if objective.project is not None:
            objective.project(params)
        if not all(bool(torch.isfinite(p).all()) for p in params.values()):
            return None
    mu, sigma = objective.readout(params)
    return (mu, sigma) if math.isfinite(mu) and math.isfinite(sigma) else None
