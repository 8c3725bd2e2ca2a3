"""`gradest discrete`: the REBAR toy's numbers against its closed forms, the files, the CLI contract."""

import itertools
import json
import math

import pytest
import torch

from conftest import Z_TOL
from gradest.cli import main
from gradest.lab.discrete import DiscreteConfig, exact_gradient, run_discrete, score_variance

UNBIASED = ("score", "score-loo", "mvd", "arm", "disarm", "rebar", "relax")


def enumerated(theta, t, bits):
    """∂L/∂θ_1 and Var of the score function's ĝ_1, summing over the 2^D points."""
    logits = torch.full((bits,), theta, dtype=torch.float64, requires_grad=True)
    points = torch.tensor(list(itertools.product([0.0, 1.0], repeat=bits)), dtype=torch.float64)
    p = torch.sigmoid(logits)
    weights = (points * p + (1 - points) * (1 - p)).prod(1)
    f = ((points - t) ** 2).sum(1)
    (grad,) = torch.autograd.grad((weights * f).sum(), logits)
    g1 = f * (points[:, 0] - p[0].detach())
    variance = float((weights.detach() * g1**2).sum() - grad[0] ** 2)
    return float(grad[0]), variance


@pytest.mark.parametrize(("theta", "t", "bits"), [(0.0, 0.499, 1), (0.7, 0.45, 3), (-1.2, 0.3, 5)])
def test_closed_forms_against_enumeration(theta, t, bits):
    grad, variance = enumerated(theta, t, bits)
    assert math.isclose(exact_gradient(theta, t), grad, rel_tol=1e-12)
    assert math.isclose(score_variance(theta, t, bits), variance, rel_tol=1e-10)


@pytest.fixture(scope="module")
def result():
    config = DiscreteConfig(targets=(0.45, 0.499), bits=(1, 4, 40),
                            estimators=(*UNBIASED, "gumbel-softmax=0.5", "straight-through"), samples=2000,
                            sign_samples=(1, 8), relax_steps=10, seed=3)
    return run_discrete(config)


def test_unbiased_estimators_are_within_their_standard_errors_of_the_closed_form(result):
    rows = [r for r in result.rows if not r.biased]
    assert {r.estimator for r in rows} == set(UNBIASED)
    for r in rows:
        assert r.exact == exact_gradient(0.0, r.t)
        assert abs(r.bias) < Z_TOL * r.bias_stderr or r.bias == 0.0, r


def test_the_score_functions_variance_matches_its_closed_form(result):
    for r in (r for r in result.rows if r.estimator == "score"):
        assert r.variance_exact == score_variance(0.0, r.t, r.bits)
        assert abs(r.variance - r.variance_exact) < Z_TOL * r.variance_stderr, r


def test_exact_estimators_and_a_measured_bias(result):
    for r in result.rows:
        if r.estimator == "mvd" or (r.estimator == "disarm" and r.bits == 1):
            # f separates over the bits: f(b with bᵢ = 1) − f(b with bᵢ = 0) is the same for every b
            assert r.bias == 0.0 and r.variance < 1e-20 and r.sign[-1].probability == 1.0, r
    relaxed = next(r for r in result.rows
                   if r.estimator == "gumbel-softmax=0.5" and r.t == 0.45 and r.bits == 40)
    assert relaxed.biased and relaxed.bias_z < -Z_TOL  # the Concrete relaxation at τ = 0.5 is biased here


def test_sign_probabilities(result):
    # one score-function estimate f(b)(b − p) at θ = 0 is positive iff b = 1: probability ½
    for r in (r for r in result.rows if r.estimator == "score" and r.bits == 1):
        one = r.sign[0]
        assert one.samples == 1 and abs(one.probability - 0.5) < Z_TOL * one.stderr
    # averaging more disarm estimates makes the sign surer (t = 0.45, D = 40)
    r = next(r for r in result.rows if r.estimator == "disarm" and r.t == 0.45 and r.bits == 40)
    spread = math.hypot(r.sign[0].stderr, r.sign[1].stderr)
    assert r.sign[1].probability > r.sign[0].probability + Z_TOL * spread


