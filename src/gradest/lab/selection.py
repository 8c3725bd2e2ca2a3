r"""Estimator selection by measured efficiency: which estimator reaches a given precision fastest?

For an estimator with single-sample variance V (summed over parameter coordinates) and cost
T seconds per sample, averaging N samples gives the variance V/N in time N·T, so the variance
reached after one second is V·T — the **efficiency** (lower is better). A pilot run of N samples
measures both (the time as the least of three runs after an untimed one, on one intra-op thread
by default); for samplers whose samples are dependent (antithetic pairs, quasi-Monte Carlo) V is
the effective variance N · stderr², the stderr taken over independent groups.

Every candidate is also checked for bias: z = (mean − reference)/stderr per coordinate, where the
reference is the exact gradient (:func:`gradest.exact_grad`) or, where none exists, the pathwise
estimate of a separate pilot run (its own stderr then enters: z = Δ/√(se² + se_ref²)). A candidate is
flagged as biased when max |z| exceeds the two-sided Bonferroni bound for a false-alarm rate of
0.1% over all coordinates of all candidates. This is how an estimator a user registers with
:func:`gradest.register` is checked before it is recommended.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch

from gradest.diagnostics import effective_variance, mean_stderr, to_json_value
from gradest.errors import GradestError
from gradest.estimators import Estimator, get_estimator
from gradest.estimators.base import Builder, build, check_params
from gradest.estimators.registry import available, available_samplers, requires_argument
from gradest.exact import exact_grad
from gradest.lab.parallel import CellMap, serial_map
from gradest.lab.threads import check_threads, intra_op_threads
from gradest.rng import make_generator

#: false-alarm rate of the bias check over all candidates and coordinates together
FALSE_ALARM = 1e-3
#: estimators that only make sense inside training loops (state carried across calls)
_TRAINING_ONLY = ("score-ema",)
#: timed repetitions per candidate (the minimum is kept)
_TIMINGS = 3


class Candidate(NamedTuple):
    """One estimator's pilot: variance and seconds per sample, efficiency, bias check."""

    estimator: str
    applicable: bool
    variance: float  # single-sample (effective) variance, summed over coordinates
    seconds_per_sample: float
    efficiency: float  # variance × seconds per sample; lower is better
    relative: float  # efficiency / best efficiency
    max_abs_z: float
    biased: bool
    note: str

    @property
    def usable(self) -> bool:
        return self.applicable and not self.biased and math.isfinite(self.efficiency)


class Selection(NamedTuple):
    recommendation: str | None
    reason: str
    reference: str  # "exact (closed-form)", "pathwise pilot" or "none"
    z_bound: float
    candidates: list[Candidate]  # usable first, by efficiency; then the rest

    def to_dict(self) -> dict:
        """JSON-ready: NaN (not applicable, no reference) becomes null."""

        def clean(value):
            return to_json_value(value) if isinstance(value, float) else value

        return {"recommendation": self.recommendation, "reason": self.reason,
                "reference": self.reference, "z_bound": self.z_bound,
                "candidates": [{k: clean(v) for k, v in c._asdict().items()} | {"usable": c.usable}
                               for c in self.candidates]}


def default_candidates() -> list[str]:
    """Every registered estimator that takes no required argument, with and without each sampler."""
    names = []
    for spec in available():
        name, _, _ = spec.partition("=")
        if name in _TRAINING_ONLY or requires_argument(name):
            continue  # (an argument such as score-const=B is asked for, never guessed)
        names.append(name)
    return names + [f"{n}+{s}" for s in available_samplers() for n in names]


class _Pilot(NamedTuple):
    mean: dict[str, torch.Tensor]
    stderr: dict[str, torch.Tensor]
    variance: float
    seconds_per_sample: float


def _pilot(est: Estimator, f, dist_builder, params, num_samples, seed) -> _Pilot:
    # A first, untimed call pays one-off costs (allocation, autograd setup, caches); same size,
    # because samplers constrain the count (pairs, equal randomizations).
    est.per_sample(f, dist_builder, params, num_samples, make_generator(seed + 1))
    per = est.per_sample(f, dist_builder, params, num_samples, make_generator(seed))
    # The least of a few timings, as timeit does: other load on the machine only ever adds time.
    seconds = min([per.seconds] + [
        est.per_sample(f, dist_builder, params, num_samples, make_generator(seed + 2 + r)).seconds
        for r in range(_TIMINGS - 1)
    ])
    groups = getattr(per, "groups", None)
    mean = {k: g.mean(0) for k, g in per.grads.items()}
    stderr = {k: mean_stderr(g, groups) for k, g in per.grads.items()}
    variance = sum(float(effective_variance(g, groups).sum()) for g in per.grads.values())
    return _Pilot(mean, stderr, variance, seconds / per.num_samples)


