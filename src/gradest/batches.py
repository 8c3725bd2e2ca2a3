r"""Independent batches: an honest standard error for estimators whose samples are coupled.

A leave-one-out baseline b_n = (Σ_m f(x_m) − f(x_n))/(N − 1), or a leave-one-out control-variate
coefficient c_(−n), makes every single-sample estimate ĝ_n depend on all the other samples of the
call. The mean ḡ stays unbiased, but s/√N is no longer its standard error: ḡ is a U-statistic (for
the baseline, the sample covariance of f and the score), whose variance

    Var ḡ = σ₁²/N + σ₂²/(N(N − 1))

has a second term that the spread of the ĝ_n does not see. Where the first vanishes — the single-sample
variance is tiny, e.g. x ~ Bernoulli(½) and f(0) ≈ f(1) — the second dominates, and s/√N is a
random fraction of the truth: |z| > 3 for about a fifth of all seeds, though the estimator is unbiased.

Remedy: B independent calls of about N/B samples each, drawing one after the other from the caller's
generator. The batch estimates T_1..T_B are i.i.d., the reported estimate is their sample-weighted
average (the mean of all N ĝ_n), and its standard error comes from the spread of the T_b (the
record's ``groups`` are the batch labels, so :func:`gradest.diagnostics.mean_stderr` computes it):
unbiased for Var ḡ whatever the dependence inside a batch, with B − 1 degrees of freedom.

Cost: each batch's leave-one-out statistics use N/B − 1 other samples, so where σ₁² dominates (the
usual case) the variance grows by a factor ≈ 1 + B/N; where σ₂² dominates it is B times that of one
call of N samples (the second term falls like 1/N²) — the price of a standard error that can be
trusted there. Estimators with i.i.d. samples (and samplers' groups alone) run as one call, as before.

Which estimators couple their samples is declared, not guessed: an estimator, or its baseline, with
``couples_samples = True`` (:class:`~gradest.estimators.baselines.LeaveOneOut`,
:class:`~gradest.estimators.control_variates.ControlVariate`; a user's estimator may say so too).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from gradest.estimators import Estimator
from gradest.estimators.base import Builder, Cost, PerSampleGradients
from gradest.estimators.sampling import Antithetic, QuasiMonteCarlo

#: at most this many batches (the stderr then has B − 1 = 15 degrees of freedom)
BATCHES = 16
#: batches smaller than this are avoided (a leave-one-out statistic of few samples is a poor one)
MIN_BATCH = 32


def couples_samples(estimator: Estimator) -> bool:
    """Whether one sample's estimate depends on the other samples of the same call."""
    baseline = getattr(estimator, "baseline", None)  # the score function's (a protocol member)
    return bool(getattr(estimator, "couples_samples", False)
                or getattr(baseline, "couples_samples", False))


def _unit(estimator: Estimator) -> int:
    """The sample count every batch must be a multiple of (pairs, equal randomizations)."""
    sampler = estimator.sampler
    if isinstance(sampler, Antithetic):
        return 2
    if isinstance(sampler, QuasiMonteCarlo):
        return sampler.randomizations
    return 1


def batch_sizes(estimator: Estimator, num_samples: int, batches: int = BATCHES) -> list[int]:
    """Sizes of the independent calls for ``num_samples`` (one size: a single call).

    As many batches as fit up to ``batches``, each of at least ``MIN_BATCH`` samples where N allows
    (else of the estimator's minimum), each a multiple of the sampler's unit, sizes within one unit.
    """
    if not couples_samples(estimator):
        return [num_samples]
    unit = _unit(estimator)
    least = max(estimator.min_samples, getattr(estimator.sampler, "min_samples", 1), 2)
    units = num_samples // unit
    count = min(batches, units // math.ceil(max(least, MIN_BATCH) / unit))
    if count < 2:
        count = min(2, units // math.ceil(least / unit))
    if count < 2:
        return [num_samples]  # too few samples to split: one call (its stderr ignores the coupling)
    base, extra = divmod(units, count)
    return [(base + (i < extra)) * unit for i in range(count)]


def per_sample(
    estimator: Estimator,
    f: Cost,
    dist_builder: Builder,
    params: Mapping[str, torch.Tensor],
    num_samples: int,
    generator: torch.Generator,
    batches: int = BATCHES,
) -> PerSampleGradients:
    """``estimator.per_sample``, as independent batches when the estimator couples its samples.

    Returns one record of ``num_samples`` estimates; for a coupling estimator its ``groups`` label
    the batches (independent), its ``seconds`` add up the calls. Otherwise exactly one call.
    """
    num_samples = estimator.check_samples(num_samples)
    sizes = batch_sizes(estimator, num_samples, batches)
    if len(sizes) == 1:
        return estimator.per_sample(f, dist_builder, params, num_samples, generator)
    parts = [estimator.per_sample(f, dist_builder, params, size, generator) for size in sizes]
    device = parts[0].values.device
    groups = torch.repeat_interleave(torch.arange(len(sizes), device=device),
                                     torch.tensor(sizes, device=device))
    # the bound of the mean's rounding: each part's, weighted by its size (a part without one: 0)
    names = {k for p in parts for k in (p.resolution or {})}
    resolution = {k: sum((p.resolution or {}).get(k, 0.0) * (size / num_samples)
                         for p, size in zip(parts, sizes, strict=True)) for k in names} or None
    return PerSampleGradients(
        grads={k: torch.cat([p.grads[k] for p in parts]) for k in parts[0].grads},
        values=torch.cat([p.values for p in parts]),
        seconds=sum(p.seconds for p in parts),
        estimator=parts[0].estimator,
        groups=groups,
        resolution=resolution,
    )