def test_the_command_writes_its_files(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["discrete", "--t", "0.45", "--bits", "1,3", "--estimator", "disarm", "--estimator",
                 "gumbel-softmax=0.5", "--estimator", "enumerate", "--samples", "80", "--sign-samples", "1,4",
                 "--out", str(out)])
    assert code == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == \
        ["discrete.png", "report.html", "results.json"]
    data = json.loads((out / "results.json").read_text())
    assert len(data["rows"]) == 6 and data["config"]["targets"] == [0.45]
    enum = [r for r in data["rows"] if r["estimator"] == "enumerate"]
    assert all(r["bias"] == 0.0 and r["variance"] == 0.0 for r in enum)
    page = (out / "report.html").read_text()
    assert "data:image/png;base64" in page and "gumbel-softmax=0.5" in page
    assert "wrote" in capsys.readouterr().out


def test_help_teaches():
    from typer.testing import CliRunner

    from gradest.cli import app

    text = CliRunner().invoke(app, ["discrete", "--help"], env={"COLUMNS": "200"}).output
    for needle in ("REBAR", "σ'(θᵢ)[(1 − t)² − t²]", "--bits", "--sign-samples", "Example"):
        assert needle in text, needle


@pytest.mark.parametrize(("extra", "needle"), [
    (["--t", "0.5"], "exactly 0"),
    (["--t", "x"], "--t takes numbers"),
    (["--bits", "0"], "--bits takes integers from 1 to 1000"),
    (["--bits", "2.5"], "whole numbers"),
    (["--estimator", "pathwise"], "--estimator pathwise: pathwise needs a reparameterizable family"),
    (["--estimator", "unordered-set"], "not Bernoulli"),
    (["--estimator", "nope"], "unknown estimator 'nope'"),
    (["--estimator", "enumerate", "--bits", "20"], "up to 12"),
    (["--sign-samples", "600", "--samples", "1000"], "--sign-samples takes sample counts from 1 to"),
    (["--samples", "10"], "--samples"),
    (["--theta", "50"], "--theta is a logit"),
])
def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys, extra, needle):
    out = tmp_path / "out"
    code = main(["discrete", *extra, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert needle in lines[0], lines[0]
    assert not out.exists()


@pytest.mark.parametrize("seed", [0, 1])
def test_a_score_bias_of_exactly_zero_is_the_draw_and_the_report_says_why(seed):
    """One bit at p = ½: the score estimates' mean is exact iff the draw has n₁ = N/2 ones (seed 0 does, 500
    of 1000; seed 1 has 487). Bias 0, z = 0 then, and the findings derive it; otherwise a bias and no such
    sentence."""
    from gradest.estimators import get_estimator
    from gradest.lab.discrete import block_sizes, measure_cell, summary_sentences
    from gradest.rng import make_generator

    config = DiscreteConfig(targets=(0.499,), bits=(1,), estimators=("score",), samples=1000)
    row = measure_cell(config, 0.499, 1, "score", seed)
    gen, ones = make_generator(seed), 0
    for size in block_sizes(config.samples):  # the same draws again: ĝ > 0 exactly where b = 1
        g = get_estimator("score").per_sample(lambda b: ((b - 0.499) ** 2).sum(-1),
                                              torch.distributions.Bernoulli,
                                              {"logits": torch.zeros(1, dtype=torch.float64)}, size, gen)
        ones += int((g.grads["logits"] > 0).sum())
    said = [s for s in summary_sentences([row], config) if "n₁ = Np" in s]
    if ones == 500:
        assert row.bias == 0.0 and row.bias_z == 0.0 and row.variance > 0.01
        assert len(said) == 1 and "500 of N = 1000" in said[0] and "2.5%" in said[0]
    else:
        assert row.bias != 0.0 and said == []
    assert (ones == 500) == (seed == 0)


def test_the_figure_has_one_target_per_image_and_tells_every_estimator_apart():
    from gradest.lab.plots import discrete_figure

    estimators = ("score", "score-loo", "mvd", "arm", "disarm", "rebar", "gumbel-softmax=0.5",
                  "gumbel-st=0.5", "straight-through", "relax")
    config = DiscreteConfig(targets=(0.499, 0.45), bits=(1, 2), estimators=estimators, samples=80,
                            sign_samples=(1, 4), relax_steps=2)
    rows = run_discrete(config).rows
    fig = discrete_figure(rows, 0.45)
    assert len(fig.axes) == 4 and fig._suptitle.get_text().startswith("t = 0.45")
    legend = fig.axes[3].get_legend()
    assert [t.get_text().split(" ")[0] for t in legend.get_texts()] == list(estimators)
    styles = {(line.get_color(), line.get_marker()) for line in fig.axes[0].get_lines()
              if line.get_marker() not in ("None", "_")}  # not the error bars' caps
    assert len(styles) == len(estimators)
