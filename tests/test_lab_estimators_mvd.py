"""Measure-valued derivatives: unbiased against exact gradients for every family, f's derivative
never used, the paper's coupling, and both views of the estimator agreeing."""

import cmath

import pytest
import torch
from torch.distributions import Bernoulli, Exponential, Gamma, Independent, Normal, Poisson

from conftest import Z_TOL, t
from gradest import GradestError, exact_grad, get_estimator, make_generator, named_cost
from gradest.diagnostics import summarize

MVD = ["mvd", "mvd-uncoupled"]


def assert_unbiased(per_sample, exact):
    for name, stats in summarize(per_sample, exact).params.items():
        assert (stats.z.abs() <= Z_TOL).all(), f"{name}: z = {stats.z.tolist()}"


@pytest.mark.parametrize("estimator", MVD)
@pytest.mark.parametrize("cost", ["square", "exp", "cos"])
def test_normal_diagonal_matches_exact(estimator, cost):
    f = named_cost(cost, 1.0)
    params = {"loc": t(1.0, -0.5, 0.3), "scale": t(1.0, 2.0, 0.5)}
    per_sample = get_estimator(estimator).per_sample(f, Normal, params, 50_000, make_generator(3))
    assert per_sample.grads["loc"].shape == (50_000, 3)
    assert_unbiased(per_sample, exact_grad(f, Normal, params))


@pytest.mark.parametrize("estimator", MVD)
def test_chain_rule_to_the_builders_parameterization(estimator):
    # gradients w.r.t. log σ and a matrix-shaped μ reach the user through dist.loc / dist.scale
    f = named_cost("cos", 2.0)
    params = {"loc": t([[0.5, -1.0], [0.2, 0.0]]), "log_scale": t([[0.0, -0.5], [0.3, 0.1]])}

    def builder(loc, log_scale):
        return Independent(Normal(loc, log_scale.exp()), 2)

    per_sample = get_estimator(estimator).per_sample(f, builder, params, 50_000, make_generator(4))
    assert per_sample.grads["log_scale"].shape == (50_000, 2, 2)
    loc, log_scale = (params[k].clone().requires_grad_() for k in ("loc", "log_scale"))
    grads = torch.autograd.grad(f.expectation_normal(loc, log_scale.exp()), [loc, log_scale])
    exact = dict(zip(params, grads, strict=True))
    assert_unbiased(per_sample, exact)


@pytest.mark.parametrize("estimator", MVD)
def test_exponential_and_poisson_match_closed_forms(estimator):
    # f(x) = Σ x_d²: E = Σ 2/λ² under Exp(λ), Σ λ + λ² under Poisson(λ)
    def f(x):
        return (x**2).sum(1)

    rate = t(0.7, 2.0)
    est = get_estimator(estimator)
    exp = est.per_sample(f, Exponential, {"rate": rate}, 100_000, make_generator(5))
    assert_unbiased(exp, {"rate": -4.0 / rate**3})
    poisson = est.per_sample(f, Poisson, {"rate": rate}, 100_000, make_generator(6))
    assert_unbiased(poisson, {"rate": 1.0 + 2.0 * rate})


@pytest.mark.parametrize("estimator", MVD)
def test_bernoulli_matches_enumeration_through_logits(estimator):
    def f(x):
        return 3.0 * x[:, 0] * x[:, 1] + x[:, 1] - 2.0 * x[:, 2]

    def builder(logits):
        return Bernoulli(logits=logits)

    params = {"logits": t(0.3, -1.0, 2.0)}
    per_sample = get_estimator(estimator).per_sample(f, builder, params, 50_000, make_generator(7))
    assert_unbiased(per_sample, exact_grad(f, builder, params, method="enumeration"))


