r"""The statistics of single-sample estimates ĝ_1..ĝ_N: the floor every other module stands on.

    mean      ḡ = (1/N) Σ ĝ_n                      the estimate of ∇θ L
    variance  s² = Σ (ĝ_n − ḡ)² / (N − 1)          of ONE single-sample estimate
    stderr    s / √N                               of the mean ḡ
    snr       |ḡ| / s                              signal-to-noise ratio of one sample
    z         (ḡ − ∇θ L) / stderr                  bias in standard errors (≈ N(0, 1) if unbiased)
    se(s²)    √((m₄ − s⁴) / N)                     standard error of s² itself (m₄: 4th central moment)

All are elementwise over a parameter's coordinates. Leave-one-out baselines and coefficients make
the ĝ_n of one call dependent, and s/√N can then be far off (a 1/N² term dominates where the
single-sample variance is tiny): :mod:`gradest.batches` runs such estimators as independent calls,
labelled as groups, so the grouped formula below applies.

Antithetic and quasi-Monte Carlo samplers (and independent batches) make the ĝ_n dependent within
groups (pairs, randomizations, batches) and independent across them. The stderr of the mean then
comes from the G group means m_g with sizes n_g (the cluster estimator; for equal sizes it is the
spread of the m_g / √G), with G − 1 degrees of freedom (z is then Student-t distributed):

    stderr² = G/(G − 1) · Σ_g (n_g/N)² (m_g − ḡ)²

and ``variance`` stays the variance of one (marginal) single-sample estimate; N · stderr² is the
*effective* single-sample variance, the one to compare against i.i.d. sampling.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from gradest.errors import GradestError

#: relative resolution of float64 estimates after the few operations an estimator performs
ROUNDING = 64 * torch.finfo(torch.float64).eps


def to_json_value(value: torch.Tensor | float | None) -> Any:
    """Tensor -> float or nested lists; NaN and ±inf -> None (JSON has no such numbers)."""
    if value is None:
        return None
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().double().tolist()
    if isinstance(value, list):
        return [to_json_value(v) for v in value]
    return float(value) if math.isfinite(value) else None


def variance(samples: torch.Tensor) -> torch.Tensor:
    """s² = Σ (ĝ_n − ḡ)² / (N − 1) along the sample axis (two passes: centred, then squared)."""
    n = samples.shape[0]
    if n < 2:
        return torch.full_like(samples.mean(0), math.nan)
    return (samples - samples.mean(0)).pow(2).sum(0) / (n - 1)


def variance_stderr(samples: torch.Tensor) -> torch.Tensor:
    """Standard error of s²: √(max(m₄ − s⁴, 0) / N), m₄ the fourth central sample moment."""
    m4 = (samples - samples.mean(0)).pow(4).mean(0)
    return ((m4 - variance(samples) ** 2).clamp_min(0.0) / samples.shape[0]).sqrt()


def batch_rmse(samples: torch.Tensor, size: int, truth: torch.Tensor | float) -> torch.Tensor:
    """Root mean square of (mean of a batch of ``size`` − truth) over the disjoint batches that fit."""
    count = samples.shape[0] // size
    means = samples[: count * size].reshape(count, size, *samples.shape[1:]).mean(1)
    return ((means - truth) ** 2).mean(0).sqrt()


def z_score(mean: torch.Tensor, stderr: torch.Tensor, exact: torch.Tensor,
            error: torch.Tensor | None = None) -> torch.Tensor:
    """(mean − exact) / √(stderr² + error²): against the reference's total uncertainty.

    ``error`` is the reference's own error estimate (quadrature), None for a closed form or an
    enumeration. A difference within rounding of the reference, 64ε(1 + |exact|), is no evidence of
    bias and gives 0, whatever the stderr (an estimate exact up to rounding has a stderr made of
    rounding noise, far below the rounding of its sum); a larger gap with no uncertainty gives ±inf.
    """
    diff = mean - exact.to(mean)
    scale = stderr if error is None else (stderr**2 + error.to(mean) ** 2).sqrt()
    tiny = 64 * torch.finfo(mean.dtype).eps * (1.0 + exact.to(mean).abs())
    return torch.where(diff.abs() <= tiny, torch.zeros_like(diff), diff / scale)


def mean_stderr(samples: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """Standard error of ``samples.mean(0)``; over independent groups when ``groups`` is given."""
    n = samples.shape[0]
    if groups is None:
        return (variance(samples) / n).sqrt()
    size = int(groups.max()) + 1
    counts = torch.bincount(groups, minlength=size).to(samples.dtype)
    if size < 2:
        return torch.full_like(samples.mean(0), math.nan)
    groups = groups.to(samples.device)
    sums = samples.new_zeros(size, *samples.shape[1:]).index_add_(0, groups, samples)
    shape = (size,) + (1,) * (samples.dim() - 1)
    share = (counts / n).reshape(shape)
    means = sums / counts.reshape(shape)
    deviation = means - samples.mean(0)
    return (size / (size - 1) * (share**2 * deviation**2).sum(0)).sqrt()


def effective_variance(samples: torch.Tensor, groups: torch.Tensor | None = None) -> torch.Tensor:
    """N · stderr²: the single-sample variance an i.i.d. scheme would need for the same stderr."""
    return samples.shape[0] * mean_stderr(samples, groups) ** 2


def degrees_of_freedom(num_samples: int, groups: torch.Tensor | None = None) -> int:
    """Of the stderr: N − 1 for i.i.d. samples, G − 1 over G independent groups (pairs, batches)."""
    return num_samples - 1 if groups is None else int(torch.unique(groups).numel()) - 1


def z_bound(false_alarm: float, tests: int, dof: float = math.inf) -> float:
    """Two-sided Bonferroni bound on |z| for ``tests`` z-scores with a total false-alarm rate.

    z over a stderr with ``dof`` degrees of freedom is Student-t distributed (a stderr from 16
    batches or 10 randomizations has heavier tails than N(0, 1)); inf: the normal bound.
    """
    from scipy.stats import norm, t  # here: scipy.stats takes ~0.4 s to import

    level = false_alarm / (2 * max(tests, 1))
    return float(norm.isf(level) if not math.isfinite(dof) else t.isf(level, max(dof, 1)))


def pooled(means: list[torch.Tensor], stderrs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and stderr of R independent batches of equal size: (Σ m_r / R, √(Σ se_r²) / R)."""
    r = len(means)
    return sum(means) / r, (sum(se**2 for se in stderrs) / r**2).sqrt()


