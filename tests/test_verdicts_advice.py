"""advise/select and compare: intervals, near ties, and timings free of warm-up and order effects.

Timing values on a shared machine cannot be asserted; the mechanism can: every estimator is warmed
up before any timed call, timed calls run in rounds of rotated order, and the reported time is the
median of the timed calls.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

import gradest
from gradest import compare as compare_module
from gradest.compare import compare
from gradest.estimators import Pathwise
from gradest.lab import selection
from gradest.lab.selection import select

PARAMS = {"loc": torch.tensor(1.0, dtype=torch.float64), "scale": torch.tensor(1.0, dtype=torch.float64)}
CALLS: list[tuple[str, int, float]] = []


class Logged(Pathwise):
    """Pathwise under another name, logging (name, samples, seconds) of every call (copies too)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def per_sample(self, f, dist_builder, params, num_samples, generator):
        out = super().per_sample(f, dist_builder, params, num_samples, generator)
        CALLS.append((self.name, num_samples, out.seconds))
        return out


@pytest.fixture
def calls():
    CALLS.clear()
    yield CALLS
    CALLS.clear()


def test_recommendation_is_the_same_for_seeds_0_to_3_where_the_intervals_separate():
    # (x − 10)²: the score function's variance grows like k⁴, the pathwise one's does not, so the
    # efficiencies differ by orders of magnitude, far beyond any timing noise
    f = gradest.named_cost("square", 10.0)
    for seed in range(4):
        result = select(f, Normal, PARAMS, ["score", "pathwise"], num_samples=2000, seed=seed)
        assert result.recommendation == "pathwise", seed
        assert result.near_tie == ()
        top, other = result.candidates[:2]
        assert top.efficiency_interval[1] < other.efficiency_interval[0]
        for c in (top, other):
            assert c.variance_interval[0] < c.variance < c.variance_interval[1]
            assert c.seconds_interval[0] <= c.seconds_per_sample <= c.seconds_interval[1]
            assert c.efficiency_interval[0] < c.efficiency < c.efficiency_interval[1]
        assert "the intervals separate" in result.reason and "near tie" not in result.reason


def test_indistinguishable_candidates_are_a_near_tie_named_in_the_reason():
    # the same estimator under two names: the pilots cannot tell them apart
    f = gradest.named_cost("cos", 1.0)
    result = select(f, Normal, PARAMS, [Logged("twin-a"), Logged("twin-b"), "score"], num_samples=2000)
    assert result.recommendation in ("twin-a", "twin-b")
    other = "twin-b" if result.recommendation == "twin-a" else "twin-a"
    assert other in result.near_tie and f"a near tie with {other}" in result.reason
    assert result.to_dict()["near_tie"] == list(result.near_tie)
    assert isinstance(result.to_dict()["candidates"][0]["efficiency_interval"], list)


def test_select_warms_up_every_candidate_then_times_in_rotated_rounds(calls):
    f = gradest.named_cost("cos", 1.0)
    names = ["a", "b", "c"]
    result = select(f, Normal, PARAMS, [Logged(n) for n in names], num_samples=200)
    order = [name for name, _, _ in calls]
    warm, timed = order[:3], order[3:]
    assert warm == names  # every candidate's untimed call before any timed one
    rounds = [timed[3 * r: 3 * r + 3] for r in range(selection.ROUNDS)]
    assert rounds == [names[r % 3:] + names[: r % 3] for r in range(selection.ROUNDS)]
    # the time is the median over the timed batches
    for c in result.candidates:
        seconds = sorted(t / n for name, n, t in calls[3:] if name == c.estimator)
        assert len(seconds) == selection.ROUNDS
        assert c.seconds_per_sample == pytest.approx(float(torch.tensor(seconds).median()))


def test_compare_times_after_all_warm_ups_in_rotated_rounds_and_reports_the_median(calls):
    f = gradest.named_cost("cos", 1.0)
    names = ["a", "b", "c"]
    result = compare(f, Normal, PARAMS, [Logged(n) for n in names], 1000, seed=0)
    order = [name for name, _, _ in calls]
    assert order[:3] == names and all(n == compare_module.WARM_UP_SAMPLES for _, n, _ in calls[:3])
    assert order[3:6] == names  # the statistics runs, untimed
    timed = calls[6:]
    assert [name for name, _, _ in timed] == [names[j] for j in compare_module.timing_order(3)]
    for s in result.summaries:
        seconds = [t for name, _, t in timed if name == s.estimator]
        assert len(seconds) == compare_module.TIMING_ROUNDS
        assert s.seconds_per_sample == pytest.approx(float(torch.tensor(seconds).median()) / 1000)


def test_timing_order_rotates_so_no_estimator_is_always_first():
    order = compare_module.timing_order(4, rounds=4)
    firsts = [order[4 * r] for r in range(4)]
    assert sorted(firsts) == [0, 1, 2, 3]
