"""Control variates: unbiased against exact gradients, coefficients independent of their own
sample, and the variance drops where the math says it must."""

import pytest
import torch
from torch.distributions import Bernoulli, Exponential, Normal

from conftest import Z_TOL, t
from gradest import GradestError, exact_grad, get_estimator, make_generator, named_cost
from gradest.diagnostics import summarize
from gradest.estimators.control_variates import leave_group_out_coefficients

CONTROLLED = [
    "score-delta",
    "score-delta=1",
    "mvd-delta",
    "mvd-delta=1",
    "pathwise-delta",
    "score-optb",
    "score-delta+antithetic",
    "score-optb+qmc",
    "mvd-delta+qmc",
]
PARAMS = {"loc": t(1.0, -0.5), "scale": t(1.0, 2.0)}


@pytest.mark.parametrize("estimator", CONTROLLED)
@pytest.mark.parametrize("cost", ["exp", "cos"])
def test_unbiased_against_exact(estimator, cost):
    f = named_cost(cost, 1.0)
    per_sample = get_estimator(estimator).per_sample(f, Normal, PARAMS, 20_000, make_generator(2))
    for name, stats in summarize(per_sample, exact_grad(f, Normal, PARAMS)).params.items():
        assert (stats.z.abs() <= Z_TOL).all(), f"{name}: z = {stats.z.tolist()}"


@pytest.mark.parametrize("estimator", ["score-delta", "mvd-delta", "pathwise-delta"])
def test_second_order_delta_is_exact_on_a_quadratic_cost(estimator):
    # f = Σ (x − k)² equals its own second-order expansion: ĝ_f = ĝ_h on the same draws, the fitted
    # coefficient is 1, and every single-sample estimate is ∇θ E[h] = ∇θ E[f] up to rounding
    f = named_cost("square", 1.0)
    per_sample = get_estimator(estimator).per_sample(f, Normal, PARAMS, 2_000, make_generator(3))
    exact = exact_grad(f, Normal, PARAMS).grads
    for name, g in per_sample.grads.items():
        torch.testing.assert_close(g, exact[name].expand_as(g), rtol=1e-9, atol=1e-9)
    plain = get_estimator("score").per_sample(f, Normal, PARAMS, 2_000, make_generator(3))
    assert (plain.grads["scale"].var(0) > 1.0).all()


def test_optimal_baseline_beats_no_baseline_and_the_mean_baseline():
    # same seed, same draws: b_k = Cov(f s_k, s_k)/Var(s_k) minimises Var((f − b) s_k) per coordinate
    f = named_cost("square", 2.0)
    runs = {
        name: summarize(get_estimator(name).per_sample(f, Normal, PARAMS, 20_000, make_generator(4)))
        for name in ("score", "score-loo", "score-optb")
    }
    for param in PARAMS:
        optb = runs["score-optb"].params[param].variance
        assert (optb < runs["score"].params[param].variance).all()
        assert optb.sum() < runs["score-loo"].params[param].variance.sum()