def median(values: torch.Tensor | list[float]) -> float:
    """The median (the lower middle value of an even count, as torch's)."""
    return float(torch.as_tensor(values, dtype=torch.float64).median())


def log_interval(values: torch.Tensor | list[float], robust: bool = False,
                 confidence: float = 0.95) -> tuple[float, tuple[float, float]]:
    """A positive quantity measured once per independent batch: (center, interval on the log scale).

    center: the batches' mean, or their median with ``robust``; interval center × exp(±q · se(log)),
    with se(log) = sd/(√R · center) for the mean and 1.2533 · 1.4826 · MAD(log v)/√R for the median
    (a median of timings: one slow batch, a machine's hiccup, moves neither), q the Student-t
    quantile with R − 1 degrees of freedom. A zero center gives [0, 0]; fewer than 2 batches NaNs.
    """
    from scipy.stats import t  # here: scipy.stats takes ~0.4 s to import

    v = torch.as_tensor(values, dtype=torch.float64)
    r = v.numel()
    center = median(v) if robust else float(v.mean())
    if r < 2 or not math.isfinite(center):
        return center, (math.nan, math.nan)
    if center <= 0:
        return center, (0.0, 0.0)
    if robust:
        logs = v.clamp_min(torch.finfo(torch.float64).tiny).log()
        se = 1.2533 * 1.4826 * float((logs - logs.median()).abs().median()) / math.sqrt(r)
    else:
        se = float(v.std(correction=1)) / (math.sqrt(r) * center)
    q = float(t.ppf(0.5 + confidence / 2, r - 1))
    return center, (center * math.exp(-q * se), center * math.exp(q * se))


def check_dense(value: torch.Tensor, what: str, fix: str = "give one with data, on cpu or cuda") -> None:
    """Refuse a tensor without values (meta) or a sparse one, naming ``what`` — the one check every
    entry point (parameters, families, the monitor's groups, statistics' inputs) makes."""
    if value.is_meta:
        raise GradestError(f"{what} is a meta tensor (the meta device holds no values); {fix}")
    if value.layout != torch.strided:
        raise GradestError(f"{what} must be a dense tensor, got {value.layout} tensor; give a dense one "
                           "(.to_dense())")


def check_groups(groups: object, n: int, device: torch.device) -> torch.Tensor | None:
    """``[n]`` non-negative integer labels of independent groups (None passes), or a GradestError."""
    if groups is None:
        return None
    if isinstance(groups, torch.Tensor):
        check_dense(groups, "groups")
    if not isinstance(groups, torch.Tensor) or groups.is_floating_point() or groups.is_complex() \
            or groups.dtype == torch.bool:
        got = groups.dtype if isinstance(groups, torch.Tensor) else type(groups).__name__
        raise GradestError(f"groups must be an integer tensor [N] of group labels (or None), got {got}; "
                           "e.g. torch.tensor([0, 0, 1, 1])")
    if tuple(groups.shape) != (n,):
        raise GradestError(f"groups must hold one label per sample, shape [{n}], got {list(groups.shape)}")
    if n and bool((groups < 0).any()):
        raise GradestError("group labels must be integers ≥ 0")
    return groups.to(device)


