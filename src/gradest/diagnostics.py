r"""Diagnostics of an estimator: its per-sample record summarized against an exact gradient.

``summarize(per_sample, exact)`` gives, per parameter, the mean, variance, standard error, SNR and
bias z-score of :func:`param_stats`. The statistics themselves, with their formulas (grouped
standard errors for dependent samples included), live one floor down in :mod:`gradest.stats`; they
are imported here, so ``gradest.diagnostics.mean_stderr`` and the rest keep working.

A standard error is read as a normal interval: the mean of N single-sample estimates is near normal
once N ≳ 25 G1², G1 the skewness of one estimate (Cochran's rule). Score-function terms of
heavy-tailed draws are very skewed (f = x² under Geometric(0.875): G1 ≈ −31, so N ≳ 24 000), and
below that N a rare large term that no draw showed leaves the mean and its standard error both too
small — which no statistic of the draws can reveal. Draw more samples, or lower the skew (a baseline,
a control variate, a pathwise estimator).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.base import PerSampleGradients
from gradest.stats import (  # noqa: F401 — the statistics, re-exported where callers look for them
    ROUNDING,
    batch_rmse,
    check_dense,
    check_groups,
    degrees_of_freedom,
    effective_variance,
    log_interval,
    mean_stderr,
    median,
    pooled,
    to_json_value,
    variance,
    variance_stderr,
    z_bound,
    z_score,
)

if TYPE_CHECKING:  # gradest.exact imports scipy: loaded where an exact gradient is used, not here
    from gradest.exact import ExactGradient


class ParamStats(NamedTuple):
    """One parameter's estimate and its quality, each of the parameter's shape.

    mean: ḡ, the estimate of ∂L/∂θ (the mean of the N single-sample estimates).
    variance: the single-sample variance (what one sample's estimate spreads by).
    stderr: the standard error of ``mean`` (from the groups' means where samples are dependent).
    snr: the magnitude of ḡ over √variance.
    z: (ḡ − exact) / (stderr ⊕ the exact gradient's error), or None without an exact gradient.

    ``str()`` reads ``mean ± stderr, variance, SNR, z`` (one line per element of a tensor parameter).
    """

    mean: torch.Tensor
    variance: torch.Tensor
    stderr: torch.Tensor
    snr: torch.Tensor
    z: torch.Tensor | None  # None without an exact gradient

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tensors as lists, NaN as null."""
        return {k: to_json_value(v) for k, v in self._asdict().items()}

    def __str__(self) -> str:
        columns = [t.detach().cpu().reshape(-1).tolist() for t in self[:4]]
        zs = [None] * len(columns[0]) if self.z is None else self.z.detach().cpu().reshape(-1).tolist()
        lines = [f"mean {_plus_minus(m, se)}, variance {v:.4g}, SNR {snr:.3g}"
                 + ("" if z is None else f", z {z:+.2f}")
                 for m, v, se, snr, z in zip(*columns, zs, strict=True)]
        if self.mean.dim() == 0:
            return lines[0]
        cells = itertools.product(*map(range, self.mean.shape))
        return "\n".join(f"{list(i)}: {line}" for i, line in zip(cells, lines, strict=True))


def _plus_minus(mean: float, stderr: float) -> str:
    """``mean ± stderr`` with the mean given to the stderr's second significant digit."""
    if not (math.isfinite(mean) and math.isfinite(stderr) and 0 < stderr < 1e6 and abs(mean) < 1e15):
        return f"{mean:.5g} ± {stderr:.2g}"
    decimals = max(0, 1 - math.floor(math.log10(stderr)))
    return f"{mean:.{decimals}f} ± {stderr:.2g}"


class EstimatorSummary(NamedTuple):
    """One estimator call summarized: its name, sample count, cost per sample and, per parameter name,
    the :class:`ParamStats`. ``str()`` reads one block per parameter."""

    estimator: str
    num_samples: int
    seconds_per_sample: float
    params: dict[str, ParamStats]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: tensors as lists, NaN as null."""
        out: dict[str, Any] = {k: s.to_dict() for k, s in self.params.items()}
        out["seconds_per_sample"] = self.seconds_per_sample
        out["num_samples"] = self.num_samples
        return out

    def __str__(self) -> str:
        head = f"{self.estimator}, N = {self.num_samples}"
        return "\n".join([head] + [f"  d/d{name}: " + str(s).replace("\n", "\n    ")
                                    for name, s in self.params.items()])


def param_stats(
    samples: torch.Tensor, exact: torch.Tensor | None = None, groups: torch.Tensor | None = None,
    error: torch.Tensor | None = None, resolution: torch.Tensor | float | None = None,
) -> ParamStats:
    """Statistics of one parameter's single-sample estimates ``[N, *shape]``.

    groups: the sampler's ``[N]`` labels of independent groups (None for i.i.d. samples).
    error: the exact reference's own error estimate (z is taken against both uncertainties).
    resolution: what float arithmetic resolves of the mean (e.g. ``ROUNDING`` × the size of the
        terms), added to the stderr in quadrature; None: nothing added.

    Raises:
        GradestError: samples that are not a real floating-point tensor ``[N ≥ 1, *shape]`` with
            data (meta, sparse); an exact or error of another shape than one sample, or not finite;
            groups that are not ``[N]`` integer labels ≥ 0; a resolution that is not ≥ 0.
    """
    samples = _check_samples(samples)
    exact = _check_reference(exact, samples, "exact")
    error = _check_reference(error, samples, "error")
    groups = check_groups(groups, samples.shape[0], samples.device)
    if resolution is not None:
        resolution = _check_resolution(resolution)
    n = samples.shape[0]
    mean = samples.mean(0)
    var = variance(samples)
    stderr = (var / n).sqrt() if groups is None else mean_stderr(samples, groups)
    if resolution is not None:
        stderr = torch.hypot(stderr, torch.as_tensor(resolution, dtype=stderr.dtype, device=stderr.device))
    snr = mean.abs() / var.sqrt()
    z = None if exact is None else z_score(mean, stderr, exact, error)
    return ParamStats(mean, var, stderr, snr, z)


def summarize(
    estimate: PerSampleGradients,
    exact: ExactGradient | Mapping[str, torch.Tensor] | None = None,
) -> EstimatorSummary:
    """One record per estimator: statistics per parameter, and seconds per sample.

    Args:
        estimate: what an estimator's ``per_sample`` returned.
        exact: what :func:`gradest.exact_grad` returned, or name -> gradient with the estimate's
            parameter names exactly; None: no z-scores.

    Raises:
        GradestError: an estimate that is not a PerSampleGradients; an exact gradient whose names
            are not the estimate's, or whose values are not tensors of the parameters' shapes.
        SampleHealthError: an estimate whose standard error says nothing
            (:meth:`PerSampleGradients.stderr`).
    """
    from gradest.exact import ExactGradient

    if not isinstance(estimate, PerSampleGradients):
        raise GradestError(f"summarize takes what an estimator's per_sample returned (a "
                           f"PerSampleGradients), got {type(estimate).__name__}")
    if estimate.num_samples < 1:
        raise GradestError("the estimate holds no samples; draw at least one (num_samples ≥ 1)")
    truth = exact.grads if isinstance(exact, ExactGradient) else exact
    errors = (exact.error or {}) if isinstance(exact, ExactGradient) else {}
    if truth is not None:
        if not isinstance(truth, Mapping):
            raise GradestError(f"exact must be what gradest.exact_grad returned or a mapping of parameter "
                               f"name -> gradient, got {type(exact).__name__}")
        missing = [k for k in estimate.grads if k not in truth]
        extra = [str(k) for k in truth if k not in estimate.grads]
        if missing or extra:
            parts = ([f"missing {', '.join(map(repr, missing))}"] if missing else []) + \
                    ([f"extra {', '.join(map(repr, extra))}"] if extra else [])
            raise GradestError(f"exact has other parameter names than the estimate ({'; '.join(parts)}); "
                               f"give exactly {', '.join(map(repr, estimate.grads))}")
        for name, g in estimate.grads.items():
            _check_reference(truth[name], g, f"exact[{name!r}]")
    estimate.stderr()  # sample health's refusals of the standard error (one draw carries it, groups frozen)
    resolution = estimate.resolution or {}
    params = {
        name: param_stats(g, None if truth is None else truth[name], getattr(estimate, "groups", None),
                          errors.get(name), resolution.get(name))
        for name, g in estimate.grads.items()
    }
    return EstimatorSummary(
        estimator=estimate.estimator,
        num_samples=estimate.num_samples,
        seconds_per_sample=estimate.seconds / estimate.num_samples,
        params=params,
    )


# ── checks of the public functions' inputs ────────────────────────────────────────────────────


def _check_samples(samples: object) -> torch.Tensor:
    if not isinstance(samples, torch.Tensor):
        raise GradestError(f"samples must be a tensor [N, *shape] of single-sample estimates, got "
                           f"{type(samples).__name__}; e.g. per_sample.grads['loc']")
    check_dense(samples, "samples")
    if not samples.is_floating_point():
        raise GradestError(f"samples must be real floating-point, got {samples.dtype}; convert them, e.g. "
                           ".double()")
    if samples.dim() == 0 or samples.shape[0] == 0:
        raise GradestError(f"samples must be [N, *shape] with N ≥ 1 single-sample estimates, got shape "
                           f"{list(samples.shape)}")
    if not bool(torch.isfinite(samples).all()):
        raise NonFiniteError("samples contain NaN or inf; their statistics would be NaN: check the "
                             "estimator's settings and f")
    return samples


def _check_reference(value: object, samples: torch.Tensor, what: str) -> torch.Tensor | None:
    """``exact`` or ``error``: one finite value per coordinate of a sample, as a tensor."""
    if value is None:
        return None
    if not isinstance(value, torch.Tensor):
        raise GradestError(f"{what} must be a tensor of shape {list(samples.shape[1:])} (one value per "
                           f"coordinate), got {type(value).__name__}; wrap it with torch.tensor(...)")
    check_dense(value, what)
    if value.is_complex():
        raise GradestError(f"{what} must be real, got {value.dtype}")
    if tuple(value.shape) != tuple(samples.shape[1:]):
        raise GradestError(f"{what} has shape {list(value.shape)} but one sample has shape "
                           f"{list(samples.shape[1:])}; give one value per coordinate of the parameter")
    if not bool(torch.isfinite(value).all()):
        raise NonFiniteError(f"{what} contains NaN or inf; a z-score against it means nothing: check "
                             "the reference gradient")
    if what == "error" and bool((value < 0).any()):
        raise GradestError("error (the reference's uncertainty) must be ≥ 0")
    return value


def _check_resolution(resolution: object) -> torch.Tensor | float:
    number = isinstance(resolution, int | float) and not isinstance(resolution, bool)
    tensor = isinstance(resolution, torch.Tensor) and resolution.is_floating_point() \
        and resolution.numel() > 0 and not resolution.is_meta
    if not (number or tensor):
        raise GradestError(f"resolution must be a number ≥ 0 (or a float tensor), got "
                           f"{type(resolution).__name__}")
    value = torch.as_tensor(resolution)
    if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
        raise GradestError(f"resolution must be finite and ≥ 0, got {value.tolist()}")
    return resolution
