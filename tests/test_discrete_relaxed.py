"""The relaxed estimators (gumbel-softmax, straight-through, gumbel-st) are biased by design: their
bias is measured against enumeration, shrinks as the temperature → 0 where theory says so (the
Gumbel-softmax estimator: x̃ → b), and is flagged to ``select``; the annealing schedule; the
straight-through forward pass is the exact draw."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.distributions as D

import gradest
from conftest import Z_TOL, t
from gradest import GradestError, exact_grad, get_estimator, make_generator
from gradest.estimators.relaxed import Annealing, GumbelSoftmax, StraightThrough

TEMPERATURES = (1.0, 0.5, 0.1)
N = 200_000


def bernoulli_logits(logits):
    return D.Bernoulli(logits=logits)


def one_hot_logits(logits):
    return D.OneHotCategorical(logits=logits)


def toy(x):
    """The REBAR toy Σ_i (b_i − t)², t = 0.45."""
    return ((x - 0.45) ** 2).sum(-1)


def _per_temperature(spec, f, builder, params):
    """{τ: single-sample gradients [N, D]} on one generator seed: the τ's share their noise (paired)."""
    return {tau: get_estimator(f"{spec}={tau}").per_sample(f, builder, params, N, make_generator(3))
            .grads["logits"] for tau in TEMPERATURES}


def _z(d: torch.Tensor) -> torch.Tensor:
    return d.mean(0) / (d.std(0) / math.sqrt(d.shape[0]))


def test_gumbel_softmax_bias_shrinks_with_the_temperature_bernoulli():
    """bias_τ = E ĝ_τ − ∇L per coordinate: measurable at τ = 1 and |bias| strictly smaller at each lower
    τ. Paired (same noise): |b_S| < |b_L| ⟺ s(b_L − b_S) > 0 and s(b_L + b_S) > 0 with s = sign b_L,
    both checked at Z_TOL standard errors of the paired single-sample differences."""
    params = {"logits": t(-0.45, -0.3, -0.15)}
    exact = exact_grad(toy, bernoulli_logits, params, method="enumeration").grads["logits"]
    g = _per_temperature("gumbel-softmax", toy, bernoulli_logits, params)
    for large, small in itertools.pairwise(TEMPERATURES):
        bias = g[large] - exact
        assert bool((_z(bias).abs() > Z_TOL).all()), f"the bias at τ = {large} is not measurable"
        s = bias.mean(0).sign()
        closer = s * (g[large] - g[small])  # |b_S| < |b_L| from above ...
        same_side = s * (g[large] + g[small] - 2 * exact)  # ... and from below
        assert bool((_z(closer) > Z_TOL).all()), (large, small, _z(closer))
        assert bool((_z(same_side) > Z_TOL).all()), (large, small, _z(same_side))
    # and at τ = 0.1 less than a quarter of the bias at τ = 1 (O(τ) as τ → 0)
    quarter = (g[1.0] - exact).abs().mean(0) / 4
    assert bool(((g[0.1] - exact).mean(0).abs() + Z_TOL * g[0.1].std(0) / math.sqrt(N) < quarter).all())


def test_gumbel_softmax_bias_shrinks_with_the_temperature_one_hot():
    """The bias vector's norm decreases: ‖b̂_L‖ − ‖b̂_S‖ beyond Z_TOL · (‖se_L‖ + ‖se_S‖), which
    bounds the error of each norm (triangle inequality, every coordinate within Z_TOL se)."""
    weights = t(1.0, 2.0, -1.0)

    def f(x):
        return (weights * (x - 0.45) ** 2).sum(-1)

    params = {"logits": t(0.3, -0.5, 0.1)}
    exact = exact_grad(f, one_hot_logits, params, method="enumeration").grads["logits"]
    g = _per_temperature("gumbel-softmax", f, one_hot_logits, params)
    norm = {tau: float((g[tau].mean(0) - exact).norm()) for tau in TEMPERATURES}
    se = {tau: float((g[tau].std(0) / math.sqrt(N)).norm()) for tau in TEMPERATURES}
    for large, small in itertools.pairwise(TEMPERATURES):
        assert norm[large] - norm[small] > Z_TOL * (se[large] + se[small]), (norm, se)


