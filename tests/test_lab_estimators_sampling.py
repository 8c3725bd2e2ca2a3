"""Antithetic and quasi-Monte Carlo sampling: unbiased for every estimator, and a reported standard
error that matches the spread of the mean over independent seeds."""

import pytest
import torch
from torch.distributions import Bernoulli, Exponential, Normal

from conftest import Z_TOL, t
from gradest import GradestError, exact_grad, get_estimator, make_generator, named_cost
from gradest.diagnostics import mean_stderr, summarize
from gradest.estimators import LeaveOneOut, available_samplers
from test_core_support import BASE_SPECS, leaves

PARAMS = {"loc": t(1.0, -0.5), "scale": t(1.0, 2.0)}
#: the registry's estimators that apply to a Normal, whatever sampler suffix follows: a newly
#: registered one joins the matrix below without an edit here
ESTIMATORS = [s for s in BASE_SPECS if get_estimator(s).applicable(Normal(**leaves(PARAMS))) is None
              and not get_estimator(s).capabilities.biased]
SAMPLERS = [*available_samplers(), "qmc=4"]


def test_the_matrix_is_the_registry_s():
    # the score, pathwise and measure-valued kinds and their control variates are all in it
    names = {s.partition("=")[0] for s in ESTIMATORS}
    assert {"pathwise", "score", "score-loo", "score-ema", "mvd", "mvd-uncoupled", "score-delta",
            "pathwise-delta", "mvd-delta", "score-optb"} <= names
    assert {"antithetic", "qmc"} <= set(SAMPLERS)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_unbiased_against_exact(estimator, sampler):
    f = named_cost("cos", 1.0)
    spec = f"{estimator}+{sampler}"
    per_sample = get_estimator(spec).per_sample(f, Normal, PARAMS, 20_000, make_generator(1))
    assert per_sample.groups is not None and per_sample.estimator == spec
    for name, stats in summarize(per_sample, exact_grad(f, Normal, PARAMS)).params.items():
        assert (stats.z.abs() <= Z_TOL).all(), f"{spec} {name}: z = {stats.z.tolist()}"


@pytest.mark.parametrize("estimator", ["pathwise", "score", "mvd", "mvd-uncoupled"])
@pytest.mark.parametrize("sampler", ["antithetic", "qmc"])
def test_unbiased_for_a_family_through_its_inverse_cdf(estimator, sampler):
    # f = Σ x²: ∂/∂λ E = −4/λ³ under Exponential(λ)
    rate = t(0.7, 2.0)
    per_sample = get_estimator(f"{estimator}+{sampler}").per_sample(
        lambda x: (x**2).sum(1), Exponential, {"rate": rate}, 40_000, make_generator(2)
    )
    z = summarize(per_sample, {"rate": -4.0 / rate**3}).params["rate"].z
    assert (z.abs() <= Z_TOL).all(), z


@pytest.mark.parametrize(
    ("spec", "cost", "param"),
    [
        # ĝ_σ = 2σε² at μ = k: the two halves of a pair are identical, so an i.i.d. formula would
        # report √2 too small a standard error
        ("pathwise+antithetic", "square", "scale"),
        # Sobol points integrate this smooth ĝ far better than i.i.d. points
        ("score+qmc=4", "cos", "loc"),
        ("mvd+qmc=4", "exp", "loc"),
    ],
)
def test_reported_stderr_matches_the_spread_over_seeds(spec, cost, param):
    f = named_cost(cost, 1.0)
    params = {"loc": t(1.0), "scale": t(1.0)}
    seeds, n = 400, 80
    runs = [get_estimator(spec).per_sample(f, Normal, params, n, make_generator(s)) for s in range(seeds)]
    means = torch.stack([r.mean()[param] for r in runs])
    reported = torch.stack([r.stderr()[param] for r in runs]) ** 2  # each unbiased for Var(mean)
    naive = torch.stack([r.grads[param].var() / n for r in runs])  # the i.i.d. formula
    spread = means.var()
    # standard errors of the two variance estimates (fourth moment for the sample variance)
    centred4 = ((means - means.mean()) ** 4).mean()
    se_spread = ((centred4 - spread**2 * (seeds - 3) / (seeds - 1)) / seeds).sqrt()
    se_reported = reported.std() / seeds**0.5
    z = (reported.mean() - spread) / (se_spread**2 + se_reported**2).sqrt()
    assert abs(z) <= Z_TOL, (reported.mean().item(), spread.item())
    # the test discriminates: the i.i.d. formula is off by more than the tolerance
    z_naive = (naive.mean() - spread) / (se_spread**2 + (naive.std() / seeds**0.5) ** 2).sqrt()
    assert abs(z_naive) > Z_TOL