# ── the gradient statistics of R estimates [R, P]: mean norm, variance (trace), its stderr, SNR ──


class Statistics(NamedTuple):
    """Statistics of R gradient estimates of P numbers (see :func:`gradient_statistics`)."""

    mean_norm: float
    variance: float
    variance_stderr: float
    variance_max: float
    snr: float


def _deviations(estimates: torch.Tensor, mean: torch.Tensor, groups: torch.Tensor | None) -> torch.Tensor:
    """Centred independent units ``[U, P]``: the R estimates, or one per group of dependent ones.

    With groups of sizes n_g and means m_g (N estimates in all), y_g = √(N G)·(n_g/N)(m_g − ḡ) gives
    Σ_g y_g²/(G − 1) = N · stderr², the cluster estimate of :func:`mean_stderr`.
    """
    if groups is None:
        return estimates - mean
    n = estimates.shape[0]
    size = int(groups.max()) + 1
    counts = torch.bincount(groups.to(estimates.device), minlength=size).to(estimates.dtype)
    present = counts > 0
    sums = estimates.new_zeros(size, estimates.shape[1]).index_add_(0, groups.to(estimates.device), estimates)
    sums, counts = sums[present], counts[present]
    g = sums.shape[0]
    return math.sqrt(n * g) * (counts[:, None] / n) * (sums / counts[:, None] - mean)


class GradientSums(NamedTuple):
    """The additive parts of the statistics of some coordinates: a group's are the sums (for
    ``variance_max`` the maximum) of its parameters', so no coordinate is processed twice.

    q: ``[U]`` squared norms of the centred units; gram: their ``[U, U]`` Gram matrix (additive over
    coordinates) while U ≤ ``GRAM_LIMIT``; beyond, ``frobenius`` = ‖S‖²_F from the smaller, P × P side
    of one block (None where neither side is small: the O(1/U²) term it feeds is left out).
    """

    mean_sq: torch.Tensor  # ‖ḡ‖²
    variance: torch.Tensor  # Σ_p of the per-coordinate variances
    variance_max: torch.Tensor
    q: torch.Tensor
    gram: torch.Tensor | None
    frobenius: torch.Tensor | None


#: numbers per block on the CPU (2 MB in float64): a large parameter's float64 copy and its
#: deviations stay in cache, one block at a time
_CPU_BLOCK = 1 << 18
#: the largest side of the Gram matrix the standard error's tr Σ² term is computed with
GRAM_LIMIT = 4096


