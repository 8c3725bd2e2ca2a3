"""Exact gradients: closed form, quadrature and enumeration, cross-checked against each other and
against hand-derived formulas."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Gamma, Independent, Normal

import gradest
from conftest import t
from gradest import GradestError, exact_grad, named_cost

COSTS = [("square", 0.7), ("exp", 0.5), ("exp", 3.0), ("cos", 2.0), ("linear", -1.5)]
POINTS = [(1.0, 1.0), (-0.4, 0.3), (2.0, 2.5)]


@pytest.mark.parametrize("name,k", COSTS)
@pytest.mark.parametrize("loc,scale", POINTS)
def test_closed_form_matches_quadrature(name, k, loc, scale):
    f = named_cost(name, k)
    params = {"loc": t(loc), "scale": t(scale)}
    closed = exact_grad(f, Normal, params, method="closed-form")
    quad = exact_grad(f, Normal, params, method="quadrature")
    for key in params:
        tol = 1e-10 + 10 * float(quad.error[key].max())
        assert torch.allclose(closed.grads[key], quad.grads[key], atol=tol, rtol=0)
    assert math.isclose(closed.value, quad.value, rel_tol=1e-9, abs_tol=1e-12)


def test_closed_form_matches_hand_derivatives():
    mu, s, k = 0.3, 0.8, 1.7
    params = {"loc": t(mu), "scale": t(s)}
    e = math.exp(-0.5 * (k * s) ** 2)
    got = exact_grad(named_cost("cos", k), Normal, params).grads
    assert math.isclose(got["loc"], -k * math.sin(k * mu) * e, rel_tol=1e-12)
    assert math.isclose(got["scale"], -(k**2) * s * math.cos(k * mu) * e, rel_tol=1e-12)
    a = 1 + 2 * k * s**2
    lval = math.exp(-k * mu**2 / a) / math.sqrt(a)
    got = exact_grad(named_cost("exp", k), Normal, params).grads
    assert math.isclose(got["loc"], lval * (-2 * k * mu / a), rel_tol=1e-12)
    assert math.isclose(got["scale"], lval * (-2 * k * s / a + 4 * k**2 * mu**2 * s / a**2), rel_tol=1e-12)
    got = exact_grad(named_cost("square", k), Normal, params).grads
    assert math.isclose(got["loc"], 2 * (mu - k), rel_tol=1e-12)
    assert math.isclose(got["scale"], 2 * s, rel_tol=1e-12)


@pytest.mark.parametrize("dims", [2, 3])
def test_quadrature_multivariate_matches_closed_form(dims):
    gen = torch.Generator().manual_seed(dims)
    params = {"loc": torch.randn(dims, generator=gen), "scale": 0.5 + torch.rand(dims, generator=gen)}
    f = named_cost("cos", 1.3)

    def builder(loc, scale):
        return Independent(Normal(loc, scale), 1)

    closed = exact_grad(f, builder, params, method="closed-form")
    quad = exact_grad(f, builder, params, method="quadrature")
    for key in params:
        assert closed.grads[key].shape == (dims,)
        assert torch.allclose(closed.grads[key], quad.grads[key], atol=1e-9, rtol=0)


def test_quadrature_handles_a_non_differentiable_cost():
    # E[1{x > 0}] = Φ(μ/σ): ∂μ = φ(μ/σ)/σ, ∂σ = −μ φ(μ/σ)/σ². The step has no derivative.
    mu, s = 0.4, 1.2
    got = exact_grad(lambda x: (x > 0).double(), Normal, {"loc": t(mu), "scale": t(s)})
    phi = math.exp(-0.5 * (mu / s) ** 2) / math.sqrt(2 * math.pi)
    assert got.method == "quadrature"
    # Gauss–Hermite converges slowly on a step: check against its own error estimate
    assert abs(got.grads["loc"] - phi / s) <= 3 * got.error["loc"] + 1e-6
    assert abs(got.grads["scale"] + mu * phi / s**2) <= 3 * got.error["scale"] + 1e-6


def test_enumeration_bernoulli_product_matches_formula():
    # f(x) = Σ_d w_d x_d + x_0 x_1: E f = Σ w_d p_d + p_0 p_1
    w = t(0.5, -2.0, 3.0)
    probs = t(0.2, 0.7, 0.4)
    got = exact_grad(lambda x: (x * w).sum(1) + x[:, 0] * x[:, 1], Bernoulli, {"probs": probs})
    assert got.method == "enumeration"
    expected = w.clone()
    expected[0] += probs[1]
    expected[1] += probs[0]
    assert torch.allclose(got.grads["probs"], expected, atol=1e-12)


def test_enumeration_categorical_logits_matches_formula():
    # ∂/∂logit_j E f = p_j (f(j) − E f)
    values = t(1.0, -0.5, 4.0, 2.0)
    logits = t(0.1, -1.0, 0.5, 0.0)
    got = exact_grad(lambda x: values[x], Categorical, {"logits": logits})
    p = logits.softmax(0)
    assert torch.allclose(got.grads["logits"], p * (values - (p * values).sum()), atol=1e-12)


def test_enumeration_agrees_with_many_sample_score_function():
    # Cross-check of two independent routes on a product of categoricals
    logits = t([[0.3, -0.2, 1.0], [0.0, 0.5, -1.0]])
    f = lambda x: (x[:, 0] - x[:, 1]).double() ** 2  # noqa: E731
    exact = exact_grad(f, Categorical, {"logits": logits})
    est = gradest.get_estimator("score-loo").per_sample(
        f, Categorical, {"logits": logits}, 200_000, gradest.make_generator(3)
    )
    s = gradest.summarize(est, exact).params["logits"]
    assert s.z.abs().max() < 5


def test_errors_name_the_alternative():
    with pytest.raises(GradestError, match="at most 3 coordinates"):
        exact_grad(lambda x: x.sum(1), Normal, {"loc": torch.zeros(4), "scale": torch.ones(4)},
                   method="quadrature")
    with pytest.raises(GradestError, match="finite support"):
        exact_grad(named_cost("square"), Normal, {"loc": t(0.0), "scale": t(1.0)}, method="enumeration")
    with pytest.raises(GradestError, match="no exact gradient"):
        exact_grad(lambda x: x, Gamma, {"concentration": t(2.0), "rate": t(1.0)})
    with pytest.raises(GradestError, match="unknown method"):
        exact_grad(named_cost("square"), Normal, {"loc": t(0.0), "scale": t(1.0)}, method="magic")
    with pytest.raises(GradestError, match="more than"):
        exact_grad(lambda x: x.sum(1), Bernoulli, {"probs": torch.full((30,), 0.5)})


@pytest.mark.parametrize("name,k,loc,scale", [("cos", 2.0, 1.0, 1e-6), ("linear", 2.0, 1.0, 1e-6),
                                              ("square", 1.0, 1e3, 1.0), ("exp", 1.0, 0.0, 1e-3),
                                              ("exp", 2.0, 5.0, 30.0)])
def test_quadrature_error_bounds_the_actual_error_at_extreme_scales(name, k, loc, scale):
    # σ ≪ |μ| (rounding of x − μ), |μ| ≫ σ (cancellation in Σ w f ∇log p), σ wide against f's feature
    cost = named_cost(name, k)
    params = {"loc": t(loc), "scale": t(scale)}
    closed = exact_grad(cost, Normal, params, method="closed-form")
    try:
        quad = exact_grad(lambda x: cost(x), Normal, params)
    except GradestError as err:
        assert "quadrature does not resolve" in str(err)
        return
    for key in params:
        assert float((quad.grads[key] - closed.grads[key]).abs()) <= float(quad.error[key])


def test_quadrature_finds_a_narrow_peak_under_a_wide_normal():
    # exp(−x²) under N(0, 10⁶): E f ≈ 7e-4 carried by 0.1% of the probability; the adaptive panels find it
    cost = named_cost("exp", 1.0)
    params = {"loc": t(0.0), "scale": t(1e3)}
    quad = exact_grad(lambda x: cost(x), Normal, params)
    closed = exact_grad(cost, Normal, params, method="closed-form")
    for key in params:
        assert float((quad.grads[key] - closed.grads[key]).abs()) <= float(quad.error[key])
    assert float(quad.error["scale"]) < 1e-6 * abs(float(closed.grads["scale"]))


@pytest.mark.parametrize("loc,scale", [(0.0, 3.0), (3.0, 5.0)])
def test_quadrature_of_a_heavy_tailed_cost_is_kept_and_honest(loc, scale):
    # f = e^{2x}: E f = e^{2μ + 2σ²}, ∂μ = 2 E f, ∂σ = 4σ E f. Its score-function estimates are so heavy
    # tailed that a finite sample understates their spread: the check must not refuse a right answer,
    # and f overflows at nodes whose weight underflows to 0 (they are dropped, not turned into NaN)
    params = {"loc": t(loc), "scale": t(scale)}
    got = exact_grad(lambda x: torch.exp(2 * x), Normal, params)
    mean = math.exp(2 * loc + 2 * scale**2)
    for key, truth in (("loc", 2 * mean), ("scale", 4 * scale * mean)):
        assert abs(float(got.grads[key]) - truth) <= float(got.error[key]) <= 1e-9 * truth


def test_z_is_taken_against_the_reference_error_too():
    from gradest.diagnostics import summarize
    from gradest.estimators.base import PerSampleGradients

    grads = {"loc": torch.tensor([1.0, 1.2, 0.8, 1.1, 0.9], dtype=torch.float64)}
    per = PerSampleGradients(grads, torch.zeros(5, dtype=torch.float64), 0.0, "x")
    se = float(grads["loc"].std() / 5**0.5)
    half = torch.tensor(0.5, dtype=torch.float64)
    closed = gradest.ExactGradient({"loc": half}, torch.tensor(0.0), "closed-form", None)
    quad = closed._replace(method="quadrature", error={"loc": half})
    z_closed = float(summarize(per, closed).params["loc"].z)
    z_quad = float(summarize(per, quad).params["loc"].z)
    assert z_closed == pytest.approx(0.5 / se)
    assert z_quad == pytest.approx(0.5 / (se**2 + 0.25) ** 0.5)


@pytest.mark.parametrize("name", ["square", "exp", "cos", "linear"])
@pytest.mark.parametrize("k", [0.0, 0.7, 2.5])
def test_the_cost_table_is_consistent(name, k):
    # one table (gradest.costs.COST_FORMS): its derivatives, antiderivative and the gradient of its Normal
    # mean agree with autograd and quadrature of its own value
    import numpy as np
    from scipy.integrate import quad

    from gradest.costs import COST_FORMS

    forms = COST_FORMS[name]
    x = t(-1.3, 0.2, 0.9, 2.4).requires_grad_(True)
    (d1,) = torch.autograd.grad(forms.value(x, k).sum(), x, create_graph=True)
    # c′ constant in x (linear) leaves autograd nothing to differentiate: c″ = 0
    d2 = torch.autograd.grad(d1.sum(), x)[0] if d1.requires_grad else torch.zeros_like(d1)
    assert torch.allclose(forms.d1(x.detach(), k), d1.detach(), rtol=1e-12, atol=1e-12)
    assert torch.allclose(forms.d2(x.detach(), k), d2, rtol=1e-12, atol=1e-12)
    numpy_value = forms.value(np.array([0.9]), k)
    assert isinstance(numpy_value, np.ndarray)
    assert numpy_value[0] == pytest.approx(float(forms.value(t(0.9), k)), rel=1e-15, abs=1e-15)
    whole = quad(lambda u: float(forms.value(np.array(u), k)), 0.4, 1.7, epsabs=1e-13)[0]
    assert float(forms.anti(0.4, np.array(1.3), k)) == pytest.approx(whole, rel=1e-9, abs=1e-12)
    loc, scale = t(0.3).requires_grad_(True), t(1.4).requires_grad_(True)
    grads = torch.autograd.grad(forms.normal_mean(loc, scale, k), [loc, scale])
    written = forms.normal_grad(loc.detach(), scale.detach(), k)
    for got, want in zip(written, grads, strict=True):
        assert float(got) == pytest.approx(float(want), rel=1e-12, abs=1e-14)
