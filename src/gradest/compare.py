"""Side-by-side comparison of estimators on one problem E_{p(x;θ)}[f(x)], with the exact gradient.

Each estimator draws from its own generator seeded with the same seed, so the comparison uses
common random numbers where the estimators consume randomness alike. Estimators with leave-one-out
statistics run as independent batches, so that their stderr is honest (:mod:`gradest.batches`).
Seconds per sample are timed apart from the statistics, after every estimator's warm-up, as the
median of ``TIMING_ROUNDS`` calls in rotated order: they do not depend on the order of estimators.
"""

from __future__ import annotations

import copy
import reprlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from gradest import batches
from gradest.device import device_of, resolve_device
from gradest.diagnostics import EstimatorSummary, median, summarize, to_json_value
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators import Estimator, get_estimator
from gradest.estimators.base import Builder, build, check_num_samples, check_params
from gradest.exact import ExactGradient, exact_grad
from gradest.memory import (
    BYTES_PER_SAMPLE_BASE,
    BYTES_PER_SAMPLE_PER_NUMBER,
    available_gpu_memory,
    available_memory,
)
from gradest.rng import check_seed, make_generator

#: samples of the untimed warm-up call of each estimator, before any timing
WARM_UP_SAMPLES = 256
#: timed calls per estimator, in rounds of rotated order (the median is reported)
TIMING_ROUNDS = 3


def timing_order(count: int, rounds: int = TIMING_ROUNDS) -> list[int]:
    """Estimator indices of the timed calls: round r runs all, starting with estimator r (rotated)."""
    return [(r + i) % count for r in range(rounds) for i in range(count)]