@pytest.mark.parametrize("spec", ["straight-through", "gumbel-st=0.5", "gumbel-softmax=0.5"])
def test_relaxed_estimators_are_biased_and_their_values_are_not(spec):
    # a cost coupling the bits: no vanishing bias for the straight-through estimators
    params = {"logits": t(-1.2, 0.4, 1.5)}

    def f(x):
        return torch.sin(3.0 * x[:, 0] * x[:, 1] - x[:, 2])

    exact = exact_grad(f, bernoulli_logits, params, method="enumeration")
    est = get_estimator(spec).per_sample(f, bernoulli_logits, params, 50_000, make_generator(4))
    z = (est.grads["logits"].mean(0) - exact.grads["logits"]) / est.stderr()["logits"]
    assert float(z.abs().max()) > 3 * Z_TOL, f"{spec}: no bias measured, z = {z.tolist()}"
    # the values are f at the exact draw b: an unbiased estimate of L
    values = est.values
    assert abs(float(values.mean() - exact.value)) <= Z_TOL * float(values.std()) / math.sqrt(50_000)
    assert get_estimator(spec).capabilities.biased


def test_select_says_a_relaxed_estimator_is_biased_and_recommends_an_unbiased_one():
    params = {"logits": t(-0.45, -0.3, -0.15)}
    selection = gradest.select(toy, bernoulli_logits, params, ["gumbel-softmax", "disarm", "arm"],
                               num_samples=2000, seed=0)
    rows = {c.estimator: c for c in selection.candidates}
    assert rows["gumbel-softmax"].biased and "BIASED by design" in rows["gumbel-softmax"].note
    assert selection.recommendation in ("disarm", "arm")
    assert not rows["disarm"].biased and not rows["arm"].biased


def test_straight_through_forwards_the_exact_draw():
    # x = b + (p − p.detach()) is b in value: f sees 0/1 only, and values are f(b)
    seen = []

    def f(x):
        seen.append(x.detach().clone())
        return (x * t(1.0, -2.0, 0.5)).sum(-1)

    for spec in ["straight-through", "gumbel-st=0.3"]:
        seen.clear()
        est = get_estimator(spec).per_sample(f, bernoulli_logits, {"logits": t(0.2, -0.7, 1.0)}, 500,
                                             make_generator(2))
        x = seen[0]  # (the contract probe evaluates f again on a changed draw: gradest.contract)
        assert bool(((x == 0) | (x == 1)).all())
        assert torch.equal(est.values, (x * t(1.0, -2.0, 0.5)).sum(-1))
    # and the frequencies are the Bernoulli's
    assert abs(float(x.mean(0)[2]) - float(torch.sigmoid(t(1.0)))) < Z_TOL * 0.5 / math.sqrt(500)


def test_plain_straight_through_is_the_probability_gradient():
    # one bit, f(x) = x²: ĝ_ℓ = f'(b) dp/dℓ = 2b p(1 − p)
    logits = t(0.3)
    est = get_estimator("straight-through").per_sample(lambda x: x**2, bernoulli_logits, {"logits": logits},
                                                       200, make_generator(1))
    p = torch.sigmoid(logits)
    b = est.values  # f(b) = b² = b
    assert torch.allclose(est.grads["logits"], 2 * b * p * (1 - p), rtol=1e-12)


def test_annealing_schedule_advances_in_surrogate_calls_only():
    schedule = Annealing(start=1.0, minimum=0.5, rate=0.5)
    est = GumbelSoftmax(schedule)
    assert est.temperature == 1.0
    params = {"logits": t(0.2, -0.4)}
    est.per_sample(toy, bernoulli_logits, params, 10, make_generator(0))
    assert est.steps == 0 and est.temperature == 1.0
    for step in range(1, 4):
        est.surrogate(toy, bernoulli_logits, {"logits": params["logits"].clone().requires_grad_()}, 10,
                      make_generator(step))
        assert est.steps == step
        assert math.isclose(est.temperature, max(0.5, math.exp(-0.5 * step)))
    assert est.temperature == 0.5  # the floor
    # the surrogate used τ_t: same numbers as a fixed-temperature estimator at τ_0 on the same seed
    fresh = GumbelSoftmax(Annealing(1.0, 0.5, 0.5))
    leaves = {"logits": params["logits"].clone().requires_grad_()}
    fresh.surrogate(toy, bernoulli_logits, leaves, 10, make_generator(9)).backward()
    fixed = GumbelSoftmax(1.0).per_sample(toy, bernoulli_logits, params, 10, make_generator(9))
    assert torch.allclose(leaves["logits"].grad, fixed.grads["logits"].mean(0), rtol=1e-12)
    # a fixed temperature can be set between steps; plain straight-through has none
    est.temperature = 0.2
    assert est.temperature == 0.2 and est.schedule is None
    with pytest.raises(GradestError, match="has no temperature"):
        StraightThrough().temperature = 0.5
    with pytest.raises(GradestError, match="positive"):
        Annealing(start=0.0)
