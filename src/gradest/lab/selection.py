r"""Estimator selection by measured efficiency: which estimator reaches a given precision fastest?

For an estimator with single-sample variance V (summed over parameter coordinates) and cost
T seconds per sample, averaging N samples gives the variance V/N in time N·T, so the variance
reached after one second is V·T — the **efficiency** (lower is better).

The pilot of every candidate is R = 8 independent batches of N/2 samples each (their own seeds,
the same for every candidate: common random numbers; 4N samples in all, calls large enough that
the per-call overhead does not dominate the time). Each batch gives one measurement of V (the
effective variance N·stderr², the stderr over a sampler's groups or over the independent calls of
an estimator with leave-one-out statistics, :mod:`gradest.batches`) and of T; the spread of the R
measurements gives 95% intervals (Student t, log scale: :func:`gradest.diagnostics.log_interval`)
for V, T (around their median) and V·T. The timings are free of warm-up and order effects: every
candidate first makes one untimed call (one-off costs: allocation, autograd set-up, caches), then
the batches run in rounds, one batch of every candidate per round, the order rotated from round to
round, so no candidate is always first or always right after an expensive one; T is the median.

The recommendation is the candidate with the least efficiency; where its interval overlaps another
usable candidate's, the two are a **near tie** (a rerun may swap them), and the reason names them.
Where the intervals separate, the recommendation is stable across seeds.

Every candidate is also checked for bias: z = (mean − reference)/√(stderr² + reference error²) per
coordinate (:func:`gradest.diagnostics.z_score`), the mean and stderr pooled over the batches, the
reference the exact gradient (:func:`gradest.exact_grad`) or, where none exists, the pathwise
estimate of separate pilot batches (its stderr then the reference error). A candidate is flagged as
biased when max |z| exceeds the two-sided Bonferroni bound for a false-alarm rate of 0.1% over all
coordinates of all candidates, from Student's t with the stderr's degrees of freedom (few for
samplers' groups and batches). This is how an estimator a user registers with
:func:`gradest.register` is checked before it is recommended.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import torch

from gradest import batches
from gradest.diagnostics import (
    degrees_of_freedom,
    effective_variance,
    log_interval,
    pooled,
    to_json_value,
    z_bound,
    z_score,
)
from gradest.errors import GradestError
from gradest.estimators import Estimator, get_estimator
from gradest.estimators.base import Builder, build, check_params
from gradest.estimators.registry import available, available_samplers, requires_argument
from gradest.exact import exact_grad
from gradest.lab.threads import check_threads, intra_op_threads
from gradest.parallel import CellMap, serial_map
from gradest.rng import make_generator

#: false-alarm rate of the bias check over all candidates and coordinates together
FALSE_ALARM = 1e-3
#: estimators that only make sense inside training loops (state carried across calls)
_TRAINING_ONLY = ("score-ema",)
#: independent pilot batches per candidate (one per round)
ROUNDS = 8
#: coverage of the intervals on variance, time and efficiency
CONFIDENCE = 0.95

Interval = tuple[float, float]
_NO_INTERVAL: Interval = (math.nan, math.nan)


class Candidate(NamedTuple):
    """One estimator's pilot: variance and seconds per sample, efficiency, bias check, intervals."""

    estimator: str
    applicable: bool
    variance: float  # single-sample (effective) variance, summed over coordinates
    seconds_per_sample: float  # median over the pilot batches
    efficiency: float  # variance × seconds per sample; lower is better
    relative: float  # efficiency / best efficiency
    max_abs_z: float
    biased: bool
    note: str
    variance_interval: Interval = _NO_INTERVAL  # 95%, from the independent pilot batches
    seconds_interval: Interval = _NO_INTERVAL
    efficiency_interval: Interval = _NO_INTERVAL
    z_bound: float = math.nan  # the |z| beyond which this candidate counts as biased

    @property
    def usable(self) -> bool:
        return self.applicable and not self.biased and math.isfinite(self.efficiency)