def _guarded_pilot(est: Estimator, f, dist_builder, params, num_samples, seed, threads) -> _Pilot | str:
    # a GradestError is about this input (f's shape or values): reported per candidate, in its row
    try:
        with intra_op_threads(threads):
            return _pilot(est, f, dist_builder, params, num_samples, seed)
    except GradestError as err:
        return str(err)


def _max_abs_z(pilot: _Pilot, ref_mean, ref_stderr) -> float:
    """max |z| over coordinates; +inf for a gap where no uncertainty covers it (a zero-variance estimate
    off the reference, e.g. the pathwise gradient of a piecewise-constant f, which is 0 everywhere)."""
    worst = 0.0
    for k, m in pilot.mean.items():
        diff = (m - ref_mean[k].to(m)).abs()
        se = pilot.stderr[k] ** 2 + (0.0 if ref_stderr is None or ref_stderr.get(k) is None
                                     else ref_stderr[k].to(m) ** 2)
        se = se.sqrt()
        tiny = 64 * torch.finfo(m.dtype).eps * (1.0 + ref_mean[k].to(m).abs())
        z = torch.where(diff <= tiny, torch.zeros_like(diff), diff / se)
        worst = max(worst, float(z.max()))
    return worst


def select(
    f: Callable[[torch.Tensor], torch.Tensor],
    dist_builder: Builder,
    params: Mapping[str, torch.Tensor],
    estimators: Sequence[str | Estimator] | None = None,
    num_samples: int = 10_000,
    seed: int = 0,
    on_estimator: Callable[[str], None] | None = None,
    threads: int | None = 1,
    cell_map: CellMap = serial_map,
) -> Selection:
    """Pilot-run every candidate and rank by efficiency = single-sample variance × seconds per sample.

    Args:
        f: the cost, as for every estimator.
        dist_builder: parameters -> distribution, as for every estimator.
        params: name -> tensor, as for every estimator.
        estimators: candidates (names or Estimator values); default :func:`default_candidates`.
            Candidates that do not apply (e.g. pathwise for a discrete family) are listed with
            the reason and not ranked.
        num_samples: pilot samples per candidate (even, for antithetic pairs).
        seed: every candidate's generator is seeded with it.
        threads: torch intra-op threads during the pilots (restored after; None: unchanged).
            One thread by default: the pilots' tensors are small and the timings reproducible.
        cell_map: where the pilots run (:mod:`gradest.lab.parallel`): one after the other here by
            default, or as Dask tasks. Each pilot is seeded by ``seed`` alone, so means, variances
            and bias checks are the same wherever it runs; only the timings are the worker's.

    Returns:
        A :class:`Selection`: the most efficient unbiased candidate, why, and the ranked table.
    """
    if num_samples < 2:
        raise GradestError(f"num_samples must be ≥ 2 to measure a variance, got {num_samples}")
    check_threads(threads)
    specs = list(estimators) if estimators else default_candidates()
    if not specs:
        raise GradestError("no candidate estimators; give at least one")
    dist = build(dist_builder, check_params(params))
    pilots: dict[str, _Pilot | str | None] = {}
    by_design: set[str] = set()
    jobs: list[tuple[str, Estimator]] = []
    for spec in specs:
        est = get_estimator(spec)
        label = est.name
        while label in pilots:  # two values with one name (e.g. a subclass keeping its parent's)
            label += "'"
        if est.capabilities.biased:
            by_design.add(label)
        # what the estimator needs is data (its capabilities): no pilot for what cannot apply
        reason = est.applicable(dist)
        pilots[label] = reason  # None: its pilot, below, fills the place (the table keeps this order)
        if reason is None:
            jobs.append((label, est))
        elif on_estimator is not None:
            on_estimator(label)
    # the pilots are independent cells: run here one by one, or as Dask tasks (timed on a worker)
    results = cell_map(_guarded_pilot, [(est, f, dist_builder, params, num_samples, seed, threads)
                                        for _, est in jobs])
    for label, _ in jobs:
        if on_estimator is not None:
            on_estimator(label)  # serially: before its pilot starts; on Dask: while it is awaited
        pilots[label] = next(results)

    exact = None
    # After the pilots: they check f (one value per sample, a precise error per candidate), and
    # when every one of them failed there is nothing to compare with an exact gradient
    if any(isinstance(p, _Pilot) for p in pilots.values()):
        try:
            exact = exact_grad(f, dist_builder, params)
        except GradestError:
            exact = None
    if exact is not None:
        # a numerical reference (quadrature) carries an error estimate: it widens the bias check
        reference, ref_mean, ref_stderr = f"exact ({exact.method})", exact.grads, exact.error
    elif isinstance(pilots.get("pathwise"), _Pilot):
        with intra_op_threads(threads):
            ref = _pilot(get_estimator("pathwise"), f, dist_builder, params, num_samples, seed + 7919)
        reference, ref_mean, ref_stderr = "pathwise (independent pilot)", ref.mean, ref.stderr
    else:
        reference, ref_mean, ref_stderr = "none", None, None
    from scipy.stats import norm  # here, not at the top: scipy.stats takes ~0.4 s to import

    coords = sum(int(v.numel()) for v in params.values())
    z_bound = float(norm.isf(FALSE_ALARM / (2 * coords * max(len(pilots), 1))))

    rows = []
    for name, p in pilots.items():
        if isinstance(p, str):
            rows.append(Candidate(name, False, math.nan, math.nan, math.nan, math.nan, math.nan, False,
                                  f"not applicable: {p}"))
            continue
        z = math.nan if ref_mean is None else _max_abs_z(p, ref_mean, ref_stderr)
        biased = z > z_bound  # NaN (no reference) is False; +inf (an uncovered gap) is True
        eff = p.variance * p.seconds_per_sample
        note = f"BIASED: |z| = {z:.4g} > {z_bound:.2f} against {reference}" if biased else ""
        if name in by_design:  # never recommended, whatever this pilot could resolve
            biased = True
            note = f"BIASED by design (a relaxation; |z| = {z:.4g} against {reference})"
        rows.append(Candidate(name, True, p.variance, p.seconds_per_sample, eff, math.nan, z, biased, note))
    # ties (several exact, zero-variance candidates) go to the fastest
    usable = sorted((c for c in rows if c.usable), key=lambda c: (c.efficiency, c.seconds_per_sample))
    best = usable[0].efficiency if usable else math.nan
    usable = [c._replace(relative=c.efficiency / best if best > 0 else math.inf if c.efficiency > 0 else 1.0)
              for c in usable]
    rest = [c for c in rows if not c.usable]
    return Selection(*_recommend(usable, reference), reference, z_bound, usable + rest)


