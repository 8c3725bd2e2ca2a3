"""The sweep's claims are judged only on data that can support them; otherwise "not tested".

Each test here failed on the old findings: a sweep with k = 1 alone agreed with "at large k", one
without a high frequency judged "at high frequency", one without a small k judged "slowly varying",
and a share of 0 cells out of 0 was a disagreement.
"""

from __future__ import annotations

import math

import gradest.lab.sweep as sw
from gradest.lab.findings import AGREES, UNTESTED, sweep_findings


def _row(cost, param, est, k, variance, loc=1.0, scale=1.0):
    return sw.SweepRow(cost, k, param, est, loc, scale, 10, 0, 0.0, 0.0, 0.0, 1.0, variance, 0.1,
                       math.nan, math.nan, 1e-7)


def _verdict(rows, start):
    return next(f for f in sweep_findings(rows) if f.claim.startswith(start))


def test_a_real_sweep_with_only_k_1_does_not_test_the_large_k_claim(tmp_path):
    config = sw.SweepConfig(costs=("square", "cos"), ks=(1.0,), estimators=("pathwise", "score"), samples=200)
    rows = sw.measure(config, tmp_path)
    large = _verdict(rows, "Without a control variate")
    assert large.verdict == UNTESTED and "large k" in large.evidence and "1" in large.evidence
    assert _verdict(rows, "For cos(kx)").verdict == UNTESTED  # one k: neither growth nor high frequency
    assert _verdict(rows, "The pathwise variance for μ").verdict == UNTESTED
    # k = 1 with σ = 1 is slowly varying: that claim has its data
    assert _verdict(rows, "For slowly varying").verdict != UNTESTED


def test_large_k_is_measured_from_the_mean_in_units_of_the_spread():
    rows = [_row("square", p, e, 10.0, v) for p in ("loc", "scale")
            for e, v in (("score", 100.0), ("pathwise", 4.0))]
    assert _verdict(rows, "Without a control variate").verdict == AGREES  # |10 − 1| ≥ 3σ
    near = [r.__class__(**{**r.__dict__, "loc": 9.0}) for r in rows]  # k = 10 is 1σ from μ = 9
    assert _verdict(near, "Without a control variate").verdict == UNTESTED
    wide = [r.__class__(**{**r.__dict__, "scale": 5.0}) for r in rows]  # 9 < 3σ = 15
    assert _verdict(wide, "Without a control variate").verdict == UNTESTED


def test_high_frequency_and_slowly_varying_need_their_k():
    # cos at k = 0.5 and 1 (σ = 1): two |k|, but no high frequency
    rows = [_row("cos", p, e, k, v) for p in ("loc", "scale") for k in (0.5, 1.0)
            for e, v in (("pathwise", 0.1 * k), ("score", 1.0))]
    assert _verdict(rows, "For cos(kx)").verdict == UNTESTED
    assert "high frequency" in _verdict(rows, "For cos(kx)").evidence
    # only large k: nothing slowly varying to judge
    rows = [_row("cos", p, e, k, v) for p in ("loc", "scale") for k in (5.0, 10.0)
            for e, v in (("pathwise", k), ("score", 1.0))]
    assert _verdict(rows, "For cos(kx)").verdict == AGREES
    slow = _verdict(rows, "For slowly varying")
    assert slow.verdict == UNTESTED and "slowly varying" in slow.evidence


def test_a_share_of_no_cells_is_not_a_disagreement():
    # mvd and mvd-uncoupled both present, but never in the same cell
    rows = [_row("cos", p, "mvd", 1.0, 1.0) for p in ("loc", "scale")]
    rows += [_row("cos", p, "mvd-uncoupled", 2.0, 2.0) for p in ("loc", "scale")]
    coupling = _verdict(rows, "Coupling")
    assert coupling.verdict == UNTESTED and "same cell" in coupling.evidence


def test_claims_without_a_common_cell_are_not_tested():
    """pathwise and score measured, but never on the same (cost, k): no evidence either way, no crash."""
    rows = [_row("square", p, "pathwise", 0.5, 4.0) for p in ("loc", "scale")]
    rows += [_row("cos", p, "score", 0.5, 1.0) for p in ("loc", "scale")]
    slow = _verdict(rows, "For slowly varying")
    assert slow.verdict == UNTESTED and "no cell holds both" in slow.evidence
    # at large k the square cost's variance is measured for pathwise and mvd but not for score
    rows = [_row("square", p, e, 10.0, v) for p in ("loc", "scale")
            for e, v in (("pathwise", 4.0), ("mvd", 9.0))]
    rows += [_row("cos", p, "score", 10.0, 1.0) for p in ("loc", "scale")]
    large = _verdict(rows, "Without a control variate")
    assert large.verdict == UNTESTED and "k=10" in large.evidence
