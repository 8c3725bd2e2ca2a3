"""The variance sweep: CSV contents against exact values, resuming, figure and report, findings."""

import csv
import dataclasses
import math

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