def _recommend(ranked: list[Candidate], reference: str) -> tuple[str | None, str]:
    if not ranked:
        return None, "no candidate ran without an error or a bias; see the notes in the table"
    top = ranked[0]
    why = (f"{top.estimator} has the best efficiency: single-sample variance {top.variance:.4g} at "
           f"{1e6 * top.seconds_per_sample:.3g} µs per sample, i.e. variance × time = {top.efficiency:.4g}")
    if top.variance == 0:
        why += " (zero variance: the estimate is exact)"
    if len(ranked) > 1:
        second = ranked[1]
        runner_up = (f"the runner-up {second.estimator} (variance {second.variance:.4g}, "
                     f"{1e6 * second.seconds_per_sample:.3g} µs per sample)")
        if second.efficiency == top.efficiency:  # both exact (zero variance): no factor to state
            why += f"; tied in efficiency with {runner_up}, and the faster of the two"
        else:
            factor = second.efficiency / top.efficiency if top.efficiency > 0 else math.inf
            if factor < 1.1:  # seconds per sample vary by more than this between runs
                why += (f"; only {factor:.2f}× better than {runner_up}: the two are about equally "
                        "efficient, and a rerun may swap them")
            else:
                why += f"; {factor:.3g}× better than {runner_up}"
    if reference == "none":
        why += (". Unbiasedness not checked: no exact gradient and no pathwise estimator for this "
                "problem to compare with.")
    else:
        why += f". Unbiasedness checked against {reference}."
    return top.estimator, why
