"""The batched contract of every registered estimator (× sampler): parameters ``loc [B, D]`` with a
shared ``scale [D]``, costs of shape [N] and per-element costs [N, *B[:k]], against closed forms;
the two views on the same seed; the variance of a per-element cost as B grows; builders that do
not broadcast over, or mix, the sample axis.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Categorical, Independent, MultivariateNormal, Normal

from conftest import Z_TOL, t
from gradest import GradestError, exact_grad, named_cost
from gradest.estimators.score import ScoreFunction
from test_core_support import (
    SPECS,
    applicable_specs,
    assert_unbiased,
    assert_value_unbiased,
    assert_views_agree,
    get_estimator,
    per_sample,
    surrogate,
    usable_specs,
)

B, D = 3, 2
PARAMS = {"loc": t([[0.3, -0.5], [1.0, 0.2], [-0.7, 0.9]]), "scale": t(0.7, 1.2)}
COSTS = [("square", 0.7), ("exp", 0.5), ("cos", 1.3), ("linear", -1.5)]
N = 4000  # even and a multiple of the qmc randomizations
N_VIEWS = 100


def independent(loc, scale):
    return Independent(Normal(loc, scale), 1)


BUILDERS = {"independent": independent, "normal": Normal}
#: the registered specs that apply to a (batched) Normal — discrete estimators refuse it
NORMAL_SPECS = [s for s in SPECS if all(s in applicable_specs(b, PARAMS, [s]) for b in BUILDERS.values())]


def variants(builder_name: str, name: str, k: float):
    """(label, f, cost elements per sample): the named total cost and per-element versions of it,
    all with the same expectation E[Σ_b f_b]."""
    cost = named_cost(name, k)
    out = [("total [N]", cost, 1)]
    if builder_name == "independent":  # batch [B], event [D]
        out.append(("per-element [N, B]", lambda x: cost.elementwise(x, cost.k).sum(-1), B))
    else:  # batch [B, D]
        out.append(("per-element [N, B, D]", lambda x: cost.elementwise(x, cost.k), B * D))
        out.append(("per-row [N, B]", lambda x: cost.elementwise(x, cost.k).sum(-1), B))
    return out


# ── estimator × closed form, batched ────────────────────────────────────────────────────────


@pytest.mark.parametrize("cost,k", COSTS, ids=[c for c, _ in COSTS])
@pytest.mark.parametrize("builder_name", list(BUILDERS))
@pytest.mark.parametrize("spec", NORMAL_SPECS)
def test_batched_estimates_match_the_closed_form(spec, builder_name, cost, k):
    builder = BUILDERS[builder_name]
    exact = exact_grad(named_cost(cost, k), builder, PARAMS, method="closed-form")
    for label, f, _ in variants(builder_name, cost, k):
        est = per_sample(spec, f, builder, PARAMS, N, seed=1)
        assert est.values.shape == (N,), label
        for name, value in PARAMS.items():
            assert est.grads[name].shape == (N, *value.shape), (label, name)
        assert_unbiased(est, exact.grads)
        assert_value_unbiased(est, exact.value)


@pytest.mark.parametrize("builder_name", list(BUILDERS))
@pytest.mark.parametrize("spec", NORMAL_SPECS)
def test_surrogate_equals_the_per_sample_mean_on_the_same_seed(spec, builder_name):
    builder = BUILDERS[builder_name]
    for label, f, _ in variants(builder_name, "cos", 1.3):
        est = per_sample(spec, f, builder, PARAMS, N_VIEWS, seed=2)
        loss, grads = surrogate(spec, f, builder, PARAMS, N_VIEWS, seed=2)
        assert loss.dim() == 0, label
        assert_views_agree(est, loss, grads)


@pytest.mark.parametrize("spec", NORMAL_SPECS)
def test_reduction_mean_divides_by_the_cost_elements(spec):
    for builder_name, builder in BUILDERS.items():
        for _, f, elements in variants(builder_name, "square", 0.7):
            est = per_sample(spec, f, builder, PARAMS, N_VIEWS, seed=3)
            loss, grads = surrogate(spec, f, builder, PARAMS, N_VIEWS, seed=3, reduction="mean")
            assert_views_agree(est, loss, grads, elements=elements)
    with pytest.raises(GradestError, match="reduction must be one of"):
        surrogate(spec, named_cost("square"), Normal, PARAMS, N_VIEWS, seed=3, reduction="avg")


def test_exact_grad_sums_a_per_element_cost():
    # quadrature on the per-element cost (≤ 3 coordinates) against the closed form of its sum
    for builder, params, f in [
        (independent, {"loc": t([[0.3], [1.0], [-0.7]]), "scale": t(0.7)},
         lambda x: torch.cos(1.3 * x).sum(-1)),
        (Normal, {"loc": t(0.3, 1.0, -0.7), "scale": t(0.7, 0.4, 1.1)}, lambda x: torch.cos(1.3 * x)),
    ]:
        got = exact_grad(f, builder, params)
        assert got.method == "quadrature"
        want = exact_grad(named_cost("cos", 1.3), builder, params, method="closed-form")
        for name in params:
            assert got.grads[name].shape == params[name].shape
            tol = 1e-10 + 10 * got.error[name]
            assert ((got.grads[name] - want.grads[name]).abs() <= tol).all(), name
        assert math.isclose(got.value, want.value, rel_tol=1e-9)
        # the check can fail: element 0's cost alone has another gradient
        first = exact_grad(lambda x, f=f: f(x).reshape(x.shape[0], -1)[:, 0], builder, params)
        assert not torch.allclose(first.grads["loc"], want.grads["loc"], atol=1e-3)


@pytest.mark.parametrize("spec", NORMAL_SPECS)
def test_a_batch_of_two_with_a_shared_scale(spec):
    # B = 2 once coincided with replicate()'s 2-replica layout probe: scale [2, D] broadcast against
    # loc [2, 2, D] by chance, and the build with N replicas failed (fixed in 088388b)
    params = {"loc": t([[0.3, -0.5], [1.0, 0.2]]), "scale": t(0.7, 1.2)}
    cost = named_cost("cos", 1.3)
    for builder in BUILDERS.values():
        est = per_sample(spec, cost, builder, params, N, seed=4)
        assert est.grads["scale"].shape == (N, D)
        assert_unbiased(est, exact_grad(cost, builder, params).grads)


# ── variance of a per-element cost as the batch grows ───────────────────────────────────────


def _variance(g: torch.Tensor) -> tuple[float, float]:
    """Sample variance of g and its standard error sqrt((m₄ − v²)/n)."""
    n = g.shape[0]
    c2 = (g - g.mean()) ** 2
    return float(c2.mean() * n / (n - 1)), math.sqrt(float(((c2 - c2.mean()) ** 2).mean()) / n)


SCORE_FAMILY = [s for s in SPECS if "+" not in s and isinstance(get_estimator(s), ScoreFunction)]


@pytest.mark.parametrize("spec", SCORE_FAMILY)
def test_per_element_variance_does_not_grow_with_the_batch(spec):
    """ĝ for loc[0] is (f_0 − b_0) ∇ log p(x_0) with a per-element cost, whatever B; with a total
    cost [N] it is (Σ_b f_b − b) ∇ log p(x_0), whose variance grows with B."""
    per_element = lambda x: ((x - 1.0) ** 2).sum(-1)  # noqa: E731  [N, B]
    whole = lambda x: ((x - 1.0) ** 2).sum((-1, -2))  # noqa: E731  [N]
    var = {}
    for kind, f in [("per-element", per_element), ("total", whole)]:
        for b in (1, 10, 100):
            params = {"loc": torch.full((b, 1), 0.3), "scale": t([1.0])}
            est = per_sample(spec, f, independent, params, N, seed=b)
            var[kind, b] = _variance(est.grads["loc"][:, 0, 0])
    v1, s1 = var["per-element", 1]
    for b in (10, 100):
        vb, sb = var["per-element", b]
        assert abs(vb - v1) <= Z_TOL * math.hypot(s1, sb), f"B={b}: {vb} ± {sb} vs B=1: {v1} ± {s1}"
    assert var["total", 1] == var["per-element", 1]  # one element: the same estimator
    for small, large in [(1, 10), (10, 100)]:
        (va, sa), (vb, sb) = var["total", small], var["total", large]
        assert vb - va > Z_TOL * math.hypot(sa, sb), f"total cost: B={large} {vb} vs B={small} {va}"


# ── builders ────────────────────────────────────────────────────────────────────────────────


def mvn(loc, scale):
    return MultivariateNormal(loc, torch.diag(scale**2))  # torch.diag: no leading sample axis


MVN_PARAMS = {"loc": t(0.3, -0.5), "scale": t(0.7, 1.2)}
MVN_SPECS = usable_specs(mvn, MVN_PARAMS)
def replicates(spec: str) -> bool:
    """Control variates fit their coefficients on per-sample gradients, in surrogate() too."""
    return get_estimator(spec).capabilities.replicates


def _not_replicating(specs):
    return [s for s in specs if not replicates(s)]


@pytest.mark.parametrize("spec", [s for s in MVN_SPECS if replicates(s)])
def test_estimators_that_replicate_say_so_in_surrogate(spec):
    with pytest.raises(GradestError, match="the builder does not broadcast over it"):
        surrogate(spec, named_cost("cos", 1.0), mvn, MVN_PARAMS, 20, seed=0)


@pytest.mark.parametrize("spec", applicable_specs(mvn, MVN_PARAMS))
def test_per_sample_refuses_a_builder_that_does_not_broadcast(spec):
    with pytest.raises(GradestError, match="the builder does not broadcast over it") as err:
        per_sample(spec, named_cost("cos", 1.0), mvn, MVN_PARAMS, 20, seed=0)
    assert "torch.diag_embed" in str(err.value) and "surrogate()" in str(err.value)


@pytest.mark.parametrize("spec", _not_replicating(MVN_SPECS))
def test_surrogate_accepts_a_builder_that_does_not_broadcast(spec):
    f = named_cost("cos", 1.0)
    loss, grads = surrogate(spec, f, mvn, MVN_PARAMS, N, seed=5)
    # the same draws under the equivalent diagonal builder: identical numbers, checked for bias
    est = per_sample(spec, f, independent, MVN_PARAMS, N, seed=5)
    assert_views_agree(est, loss, grads)
    assert_unbiased(est, exact_grad(f, independent, MVN_PARAMS).grads)


def mixing(logits):
    return Categorical(probs=torch.softmax(logits, 0))  # dim 0 is the sample axis under per_sample


def per_row(logits):
    return Categorical(probs=torch.softmax(logits, -1))


CAT_PARAMS = {"logits": t(0.5, -1.0, 0.2, 1.0)}
CAT_SPECS = usable_specs(per_row, CAT_PARAMS)


def _cat_cost(x):
    return (x.to(torch.float64) - 1.5) ** 2


@pytest.mark.parametrize("spec", applicable_specs(per_row, CAT_PARAMS))
def test_per_sample_refuses_a_builder_that_mixes_the_sample_axis(spec):
    with pytest.raises(GradestError, match="mixes the leading sample axis") as err:
        per_sample(spec, _cat_cost, mixing, CAT_PARAMS, 20, seed=0)
    assert "softmax(logits, -1)" in str(err.value)


@pytest.mark.parametrize("spec", CAT_SPECS)
def test_a_builder_on_the_last_axis_gives_the_enumeration_gradient(spec):
    exact = exact_grad(_cat_cost, per_row, CAT_PARAMS, method="enumeration")
    assert exact_grad(_cat_cost, mixing, CAT_PARAMS, method="enumeration").grads["logits"].allclose(
        exact.grads["logits"], rtol=1e-12)  # one build: the two builders are the same distribution
    est = per_sample(spec, _cat_cost, per_row, CAT_PARAMS, N, seed=6)
    assert_unbiased(est, exact.grads)
    assert_value_unbiased(est, exact.value)


@pytest.mark.parametrize("spec", _not_replicating(CAT_SPECS))
def test_surrogate_accepts_a_builder_that_mixes_the_sample_axis(spec):
    loss, grads = surrogate(spec, _cat_cost, mixing, CAT_PARAMS, N_VIEWS, seed=7)
    assert_views_agree(per_sample(spec, _cat_cost, per_row, CAT_PARAMS, N_VIEWS, seed=7), loss, grads)


def centred(loc, scale):
    return Independent(Normal(loc - loc.mean(0), scale), 1)  # dim 0 is the sample axis under per_sample


def centred_per_row(loc, scale):
    return Independent(Normal(loc - loc.mean(-1, keepdim=True), scale), 1)


CENTRED = {"loc": t(0.3, -0.5, 1.0), "scale": t(0.7, 1.2, 0.4)}


@pytest.mark.parametrize("spec", applicable_specs(centred_per_row, CENTRED))
def test_per_sample_refuses_a_normal_builder_that_mixes_the_sample_axis(spec):
    with pytest.raises(GradestError, match="mixes the leading sample axis"):
        per_sample(spec, named_cost("cos", 1.0), centred, CENTRED, 20, seed=0)


@pytest.mark.parametrize("spec", _not_replicating(applicable_specs(centred_per_row, CENTRED)))
def test_surrogate_accepts_a_normal_builder_that_mixes_the_sample_axis(spec):
    f = named_cost("cos", 1.0)
    loss, grads = surrogate(spec, f, centred, CENTRED, N_VIEWS, seed=8)
    assert_views_agree(per_sample(spec, f, centred_per_row, CENTRED, N_VIEWS, seed=8), loss, grads)
