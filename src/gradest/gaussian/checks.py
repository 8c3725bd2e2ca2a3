r"""Monte Carlo against the closed forms: gradients (mean, stderr, z) and single-sample variances.

At a point (μ, σ) each estimator draws N single-sample estimates ĝ_1..ĝ_N of ∇(μ,σ) E Σ_i (y − x_i)²
with the core estimators' ``per_sample`` view (one y per estimate). From them:

    mean ḡ, stderr s/√N, z = (ḡ − exact)/stderr          (gradient check)
    s² against the exact Var ĝ, with se(s²) ≈ √((m₄ − s⁴)/N)   (variance check)

where m₄ is the fourth central sample moment (every statistic from :mod:`gradest.diagnostics`).
``score-baseline`` is the score-function estimator
with the variance-optimal constant baseline of each parameter (two runs, one per parameter).
Every estimator gets its own generator seeded alike (common random numbers across estimators).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch.distributions import Normal

from gradest.diagnostics import batch_rmse, param_stats, variance_stderr
from gradest.diagnostics import variance as sample_variance
from gradest.estimators import Constant, Pathwise, ScoreFunction
from gradest.gaussian import closed_form as cf
from gradest.gaussian.data import Dataset
from gradest.rng import make_generator

#: where the parameters and generators live: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch.device
Device = str | torch.device


class Estimate(NamedTuple):
    """One estimator's numbers for one parameter at one point."""

    mean: float
    stderr: float
    z: float
    variance: float
    variance_se: float
    exact_variance: float


class PointCheck(NamedTuple):
    """All estimators at one (μ, σ): ``estimates[estimator][param]`` with param in ("mu", "sigma")."""

    mu: float
    sigma: float
    samples: int
    exact: cf.Pair
    estimates: dict[str, dict[str, Estimate]]


class StderrCurve(NamedTuple):
    """Standard error of the mean of N estimates against N, measured and exact, at one point.

    measured[estimator][param][k]: root mean square of (mean of a batch of sizes[k] − exact) over
    disjoint batches; exact[...][k] = √(Var ĝ / sizes[k]).
    """

    mu: float
    sigma: float
    sizes: list[int]
    measured: dict[str, dict[str, list[float]]]
    exact: dict[str, dict[str, list[float]]]


def squared_loss(data: Dataset):
    """f(y) = Σ_i (y − x_i)² on samples ``[N]`` -> ``[N]`` (as n[(y − x̄)² + v]: any n fits in memory)."""
    return data.sum_squares


def stats_of(data: Dataset) -> cf.Stats:
    return cf.Stats(data.n, data.mean, data.var_mle)


def single_sample_estimates(
    data: Dataset, mu: float, sigma: float, samples: int, seed: int, device: Device = "cpu"
) -> dict[str, dict[str, torch.Tensor]]:
    """``[samples]`` single-sample estimates per estimator and parameter (batched, one y each), on
    ``device`` (parameters and generators there)."""
    f = squared_loss(data)
    params = {"loc": torch.tensor(mu, dtype=torch.float64, device=device),
              "scale": torch.tensor(sigma, dtype=torch.float64, device=device)}
    best = cf.best_baseline(stats_of(data), mu, sigma)

    def run(estimator):
        grads = estimator.per_sample(f, Normal, params, samples, make_generator(seed, device)).grads
        return {"mu": grads["loc"], "sigma": grads["scale"]}

    for_mu = run(ScoreFunction(Constant(best.mu), name="score-baseline"))
    for_sigma = run(ScoreFunction(Constant(best.sigma), name="score-baseline"))
    return {
        "pathwise": run(Pathwise()),
        "score": run(ScoreFunction()),
        "score-baseline": {"mu": for_mu["mu"], "sigma": for_sigma["sigma"]},
    }