def timings(estimators: Sequence[Estimator], f, dist_builder: Builder, params: Mapping[str, torch.Tensor],
            num_samples: int, seed: int, device=None, rounds: int = TIMING_ROUNDS) -> list[float]:
    """Median seconds of one ``num_samples`` call per estimator, free of order effects.

    Every estimator is timed ``rounds`` times, one round after the other, each round in a rotated
    order (no estimator always first, or always after the same one), on throwaway copies (stateful
    baselines untouched); the median drops a round that a machine's hiccup slowed. One plain call
    each, also for an estimator that is run as independent batches for its stderr.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise GradestError(f"rounds must be an integer ≥ 1 (the median of that many timed calls), "
                           f"got {rounds!r}")
    times: list[list[float]] = [[] for _ in estimators]
    for j in timing_order(len(estimators), rounds):
        est = copy.deepcopy(estimators[j])
        times[j].append(est.per_sample(f, dist_builder, params, num_samples,
                                       make_generator(seed, device)).seconds)
    return [median(t) for t in times]


class Comparison(NamedTuple):
    config: dict[str, Any]
    exact: ExactGradient | None
    exact_note: str | None  # why there is no exact gradient, if there is none
    summaries: list[EstimatorSummary]

    def to_dict(self) -> dict[str, Any]:
        exact = None
        if self.exact is not None:
            exact = {k: to_json_value(v) for k, v in self.exact.grads.items()}
        return {
            "config": self.config,
            "exact": exact,
            "exact_method": None if self.exact is None else self.exact.method,
            "exact_note": self.exact_note,
            "estimators": {s.estimator: s.to_dict() for s in self.summaries},
        }


def compare(
    f: Callable[[torch.Tensor], torch.Tensor],
    dist_builder: Builder,
    params: Mapping[str, torch.Tensor],
    estimators: Sequence[str | Estimator],
    num_samples: int,
    seed: int,
    config: Mapping[str, Any] | None = None,
    on_estimator: Callable[[str], None] | None = None,
    device: str | torch.device | None = None,
) -> Comparison:
    """Run every estimator once with ``num_samples`` samples and summarise against the exact gradient.

    device: where the parameters, the generators and so the samples live (``cpu``, ``cuda``,
    ``cuda:N``); the parameters are moved there. None: the parameters' own device.

    Raises:
        GradestError: any argument out of its contract (an estimators string instead of a list, a
            seed outside [0, 2**64 − 1], num_samples < 1, …), or a run that would not fit in memory.
    """
    if isinstance(estimators, str | Estimator) or not isinstance(estimators, Sequence):
        raise GradestError(f"estimators must be a list of names or Estimators, e.g. ['pathwise', 'score'], "
                           f"got {type(estimators).__name__} {reprlib.repr(estimators)}")
    if not estimators:
        raise GradestError("give at least one estimator")
    if not callable(f):
        raise GradestError(f"f must be a function of the samples x [N, ...] -> [N], got {type(f).__name__}")
    check_num_samples(num_samples)
    check_seed(seed)
    if config is not None and not isinstance(config, Mapping):
        raise GradestError(f"config must be a mapping (it goes into the JSON as it is), got "
                           f"{type(config).__name__}")
    if on_estimator is not None and not callable(on_estimator):
        raise GradestError(f"on_estimator must be a function of the estimator's name, or None; got "
                           f"{type(on_estimator).__name__}")
    params = check_params(params)
    resolved = [get_estimator(e) for e in estimators]
    if device is None:
        device = device_of(params.values())
    else:
        device = resolve_device(device)
        params = {name: value.to(device) for name, value in params.items()}
    _refuse_beyond_memory(dist_builder, params, num_samples, device)
    try:
        exact, note = exact_grad(f, dist_builder, params), None
    except NonFiniteError:
        # E f = ∞ (or NaN parameters): there is no gradient to estimate, and the Monte Carlo numbers
        # would be finite and meaningless
        raise
    except GradestError as err:
        exact, note = None, str(err)
    # every estimator's untimed warm-up first: a throwaway copy pays the first-call costs (autograd,
    # thread pools) and leaves stateful baselines of the measured estimator untouched
    for est in resolved:
        copy.deepcopy(est).per_sample(f, dist_builder, params, min(num_samples, WARM_UP_SAMPLES),
                                      make_generator(seed, device))
    summaries = []
    for est in resolved:
        if on_estimator is not None:
            on_estimator(est.name)
        # as independent batches where the estimator couples its samples (an honest stderr)
        per_sample = batches.per_sample(est, f, dist_builder, params, num_samples,
                                        make_generator(seed, device))
        if not all(bool(torch.isfinite(g).all()) for g in per_sample.grads.values()):
            # f was finite (the estimators check it), so the estimator's own settings made them so
            raise GradestError(
                f"{est.name}: its per-sample gradient estimates are NaN or inf although f is finite; "
                "check the estimator's settings (a finite baseline, e.g. score-const=0, or score-loo)"
            )
        summaries.append(summarize(per_sample, exact))
    seconds = timings(resolved, f, dist_builder, params, num_samples, seed, device)
    summaries = [s._replace(seconds_per_sample=t / s.num_samples) for s, t in zip(summaries, seconds,
                                                                                     strict=True)]
    return Comparison(dict(config or {}), exact, note, summaries)


def _refuse_beyond_memory(dist_builder: Builder, params: Mapping[str, torch.Tensor],
                          num_samples: int, device: torch.device | None = None) -> None:
    """Refuse a run that would not fit in memory, before it starts (the kernel would kill it silently)."""
    on_gpu = device is not None and device.type == "cuda"
    available = available_gpu_memory(device) if on_gpu else available_memory()
    if available is None:
        return
    dist = build(dist_builder, {k: v.detach() for k, v in params.items()})
    numbers = sum(v.numel() for v in params.values()) + dist.batch_shape.numel() * dist.event_shape.numel()
    need = num_samples * (BYTES_PER_SAMPLE_BASE + BYTES_PER_SAMPLE_PER_NUMBER * numbers)
    if need > available:
        # half of what would fill memory: the estimate is rough and the machine runs other things
        fits = max(2, available // (2 * (BYTES_PER_SAMPLE_BASE + BYTES_PER_SAMPLE_PER_NUMBER * numbers)))
        where = f" on {device}" if on_gpu else ""
        raise GradestError(
            f"--samples {num_samples} needs about {need / 2**30:.1f} GiB, more than the "
            f"{available / 2**30:.1f} GiB available{where}; use at most about {fits} samples (the standard "
            "error falls like 1/√N, so 4× fewer samples only doubles it)"
        )