class Selection(NamedTuple):
    """What :func:`select` found: the recommended estimator (None when none is usable) and why, the
    reference the bias was checked against, and every candidate's pilot (usable ones first, by
    efficiency)."""

    recommendation: str | None
    reason: str
    reference: str  # "exact (closed-form)", "pathwise pilot" or "none"
    z_bound: float  # the bound for i.i.d. samples (normal); see each candidate's own
    candidates: list[Candidate]  # usable first, by efficiency; then the rest
    near_tie: tuple[str, ...] = ()  # usable candidates whose interval overlaps the recommendation's

    def to_dict(self) -> dict:
        """JSON-ready: NaN (not applicable, no reference) becomes null."""

        def clean(value):
            if isinstance(value, tuple):
                return [clean(v) for v in value]
            return to_json_value(value) if isinstance(value, float) else value

        return {"recommendation": self.recommendation, "reason": self.reason,
                "reference": self.reference, "z_bound": self.z_bound, "near_tie": list(self.near_tie),
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


class _Batch(NamedTuple):
    """One pilot batch of one candidate."""

    mean: dict[str, torch.Tensor]
    stderr: dict[str, torch.Tensor]
    variance: float  # effective single-sample variance, summed over coordinates
    seconds_per_sample: float
    dof: int  # of the stderr


class _Pilot(NamedTuple):
    """A candidate's batches pooled: means and stderrs per parameter, the batches' measurements."""

    mean: dict[str, torch.Tensor]
    stderr: dict[str, torch.Tensor]
    dof: int
    variances: list[float]
    seconds: list[float]


def _batch_size(est: Estimator, num_samples: int) -> int:
    """num_samples / 2, raised to the next count the estimator accepts (pairs, R, minimum)."""
    size = max(num_samples // 2, 2)
    for _ in range(64):
        try:
            return est.check_samples(size)
        except GradestError:
            size += 1
    return est.check_samples(size)  # its own error, naming the fix


def _batch(est: Estimator, f, dist_builder, params, num_samples: int, seed: int, threads,
           timed: bool = True) -> _Batch | str | None:
    """One pilot batch (an untimed warm-up with ``timed=False``: a throwaway copy, nothing returned).

    A GradestError is about this input (f's shape or values): reported per candidate, in its row.
    """
    try:
        with intra_op_threads(threads):
            if not timed:
                # pays the one-off costs (allocation, autograd, thread pools) outside the timings, and
                # leaves stateful baselines of the measured estimator untouched
                copy.deepcopy(est).per_sample(f, dist_builder, params, _batch_size(est, num_samples),
                                              make_generator(seed))
                return None
            size = _batch_size(est, num_samples)
            per = batches.per_sample(est, f, dist_builder, params, size, make_generator(seed))
            stderr = per.stderr()  # (sample health: an estimate one draw carries, frozen groups)
            seconds = per.seconds
            if len(batches.batch_sizes(est, size)) > 1:
                # the statistics need independent calls; the time is that of the one call a user makes
                seconds = est.per_sample(f, dist_builder, params, size, make_generator(seed)).seconds
    except GradestError as err:
        return str(err)
    return _Batch(
        mean={k: g.mean(0) for k, g in per.grads.items()},
        stderr=stderr,
        variance=sum(float(effective_variance(g, per.groups).sum()) for g in per.grads.values()),
        seconds_per_sample=seconds / per.num_samples,
        dof=degrees_of_freedom(per.num_samples, per.groups),
    )


def _pool(parts: Sequence[_Batch | str]) -> _Pilot | str:
    """The batches of one candidate as one pilot (equal sizes: the mean of means; stderr² / R²)."""
    failed = next((p for p in parts if isinstance(p, str)), None)
    if failed is not None:
        return failed
    both = {k: pooled([p.mean[k] for p in parts], [p.stderr[k] for p in parts]) for k in parts[0].mean}
    mean = {k: m for k, (m, _) in both.items()}
    stderr = {k: se for k, (_, se) in both.items()}
    return _Pilot(mean, stderr, sum(p.dof for p in parts), [p.variance for p in parts],
                  [p.seconds_per_sample for p in parts])


def _round_seeds(seed: int, count: int) -> list[int]:
    """Independent seeds for the pilot batches, derived from ``seed`` (any seed in [0, 2^63 − 1])."""
    return torch.randint(2**62, (count,), generator=make_generator(seed)).tolist()


def _max_abs_z(pilot: _Pilot, ref_mean, ref_error) -> float:
    """max |z| over coordinates; +inf for a gap where no uncertainty covers it (a zero-variance estimate
    off the reference, e.g. the pathwise gradient of a piecewise-constant f, which is 0 everywhere)."""
    worst = 0.0
    for k, m in pilot.mean.items():
        error = None if ref_error is None else ref_error.get(k)
        z = z_score(m, pilot.stderr[k], ref_mean[k].to(m), None if error is None else error.to(m))
        worst = max(worst, float(z.abs().max()))
    return worst


def _intervals(pilot: _Pilot) -> tuple[float, float, float, Interval, Interval, Interval]:
    """Variance (mean of the batches), seconds (median) and efficiency with their intervals."""
    variance, v_int = log_interval(pilot.variances, confidence=CONFIDENCE)
    seconds, t_int = log_interval(pilot.seconds, robust=True, confidence=CONFIDENCE)
    efficiency = variance * seconds
    if efficiency > 0 and all(math.isfinite(x) for x in (*v_int, *t_int)):
        # relative half-widths on the log scale add in quadrature
        half = math.hypot(math.log(v_int[1] / variance), math.log(t_int[1] / seconds))
        e_int = (efficiency * math.exp(-half), efficiency * math.exp(half))
    else:
        e_int = (0.0, 0.0) if efficiency == 0 else _NO_INTERVAL
    return variance, seconds, efficiency, v_int, t_int, e_int


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
        num_samples: twice the samples of each of the ``ROUNDS`` independent pilot batches per
            candidate (each raised to a count the candidate accepts: pairs, randomizations).
        seed: the batches' seeds derive from it (the same for every candidate).
        threads: torch intra-op threads during the pilots (restored after; None: unchanged).
            One thread by default: the pilots' tensors are small and the timings reproducible.
        cell_map: where the pilot batches run (:mod:`gradest.parallel`): one after the other here
            by default — warm-ups first, then round by round in rotated order — or as Dask tasks.
            Each batch is seeded by ``seed`` alone, so means, variances and bias checks are the same
            wherever it runs; only the timings are the worker's.

    Returns:
        A :class:`Selection`: the most efficient unbiased candidate, why (near ties named), and the
        ranked table with intervals.
    """
    if not callable(f):
        raise GradestError(f"f must be a function of the samples, f(x) -> costs [N], got {type(f).__name__}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
        raise GradestError(f"num_samples must be an integer ≥ 2 to measure a variance, got {num_samples!r}")
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
    seeds = _round_seeds(seed, 2 * ROUNDS)  # the second half: the pathwise reference's batches
    # warm-ups, then round r runs every candidate's batch r, starting with candidate r (rotated)
    count = len(jobs)
    order = [(j, None) for j in range(count)] + [
        ((r + i) % count, r) for r in range(ROUNDS) for i in range(count)]
    cells = [(jobs[j][1], f, dist_builder, params, num_samples, seeds[0 if r is None else r], threads,
              r is not None) for j, r in order]
    results = cell_map(_batch, cells)
    parts: dict[int, list] = {j: [None] * ROUNDS for j in range(count)}
    announced: set[int] = set()
    for j, r in order:
        if on_estimator is not None and j not in announced:
            announced.add(j)
            on_estimator(jobs[j][0])  # serially: before its warm-up; on Dask: while it is awaited
        out = next(results)
        if r is None:
            if isinstance(out, str):
                parts[j] = [out] * ROUNDS  # the warm-up already failed: the batches will too
            continue
        if not isinstance(parts[j][r], str):
            parts[j][r] = out
    for j, (label, _) in enumerate(jobs):
        pilots[label] = _pool(parts[j])

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
        reference, ref_mean, ref_error = f"exact ({exact.method})", exact.grads, exact.error
    elif isinstance(pilots.get("pathwise"), _Pilot):
        pathwise = get_estimator("pathwise")
        ref = _pool([_batch(pathwise, f, dist_builder, params, num_samples, s, threads)
                     for s in seeds[ROUNDS:]])
        reference, ref_mean, ref_error = "pathwise (independent pilot)", ref.mean, ref.stderr
    else:
        reference, ref_mean, ref_error = "none", None, None

    coords = sum(int(v.numel()) for v in params.values())
    tests = coords * max(len(pilots), 1)
    normal_bound = z_bound(FALSE_ALARM, tests)

    rows = []
    for name, p in pilots.items():
        if isinstance(p, str):
            rows.append(Candidate(name, False, math.nan, math.nan, math.nan, math.nan, math.nan, False,
                                  f"not applicable: {p}"))
            continue
        bound = z_bound(FALSE_ALARM, tests, p.dof)
        z = math.nan if ref_mean is None else _max_abs_z(p, ref_mean, ref_error)
        biased = z > bound  # NaN (no reference) is False; +inf (an uncovered gap) is True
        variance, seconds, eff, v_int, t_int, e_int = _intervals(p)
        note = f"BIASED: |z| = {z:.4g} > {bound:.2f} against {reference}" if biased else ""
        if name in by_design:  # never recommended, whatever this pilot could resolve
            biased = True
            note = f"BIASED by design (a relaxation; |z| = {z:.4g} against {reference})"
        rows.append(Candidate(name, True, variance, seconds, eff, math.nan, z, biased, note,
                              v_int, t_int, e_int, bound))
    # ties (several exact, zero-variance candidates) go to the fastest
    usable = sorted((c for c in rows if c.usable), key=lambda c: (c.efficiency, c.seconds_per_sample))
    best = usable[0].efficiency if usable else math.nan
    usable = [c._replace(relative=c.efficiency / best if best > 0 else math.inf if c.efficiency > 0 else 1.0)
              for c in usable]
    rest = [c for c in rows if not c.usable]
    ties = _near_ties(usable)
    return Selection(*_recommend(usable, reference, ties), reference, normal_bound, usable + rest,
                     tuple(ties))


def _overlap(a: Interval, b: Interval) -> bool:
    """Whether two intervals overlap; an interval with NaN (too few batches) overlaps everything."""
    if not all(math.isfinite(x) for x in (*a, *b)):
        return True
    return a[0] <= b[1] and b[0] <= a[1]


def _near_ties(ranked: list[Candidate]) -> list[str]:
    """Usable candidates the pilots cannot tell from the first: overlapping efficiency intervals (both
    exact, i.e. zero variance: overlapping time intervals)."""
    if not ranked:
        return []
    top = ranked[0]
    ties = []
    for c in ranked[1:]:
        if top.efficiency == 0 and c.efficiency == 0:
            tied = _overlap(top.seconds_interval, c.seconds_interval)
        else:
            tied = _overlap(top.efficiency_interval, c.efficiency_interval)
        if tied:
            ties.append(c.estimator)
    return ties


def _recommend(ranked: list[Candidate], reference: str, ties: list[str]) -> tuple[str | None, str]:
    if not ranked:
        return None, "no candidate ran without an error or a bias; see the notes in the table"
    top = ranked[0]
    lo, hi = top.efficiency_interval
    why = (f"{top.estimator} has the best efficiency: single-sample variance {top.variance:.4g} at "
           f"{1e6 * top.seconds_per_sample:.3g} µs per sample, i.e. variance × time = {top.efficiency:.4g}"
           f" (95% interval {lo:.3g} … {hi:.3g})")
    if top.variance == 0:
        why += " (zero variance: the estimate is exact)"
    if ties:
        why += (f"; a near tie with {', '.join(ties)}: the intervals overlap, so the pilots cannot tell "
                "them apart and a rerun may swap them")
    others = [c for c in ranked[1:] if c.estimator not in ties]
    if ranked[1:]:
        second = ranked[1]
        if second.efficiency == top.efficiency:  # both exact (zero variance): no factor to state
            runner_up = (f"the runner-up {second.estimator} (variance {second.variance:.4g}, "
                         f"{1e6 * second.seconds_per_sample:.3g} µs per sample)")
            why += f"; tied in efficiency with {runner_up}, and the faster of the two"
        elif others:
            nxt = others[0]
            factor = nxt.efficiency / top.efficiency if top.efficiency > 0 else math.inf
            why += (f"; {factor:.3g}× better than the runner-up {nxt.estimator} (variance "
                    f"{nxt.variance:.4g}, {1e6 * nxt.seconds_per_sample:.3g} µs per sample; the "
                    "intervals separate)")
    if reference == "none":
        why += (". Unbiasedness not checked: no exact gradient and no pathwise estimator for this "
                "problem to compare with.")
    else:
        why += f". Unbiasedness checked against {reference}."
    return top.estimator, why