def check_point(data: Dataset, mu: float, sigma: float, samples: int, seed: int,
                device: Device = "cpu") -> PointCheck:
    """Gradient and variance check of every estimator at (μ, σ)."""
    stats = stats_of(data)
    exact = cf.gradient(stats, mu, sigma)
    draws = single_sample_estimates(data, mu, sigma, samples, seed, device)
    estimates = {}
    for name, per_param in draws.items():
        variance = cf.single_sample_variance(name, stats, mu, sigma)
        estimates[name] = {}
        for param, g in per_param.items():
            truth = torch.tensor(getattr(exact, param), dtype=torch.float64, device=g.device)
            s = param_stats(g, truth)
            estimates[name][param] = Estimate(
                mean=float(s.mean), stderr=float(s.stderr), z=float(s.z), variance=float(s.variance),
                variance_se=float(variance_stderr(g)), exact_variance=float(getattr(variance, param)))
    return PointCheck(mu, sigma, samples, exact, estimates)


def check_points(data: Dataset) -> list[tuple[str, float, float]]:
    """Where to check, in the data's unit s = √v: at the MLE, near, at a small σ (≤ 0.1), far away."""
    s, xbar = data.sd, data.mean
    small = min(0.1, 0.05 * s)
    return [
        ("at the MLE", xbar, s),
        ("with μ off by √v and σ = √v/2", xbar + s, 0.5 * s),
        ("at small σ", xbar + 0.5 * s, small),
        ("far from the data", xbar + 10.0 * s, s),
        ("with σ too wide", xbar - 2.0 * s, 3.0 * s),
    ]


def stderr_curve(data: Dataset, mu: float, sigma: float, samples: int, seed: int,
                 sizes: Sequence[int] | None = None, device: Device = "cpu") -> StderrCurve:
    """Measured and exact standard error of an N-sample mean, for N in a geometric grid."""
    stats = stats_of(data)
    exact_grad = cf.gradient(stats, mu, sigma)
    draws = single_sample_estimates(data, mu, sigma, samples, seed, device)
    if sizes is None:
        # at least 20 disjoint batches at the largest size, so the measured RMS is itself stable
        top = max(1, samples // 20)
        sizes = sorted({round(float(v)) for v in np.geomspace(1, top, 12)})
    measured: dict[str, dict[str, list[float]]] = {}
    exact: dict[str, dict[str, list[float]]] = {}
    for name, per_param in draws.items():
        variance = cf.single_sample_variance(name, stats, mu, sigma)
        measured[name], exact[name] = {}, {}
        for param, g in per_param.items():
            truth = getattr(exact_grad, param)
            measured[name][param] = [float(batch_rmse(g, size, truth)) for size in sizes]
            exact[name][param] = [math.sqrt(getattr(variance, param) / size) for size in sizes]
    return StderrCurve(mu, sigma, list(sizes), measured, exact)


class VarianceSweep(NamedTuple):
    """Single-sample variance against σ at fixed μ: exact on a fine grid, measured at a few σ.

    exact[estimator][param]: values on ``sigmas``; measured[estimator][param]: values on ``measured_at``.
    """

    mu: float
    sigmas: list[float]
    exact: dict[str, dict[str, list[float]]]
    measured_at: list[float]
    measured: dict[str, dict[str, list[float]]]


def variance_sweep(data: Dataset, mu: float, samples: int, seed: int,
                   device: Device = "cpu") -> VarianceSweep:
    """Var ĝ against σ ∈ [0.01 s, 10 s] at μ (exact curves, measured points every half decade)."""
    stats = stats_of(data)
    sigmas = np.geomspace(0.01, 10.0, 121) * data.sd
    measured_at = np.geomspace(0.01, 10.0, 7) * data.sd
    exact = {name: {p: [] for p in cf.PARAMS} for name in cf.ESTIMATORS}
    for name in cf.ESTIMATORS:
        values = cf.single_sample_variance(name, stats, mu, sigmas)
        for p in cf.PARAMS:
            exact[name][p] = [float(v) for v in np.broadcast_to(getattr(values, p), sigmas.shape)]
    measured = {name: {p: [] for p in cf.PARAMS} for name in cf.ESTIMATORS}
    for k, sigma in enumerate(measured_at):
        draws = single_sample_estimates(data, mu, float(sigma), samples, seed + k, device)
        for name, per_param in draws.items():
            for p, g in per_param.items():
                measured[name][p].append(float(sample_variance(g)))
    return VarianceSweep(mu, [float(s) for s in sigmas], exact, [float(s) for s in measured_at], measured)