def test_groups_label_pairs_and_randomizations():
    f = named_cost("linear", 1.0)
    params = {"loc": t(0.5), "scale": t(2.0)}
    pairs = get_estimator("pathwise+antithetic").per_sample(f, Normal, params, 8, make_generator(3))
    torch.testing.assert_close(pairs.values[0::2] + pairs.values[1::2], torch.full((4,), 1.0))
    assert pairs.groups.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    qmc = get_estimator("score+qmc=4").per_sample(f, Normal, params, 12, make_generator(3))
    assert qmc.groups.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    iid = get_estimator("score").per_sample(f, Normal, params, 12, make_generator(3))
    assert iid.groups is None
    torch.testing.assert_close(mean_stderr(iid.grads["loc"]), iid.grads["loc"].std() / 12**0.5)


def test_same_seed_same_numbers_and_the_global_rng_untouched():
    f = named_cost("cos", 1.0)
    state = torch.get_rng_state()
    for spec in ("mvd+qmc", "pathwise+antithetic", "score-delta+qmc"):
        a = get_estimator(spec).per_sample(f, Normal, PARAMS, 40, make_generator(9))
        b = get_estimator(spec).per_sample(f, Normal, PARAMS, 40, make_generator(9))
        c = get_estimator(spec).per_sample(f, Normal, PARAMS, 40, make_generator(10))
        assert torch.equal(a.grads["loc"], b.grads["loc"])
        assert not torch.equal(a.grads["loc"], c.grads["loc"])
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize(
    ("spec", "n", "builder", "params", "message"),
    [
        ("pathwise+antithetic", 7, Normal, PARAMS, "must be even, got 7; use 8"),
        ("score+qmc", 25, Normal, PARAMS, "multiple of 10, got 25; use 30"),
        ("score+qmc", 10, Bernoulli, {"probs": t(0.5)}, "Bernoulli has none.*drop the '\\+qmc'"),
        ("score-loo+antithetic", 2, Normal, PARAMS, "at least 2 independent groups"),
    ],
)
def test_sampler_errors_name_the_fix(spec, n, builder, params, message):
    with pytest.raises(GradestError, match=message):
        get_estimator(spec).per_sample(named_cost("cos", 1.0), builder, params, n, make_generator(0))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("mvd+", "exactly one sampler"),
        ("mvd+qmc+antithetic", "exactly one sampler"),
        ("mvd+sobol", "unknown sampler 'sobol'; choose one of: antithetic, qmc"),
        ("mvd+qmc=1", "at least 2 independent randomizations"),
        ("mvd+qmc=x", "must be an integer"),
        ("mvd+antithetic=2", "takes no argument"),
        ("mvd=2", "takes no argument"),
    ],
)
def test_spec_grammar_errors(spec, message):
    with pytest.raises(GradestError, match=message):
        get_estimator(spec)


def test_leave_one_out_baseline_leaves_the_whole_group_out():
    # an antithetic partner depends on x_n, so a baseline that used it would bias the estimate
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    groups = torch.tensor([0, 0, 1, 1, 2, 2])
    b = LeaveOneOut()(values, groups)
    torch.testing.assert_close(b, torch.tensor([4.5, 4.5, 3.5, 3.5, 2.5, 2.5]))
    torch.testing.assert_close(LeaveOneOut()(values), (values.sum() - values) / 5)