def test_coefficients_never_see_their_own_sample_or_group():
    gen = make_generator(5)
    a, b = torch.randn(12, 3, generator=gen), torch.randn(12, 3, generator=gen)
    a[:, 1] += 2.0 * b[:, 1]
    for groups in (None, torch.arange(12) // 2, torch.arange(12) // 4):
        coeff = leave_group_out_coefficients(a, b, groups)
        labels = torch.arange(12) if groups is None else groups
        for n in range(12):
            keep = labels != labels[n]
            ak, bk = a[keep] - a[keep].mean(0), b[keep] - b[keep].mean(0)
            torch.testing.assert_close(coeff[n], (ak * bk).sum(0) / (bk * bk).sum(0))
        # a sample's own values leave its coefficient unchanged
        moved = a.clone()
        moved[0] += 100.0
        torch.testing.assert_close(leave_group_out_coefficients(moved, b, groups)[0], coeff[0])


@pytest.mark.parametrize("estimator", ["score-delta", "score-optb", "pathwise-delta"])
def test_surrogate_gradient_is_the_mean_of_the_per_sample_estimates(estimator):
    f = named_cost("cos", 1.5)
    per_sample = get_estimator(estimator).per_sample(f, Normal, PARAMS, 500, make_generator(6))
    leaves = {k: v.clone().requires_grad_() for k, v in PARAMS.items()}
    get_estimator(estimator).surrogate(f, Normal, leaves, 500, make_generator(6)).backward()
    for k, g in per_sample.mean().items():
        torch.testing.assert_close(leaves[k].grad, g, rtol=1e-10, atol=1e-14)


def test_delta_method_refuses_what_it_cannot_expand():
    with pytest.raises(GradestError, match=r"needs a Normal.*score-optb"):
        get_estimator("score-delta").per_sample(
            lambda x: x.sum(1), Exponential, {"rate": t(1.0)}, 10, make_generator(0)
        )
    with pytest.raises(GradestError, match=r"no gradient path.*score-optb"):
        get_estimator("score-delta").per_sample(
            lambda x: x.detach().sum(1), Normal, PARAMS, 10, make_generator(0)
        )
    with pytest.raises(GradestError, match="order must be 1 or 2"):
        get_estimator("score-delta=3")


def test_optimal_baseline_on_a_discrete_family_matches_enumeration():
    def f(x):
        return 3.0 * x[:, 0] * x[:, 1] + x[:, 1]

    params = {"probs": t(0.3, 0.8)}
    per_sample = get_estimator("score-optb").per_sample(f, Bernoulli, params, 20_000, make_generator(7))
    exact = exact_grad(f, Bernoulli, params, method="enumeration")
    z = summarize(per_sample, exact).params["probs"].z
    assert (z.abs() <= Z_TOL).all(), z


@pytest.mark.parametrize("estimator", ["score-delta", "mvd-delta", "pathwise-delta", "score-optb"])
def test_surrogate_through_a_builder_with_its_own_graph(estimator):
    # a log-scale builder: the control's and f's estimates share exp(log σ)'s saved tensors, which the
    # caller's backward needs once more
    def builder(loc, log_scale):
        return Normal(loc, log_scale.exp())

    params = {"loc": t(0.3, -0.2), "log_scale": t(0.1, -0.4)}
    f = named_cost("cos", 1.5)
    per = get_estimator(estimator).per_sample(f, builder, params, 500, make_generator(4))
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    get_estimator(estimator).surrogate(f, builder, leaves, 500, make_generator(4)).backward()
    for k, g in per.mean().items():
        torch.testing.assert_close(leaves[k].grad, g, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("coupled", [False, True], ids=["separable-diagonal-hessian", "cross-terms"])
def test_the_delta_control_is_the_taylor_expansion_whatever_the_hessian(coupled):
    # a diagonal Hessian takes the O(D) quadratic form, a dense one the O(D²) one: both are h exactly
    from torch.distributions import Independent

    from gradest.estimators.base import BoundCost
    from gradest.estimators.control_variates import DeltaMethod

    d = 5
    mu = torch.linspace(-1.0, 1.0, d, dtype=torch.float64)
    scale = torch.linspace(0.5, 1.5, d, dtype=torch.float64)

    def f(x):
        out = (torch.sin(x) + x**2).sum(-1)
        return out + (x[..., 0] * x[..., 1] if coupled else 0.0)

    n = 4
    dist = Independent(Normal(mu.expand(n, d), scale.expand(n, d)), 1)
    cost = BoundCost(f, (), {}, n, torch.Size([]))
    h, expectation = DeltaMethod(2).fit(cost, dist, mu)
    x = torch.randn(7, d, generator=make_generator(0).manual_seed(3), dtype=torch.float64)
    cross = torch.tensor([mu[1], mu[0], 0, 0, 0], dtype=torch.float64)
    grad = torch.cos(mu) + 2 * mu + (cross if coupled else 0.0)
    hess = torch.diag(-torch.sin(mu) + 2)
    if coupled:
        hess[0, 1] = hess[1, 0] = 1.0
    delta = x - mu
    want = f(mu) + delta @ grad + 0.5 * ((delta @ hess) * delta).sum(1)
    assert torch.allclose(h(x), want, rtol=1e-12, atol=1e-12)
    assert torch.allclose(expectation(dist), f(mu) + 0.5 * (scale**2 * hess.diagonal()).sum(), rtol=1e-12)