class _NoDerivative(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.cos(x).sum(1)

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("this estimator must not differentiate f")


@pytest.mark.parametrize("estimator", [*MVD, "mvd+qmc", "mvd-uncoupled+antithetic", "score-optb"])
def test_never_calls_the_derivative_of_f(estimator):
    params = {"loc": t(0.5, 1.0).requires_grad_(), "scale": t(1.0, 0.5).requires_grad_()}
    est = get_estimator(estimator)
    est.per_sample(_NoDerivative.apply, Normal, params, 100, make_generator(0))
    est.surrogate(_NoDerivative.apply, Normal, params, 100, make_generator(0)).backward()
    assert params["loc"].grad is not None


@pytest.mark.parametrize("estimator", [*MVD, "mvd+antithetic", "mvd-delta", "mvd+qmc"])
def test_surrogate_gradient_is_the_mean_of_the_per_sample_estimates(estimator):
    f = named_cost("exp", 0.5)
    params = {"loc": t(1.0, -0.5), "scale": t(1.0, 2.0)}
    per_sample = get_estimator(estimator).per_sample(f, Normal, params, 1000, make_generator(8))
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss = get_estimator(estimator).surrogate(f, Normal, leaves, 1000, make_generator(8))
    loss.backward()
    assert loss.item() == pytest.approx(per_sample.values.mean().item(), rel=1e-12)
    for k, g in per_sample.mean().items():
        torch.testing.assert_close(leaves[k].grad, g, rtol=1e-10, atol=1e-14)


def test_coupling_cancels_the_loc_estimate_of_a_symmetric_cost():
    # f = (x − 1)² at μ = 1: f(μ + σW) = f(μ − σW) for W′ = W, so the coupled estimate is exactly 0;
    # uncoupled draws keep the Rayleigh spread
    f = named_cost("square", 1.0)
    params = {"loc": t(1.0), "scale": t(1.5)}
    coupled = get_estimator("mvd").per_sample(f, Normal, params, 10_000, make_generator(1))
    uncoupled = get_estimator("mvd-uncoupled").per_sample(f, Normal, params, 10_000, make_generator(1))
    assert coupled.grads["loc"].abs().max() < 1e-12
    assert uncoupled.grads["loc"].var() > 1.0


def test_scale_not_in_params_costs_no_evaluations():
    calls = []

    def f(x):
        calls.append(x.shape[0])
        return x.sum(1)

    get_estimator("mvd").per_sample(f, lambda loc: Normal(loc, 1.0), {"loc": t(0.0, 1.0)}, 10,
                                    make_generator(0))
    # base point + 2·D loc perturbations, one batched call (and the contract probe's one repeat of
    # a cost's first evaluation: gradest.contract)
    assert calls == [10 * (1 + 2 * 2)] * 2


def test_unsupported_families_and_samplers_say_what_to_use():
    f = named_cost("square", 1.0)
    gamma = {"concentration": t(2.0), "rate": t(1.0)}
    with pytest.raises(GradestError, match=r"decompositions for Normal.*not Gamma.*'score'"):
        get_estimator("mvd").per_sample(f, Gamma, gamma, 10, make_generator(0))
    with pytest.raises(GradestError, match="Poisson"):
        get_estimator("mvd+qmc").per_sample(f, Poisson, {"rate": t(1.0)}, 10, make_generator(0))


@pytest.mark.parametrize("estimator", [*MVD, "mvd+antithetic"])
def test_extreme_rates_and_probabilities_match_closed_forms(estimator):
    # Σ cos(x_d): E = λ²/(λ² + 1) under Exp(λ), so ∂/∂λ = 2λ/(λ² + 1)²; under Poisson(λ)
    # E = Re exp(λ(e^i − 1)), so ∂/∂λ = Re[(e^i − 1) exp(λ(e^i − 1))]. Rates 0.05 and 50: mean 20 and
    # 0.02 (Exp), nearly always 0 and around 50 (Poisson); probabilities 0.01 and 0.999.
    def f(x):
        return torch.cos(x).reshape(x.shape[0], -1).sum(1)

    rate = t(0.05, 50.0)
    est = get_estimator(estimator)
    exp = est.per_sample(f, Exponential, {"rate": rate}, 100_000, make_generator(11))
    assert_unbiased(exp, {"rate": 2.0 * rate / (rate**2 + 1.0) ** 2})
    if "+" not in estimator:  # Poisson has no inverse CDF in torch: no sampler
        shift = cmath.exp(1j) - 1.0
        truth = t(*[(shift * cmath.exp(r * shift)).real for r in rate.tolist()])
        poisson = est.per_sample(f, Poisson, {"rate": rate}, 100_000, make_generator(12))
        assert_unbiased(poisson, {"rate": truth})
    probs = {"probs": t(0.01, 0.5, 0.999)}
    bern = est.per_sample(lambda x: torch.exp(x.sum(1)) + 3.0 * x[:, 0] * x[:, 1], Bernoulli, probs,
                          50_000, make_generator(13))
    assert_unbiased(bern, exact_grad(lambda x: torch.exp(x.sum(1)) + 3.0 * x[:, 0] * x[:, 1], Bernoulli,
                                     probs, method="enumeration"))


def test_large_parameters_are_evaluated_in_chunks_with_the_same_numbers(monkeypatch):
    import gradest.estimators.mvd as mvd

    calls = []

    def f(x):
        calls.append(x.shape[0])
        return torch.cos(x).sum(-1)

    params = {"loc": torch.linspace(-1, 1, 6, dtype=torch.float64), "scale": t(*[0.7] * 6)}

    def builder(loc, scale):
        return Independent(Normal(loc, scale), 1)

    whole = get_estimator("mvd").per_sample(f, builder, params, 40, make_generator(3))
    assert calls == [40 * (1 + 4 * 6)] * 2  # with the contract probe's repeat of the first evaluation
    calls.clear()
    # a budget of 5 samples' points: f(x₀) on all 40 samples, then the perturbations 5 samples at a time
    monkeypatch.setattr(mvd, "POINTS_BUDGET", 5 * (1 + 4 * 6) * 6 * 8)
    chunked = get_estimator("mvd").per_sample(f, builder, params, 40, make_generator(3))
    assert calls == [40, 40] + [5 * 4 * 6] * 8  # points of another shape: probed once more
    for k in params:
        assert torch.equal(whole.grads[k], chunked.grads[k])
    assert torch.equal(whole.values, chunked.values)
