"""The variance sweep: CSV contents against exact values, resuming, figure and report, findings."""

import csv
import dataclasses
import math

import numpy as np
import pytest

import gradest.lab.sweep as sw
from gradest.errors import GradestError
from gradest.lab.findings import AGREES, DISAGREES, UNTESTED, sweep_findings

CONFIG = sw.SweepConfig(costs=("square", "cos"), ks=(0.5, 3.0), estimators=("pathwise", "score", "mvd"),
                        samples=4000, seed=0)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    return out, sw.run_sweep(CONFIG, out, curve_points=8)


def test_csv_has_every_cell_and_the_columns(swept):
    out, _ = swept
    with (out / "sweep.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * 2 * 3 * 2
    for col in ("cost", "k", "param", "estimator", "mean", "variance", "variance_exact", "stderr",
                "exact_grad", "seconds_per_sample"):
        assert col in rows[0]
    assert {r["param"] for r in rows} == {"loc", "scale"}
    assert (out / "sweep.png").stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert "data:image/png;base64" in html and "Findings" in html


def test_rows_agree_with_exact_gradients_and_variances(swept):
    """Means within 5 standard errors of the exact gradient; variances within 5 of their own."""
    _, result = swept
    for r in result.rows:
        assert abs(r.z) < 5, r
        assert abs(r.variance - r.variance_exact) < 5 * r.variance_stderr, r
        assert r.seconds_per_sample > 0


def test_resume_measures_nothing_twice_and_reproduces_rows(swept, tmp_path, monkeypatch):
    out, result = swept
    # Drop the last cell, as an interrupted run would leave the file.
    lines = (out / "sweep.csv").read_text().splitlines()
    (tmp_path / "sweep.csv").write_text("\n".join(lines[:-2]) + "\n")
    calls = []
    original = sw.measure_cell

    def counting(config, cost, k, est):
        calls.append((cost, k, est))
        return original(config, cost, k, est)

    monkeypatch.setattr(sw, "measure_cell", counting)
    rows = sw.measure(CONFIG, tmp_path)
    assert calls == [("cos", 3.0, "mvd")]
    # Same seed per cell: resumed rows equal a single run's (all but the timing).
    untimed = lambda rs: [dataclasses.replace(r, seconds_per_sample=0.0) for r in rs]  # noqa: E731
    assert untimed(rows) == untimed(result.rows)
    calls.clear()
    sw.measure(CONFIG, tmp_path)
    assert calls == []


def test_bad_config_is_refused():
    with pytest.raises(GradestError, match="costs"):
        sw.SweepConfig(costs=("abs",))
    with pytest.raises(GradestError, match="unknown estimator"):
        sw.SweepConfig(estimators=("nope",))


def _row(cost, param, est, k, variance):
    return sw.SweepRow(cost, k, param, est, 1.0, 1.0, 10, 0, 0.0, 0.0, 0.0, 1.0, variance, 0.1,
                       math.nan, math.nan, 1e-7)


def test_findings_follow_the_numbers(swept):
    _, result = swept
    verdicts = {f.claim: f.verdict for f in sweep_findings(result.rows)}
    pathwise_cos = next(c for c in verdicts if c.startswith("For cos(kx)"))
    assert verdicts[pathwise_cos] == AGREES
    # Swap the roles of score and pathwise: the same claims must now fail.
    swapped = [r.__class__(**{**r.__dict__, "estimator": {"score": "pathwise", "pathwise": "score"}.get(
        r.estimator, r.estimator)}) for r in result.rows]
    flipped = {f.claim: f.verdict for f in sweep_findings(swapped)}
    assert flipped[pathwise_cos] == DISAGREES
    coupling = next(c for c in verdicts if c.startswith("Coupling"))
    assert verdicts[coupling] == UNTESTED  # mvd-uncoupled not in this sweep
    rows = [_row("cos", p, e, k, v) for p in ("loc", "scale") for k in (1.0, 2.0)
            for e, v in (("mvd", 2.0), ("mvd-uncoupled", 1.0))]
    assert {f.claim: f.verdict for f in sweep_findings(rows)}[coupling] == DISAGREES


def test_sample_counts_a_sampler_cannot_split_are_refused_before_any_work():
    with pytest.raises(GradestError, match=r"pathwise\+antithetic with --samples 11.*use 12"):
        sw.SweepConfig(estimators=("pathwise", "pathwise+antithetic"), samples=11)
    with pytest.raises(GradestError, match="multiple of 10"):
        sw.SweepConfig(estimators=("mvd+qmc",), samples=15)


def test_repeated_costs_ks_and_estimators_are_one_cell():
    config = sw.SweepConfig(costs=("cos", "cos"), ks=(1.0, 1.0, 2.0), estimators=("mvd", "mvd"), samples=10)
    assert config.cells() == [("cos", 1.0, "mvd"), ("cos", 2.0, "mvd")]


def test_negative_k_for_exp_and_non_finite_values_are_refused():
    with pytest.raises(GradestError, match="k ≥ 0"):
        sw.SweepConfig(costs=("exp",), ks=(-1.0, 1.0))
    sw.SweepConfig(costs=("cos", "square"), ks=(-1.0, 1.0))  # fine: bounded or polynomial costs
    with pytest.raises(GradestError, match="finite"):
        sw.SweepConfig(ks=(math.inf,))


@pytest.mark.parametrize(("content", "message"), [
    (b"a,b\n1,2\n", "not a gradest sweep CSV"),
    (b"\xff\xfe\x00binary", "not a sweep CSV"),
    (b"cost,k\n", "not a gradest sweep CSV"),
])
def test_a_foreign_sweep_csv_is_refused_with_a_clear_message(tmp_path, content, message):
    (tmp_path / "sweep.csv").write_bytes(content)
    with pytest.raises(GradestError, match=message):
        sw.measure(CONFIG, tmp_path)


def test_out_that_is_a_file_or_a_csv_that_is_a_folder_is_refused(tmp_path):
    target = tmp_path / "a-file"
    target.write_text("x")
    with pytest.raises(GradestError, match="is a file, not a folder"):
        sw.measure(CONFIG, target)
    with pytest.raises(GradestError, match="is a file, not a folder"):
        sw.measure(CONFIG, target / "deeper")
    (tmp_path / "out" / "sweep.csv").mkdir(parents=True)
    with pytest.raises(GradestError, match="not a file"):
        sw.measure(CONFIG, tmp_path / "out")


def test_k_zero_alone_and_negative_k_draw_a_figure(tmp_path):
    # k = 0 makes exp and cos constant (all variances 0: no log axis possible); k < 0 no log k axis
    config = sw.SweepConfig(costs=("cos", "square"), ks=(-2.0, 0.0), estimators=("pathwise", "mvd"),
                            samples=200)
    result = sw.run_sweep(config, tmp_path, curve_points=5)
    assert result.figure.stat().st_size > 10_000
    zero = [r for r in result.rows if r.cost == "cos" and r.k == 0.0]
    assert zero and all(r.variance == 0.0 and r.variance_exact == 0.0 for r in zero)


def test_exact_control_variates_are_not_reported_as_biased(tmp_path):
    # h = f for (x − k)² and order 2: the estimate is exact up to rounding, whose spread (~1e-30)
    # must not turn a rounding difference of the mean into a large z or the variance into a large
    # gap to its exact 0 (σ = 0.2, μ = −2 gave z ≈ 100 before the rounding resolution counted).
    config = sw.SweepConfig(costs=("square",), ks=(1.0, 50.0), loc=-2.0, scale=0.2,
                            estimators=("score-delta", "mvd-delta"), samples=2000)
    for r in sw.measure(config, tmp_path):
        assert abs(r.z) < 5, r
        assert r.variance_exact == 0.0
        assert abs(r.variance - r.variance_exact) <= 5 * r.variance_stderr, r


def test_findings_order_k_by_magnitude():
    # cos(−10x) = cos(10x): the high frequency is k = −10, not the small k = 0.5
    rows = [_row("cos", p, "pathwise", -10.0, 50.0) for p in ("loc", "scale")]
    rows += [_row("cos", p, "pathwise", 0.5, 0.2) for p in ("loc", "scale")]
    rows += [_row("cos", p, "score", k, 1.0) for p in ("loc", "scale") for k in (-10.0, 0.5)]
    finding = next(f for f in sweep_findings(rows) if f.claim.startswith("For cos(kx)"))
    assert finding.verdict == AGREES and "k=-10" in finding.evidence
    smooth = next(f for f in sweep_findings(rows) if f.claim.startswith("For slowly varying"))
    assert smooth.verdict == AGREES and "k=0.5" in smooth.evidence


def test_fine_grid_with_zero_is_log_spaced_beyond_the_smallest_positive_k():
    grid = sw.fine_grid([0.0, 0.1, 50.0], points=20)
    assert grid[0] == 0.0 and 50.0 in grid and 0.1 in grid
    above = grid[grid >= 0.1]
    ratios = above[1:] / above[:-1]
    assert np.allclose(ratios[ratios > 1.0 + 1e-12], ratios.max(), rtol=1e-6)  # geometric steps


def test_a_truncated_row_is_refused_with_its_line(tmp_path, swept):
    out, _ = swept
    text = (out / "sweep.csv").read_text()
    (tmp_path / "sweep.csv").write_text(text[: len(text) // 2])  # cut inside a row
    line = len(text[: len(text) // 2].splitlines())
    with pytest.raises(GradestError, match=f"line {line} is not a complete sweep row"):
        sw.measure(CONFIG, tmp_path)


def test_the_highest_variance_claim_compares_iid_estimators_only():
    rows = [_row("square", p, e, 10.0, v) for p in ("loc", "scale")
            for e, v in (("score", 100.0), ("pathwise", 4.0), ("score+antithetic", 200.0))]
    finding = next(f for f in sweep_findings(rows) if f.claim.startswith("Without a control variate"))
    assert finding.verdict == AGREES, finding.evidence


def test_the_control_variate_claim_uses_a_control_variate_not_a_fixed_baseline():
    rows = [_row("square", p, e, k, v) for p in ("loc", "scale") for k in (1.0, 5.0)
            for e, v in (("score", 100.0), ("score-const=1", 500.0), ("score-delta", 0.0))]
    finding = next(f for f in sweep_findings(rows) if f.claim.startswith("A control variate"))
    assert finding.verdict == AGREES and "score-delta" in finding.evidence, finding.evidence


def test_an_exact_control_variate_is_drawn_on_the_axis_floor(tmp_path):
    """score-delta on (x − k)² has variance exactly 0: a log axis cannot draw it, so it is marked ▼ on the
    floor with its name and "exactly 0", not left as a legend entry with nothing drawn."""
    from gradest.lab.plots import sweep_figure

    config = sw.SweepConfig(costs=("square",), ks=(0.5, 2.0), estimators=("pathwise", "score-delta"),
                            samples=200)
    rows = sw.measure(config, tmp_path)
    fig = sweep_figure(rows, {}, config.costs, config.estimators)
    for ax in fig.axes:
        floor = ax.get_ylim()[0]
        marks = [line for line in ax.get_lines() if line.get_marker() == "v"]
        assert len(marks) == 1 and np.allclose(marks[0].get_ydata(), floor), ax.get_title()
        assert sorted(marks[0].get_xdata()) == [0.5, 2.0]
        assert [t.get_text() for t in ax.texts] == ["score-delta: exactly 0"]