def gradient_sums(estimates: torch.Tensor, groups: torch.Tensor | None) -> GradientSums:
    """The additive parts of :func:`gradient_statistics` for ``estimates [R, P]``."""
    if estimates.dim() != 2 or estimates.shape[0] < 2:
        raise GradestError(f"need R ≥ 2 estimates as [R, P], got shape {list(estimates.shape)}")
    dtype = estimates.dtype if estimates.device.type == "mps" else torch.float64  # MPS has no float64
    units = estimates.shape[0] if groups is None else int(torch.unique(groups).numel())
    if groups is None and units <= GRAM_LIMIT and estimates.device.type == "cpu" and estimates.shape[1]:
        return _cpu_sums(estimates, dtype)
    one_block = units > GRAM_LIMIT or estimates.device.type != "cpu"  # the P × P side needs every column
    width = max(estimates.shape[1], 1) if one_block else max(_CPU_BLOCK // estimates.shape[0], 1)
    parts = []
    for block in estimates.split(width, dim=1) if estimates.shape[1] else [estimates]:
        block = block.to(dtype)
        mean = block.mean(0)
        dev = _deviations(block, mean, groups)
        if dev.shape[0] < 2:
            raise GradestError("the estimates form a single group of dependent samples; draw more groups")
        squares = dev.square()
        per_coordinate = squares.sum(0) / (dev.shape[0] - 1)
        most = per_coordinate.max() if per_coordinate.numel() else per_coordinate.new_tensor(-math.inf)
        gram = frobenius = None
        if dev.shape[0] <= GRAM_LIMIT:
            gram = dev @ dev.T
        elif dev.shape[1] <= GRAM_LIMIT:
            side = dev.T @ dev  # ‖D Dᵀ‖_F = ‖Dᵀ D‖_F
            frobenius = (side * side).sum()
        parts.append(GradientSums(mean.square().sum(), per_coordinate.sum(), most, squares.sum(1),
                                  gram, frobenius))
    return combined(parts)


def _cpu_sums(estimates: torch.Tensor, dtype: torch.dtype) -> GradientSums:
    """:func:`gradient_sums` of i.i.d. ``estimates [R, P]`` on the CPU with no allocation per block: each
    block of columns is centred into one workspace, its Gram matrix taken, then squared in place (the
    memory traffic, not the arithmetic, is the cost); the per-block sums add up in float64.

    Float32 estimates are centred and squared in float32: their own rounding, ε₃₂ |ĝ| per entry, is
    already of the size of what float32 centring adds (ε₃₂ |ḡ|), and the sums over coordinates are
    cascaded, so float64 arithmetic would buy no digit the estimates hold; other dtypes are processed
    in float64."""
    r = estimates.shape[0]
    width = max(_CPU_BLOCK // r, 1)
    cols = min(width, estimates.shape[1])
    single = estimates.dtype == torch.float32
    work = torch.empty(r, cols, dtype=torch.float32 if single else dtype)
    parts = []
    for block in estimates.split(width, dim=1):
        dev = work[:, :block.shape[1]]
        if single:
            mean = block.mean(0)
            torch.sub(block, mean, out=dev)
        else:
            dev.copy_(block)
            mean = dev.mean(0)
            dev.sub_(mean)
        gram = (dev @ dev.T).to(dtype)
        squares = dev.square_()
        per_coordinate = squares.sum(0).to(dtype) / (r - 1)
        q = squares.sum(1).to(dtype)
        if single:
            gram.diagonal().copy_(q)  # (the float64 sum of the float32 squares)
        parts.append(GradientSums(mean.to(dtype).square().sum(), per_coordinate.sum(), per_coordinate.max(),
                                  q, gram, None))
    return combined(parts)


def combined(parts: Sequence[GradientSums]) -> GradientSums:
    """The parts of the coordinates of ``parts`` together."""
    if len(parts) == 1:
        return parts[0]
    mean_sq, variance, q = (sum(p[i] for p in parts) for i in (0, 1, 3))
    grams = [p.gram for p in parts]
    gram = sum(grams) if all(g is not None for g in grams) else None
    return GradientSums(mean_sq, variance, torch.stack([p.variance_max for p in parts]).max(), q, gram, None)


def statistics_of(parts: Sequence[GradientSums]) -> Statistics:
    """The statistics of the coordinates of ``parts`` together.

    variance = Σ_p Σ_u (d_{u,p})²/(U − 1), unbiased for tr Cov(ĝ); a U-statistic with kernel
    ½‖ĝ_r − ĝ_s‖², so Var = Var‖ĝ − E ĝ‖²/U + 2 tr(Σ²)/(U(U − 1)): the first from the sample variance
    of q_u = ‖d_u‖² scaled by (U/(U − 1))² for the centring, tr Σ² by its unbiased (Gaussian) estimate
    n²/((n − 1)(n + 2)) (‖S‖²_F − (tr S)²/n) with n = U − 1, clamped at 0.
    """
    mean_sq, variance, most, q, gram, frobenius = combined(parts)
    units = q.shape[0]
    n = units - 1
    spread = q.var(correction=1) * (units / n) ** 2
    stderr_sq = spread / units
    square = (gram * gram).sum() if gram is not None else frobenius
    if square is not None:
        frob = square / n**2
        trace_sq = n**2 / ((n - 1) * (n + 2)) * (frob - variance**2 / n) if n >= 2 else frob
        stderr_sq = stderr_sq + 2 * trace_sq.clamp_min(0) / (units * n)
    norm = math.sqrt(float(mean_sq))
    var = float(variance)
    snr = norm / math.sqrt(var) if var > 0 else (math.inf if norm > 0 else math.nan)
    return Statistics(norm, var, float(stderr_sq.sqrt()), float(most), snr)


def gradient_statistics(estimates: torch.Tensor, groups: torch.Tensor | None = None) -> Statistics:
    """Mean-gradient norm, variance (trace of the covariance), its standard error, SNR.

    Args:
        estimates: ``[R, P]`` R ≥ 2 gradient estimates of P numbers.
        groups: ``[R]`` labels of dependent estimates (antithetic pairs, quasi-Monte Carlo
            randomizations), or None when the R estimates are independent.
    """
    if not isinstance(estimates, torch.Tensor) or not estimates.is_floating_point() or estimates.is_meta \
            or estimates.layout != torch.strided:
        got = f"{estimates.dtype} {estimates.layout} on {estimates.device}" \
            if isinstance(estimates, torch.Tensor) else type(estimates).__name__
        raise GradestError(f"estimates must be a dense real floating-point tensor [R, P], got {got}")
    if estimates.dim() == 2 and estimates.shape[1] == 0:
        raise GradestError("the estimates have no coordinates (shape [R, 0]); give at least one")
    groups = check_groups(groups, estimates.shape[0] if estimates.dim() else 0, estimates.device)
    return statistics_of([gradient_sums(estimates, groups)])
