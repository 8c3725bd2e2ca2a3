"""Costs that depend on θ: ``f(x, loc)`` or ``f(x, **params)`` declares the parameters it uses and
both views add the direct term E[∂f/∂θ]; a cost that closes over a parameter without declaring it
is refused by per_sample (its direct term would be lost), and handled by the surrogate.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal

from conftest import t
from gradest import GradestError, exact_grad, get_estimator, make_generator
from gradest.estimators.base import declared_parameters
from test_core_support import (
    applicable_specs,
    assert_unbiased,
    assert_views_agree,
    per_sample,
    surrogate,
    usable_specs,
)

N = 4000


def unit_normal(loc):
    return Normal(loc, torch.ones_like(loc))


def independent(loc, scale):
    return Independent(Normal(loc, scale), 1)


def bernoulli_logits(logits):
    return Bernoulli(logits=logits)


def categorical_logits(logits):
    return Categorical(logits=logits)


def f_declared(x, loc):
    return loc * x  # E = loc², d/dloc = 2 loc


def f_kwargs(x, **params):
    return params["loc"] * x + params["scale"] * x**2  # E = loc² + scale (loc² + scale²)


def f_multivariate(x, loc):
    return ((x - 2.0 * loc) ** 2).sum(-1)  # E = Σ loc² + scale²


def f_batched(x, loc, scale):
    return ((x - 2.0 * loc) ** 2 / scale).sum(-1)  # per element [N, B]: Σ_d (loc² + scale²)/scale


def f_bernoulli(x, probs):
    return (x - probs) ** 2 + 3.0 * probs * x  # per element [N, B]


def f_bernoulli_logits(x, logits):
    return (x - torch.sigmoid(logits)) ** 2 * (1.0 + logits)


def f_categorical(x, logits):
    # the builder's logits with a leading sample axis, [N, B, K]; x [N, B]
    return logits.gather(-1, x.unsqueeze(-1)).squeeze(-1) * (1.0 + x)


class Case(NamedTuple):
    name: str
    builder: object
    params: dict
    f: object
    hand: object  # params -> exact gradient, derived by hand; None: exact_grad only


CASES = [
    Case("declared", unit_normal, {"loc": t(0.7)}, f_declared, lambda loc: {"loc": 2 * loc}),
    Case("kwargs", Normal, {"loc": t(0.7), "scale": t(1.3)}, f_kwargs,
         lambda loc, scale: {"loc": 2 * loc + 2 * scale * loc, "scale": loc**2 + 3 * scale**2}),
    Case("multivariate", independent, {"loc": t(0.7, -0.4, 1.1), "scale": t(1.0, 0.5, 1.5)},
         f_multivariate, lambda loc, scale: {"loc": 2 * loc, "scale": 2 * scale}),
    Case("batched", independent, {"loc": t([[0.7, -0.4], [1.1, 0.2], [-0.3, 0.5]]), "scale": t(0.5, 1.5)},
         f_batched,
         lambda loc, scale: {"loc": 2 * loc / scale, "scale": (1 - loc**2 / scale**2).sum(0)}),
    Case("bernoulli", Bernoulli, {"probs": t(0.3, 0.8)}, f_bernoulli, None),
    Case("bernoulli-logits", bernoulli_logits, {"logits": t(0.3, -1.2)}, f_bernoulli_logits, None),
    Case("categorical", categorical_logits, {"logits": t([[0.5, -1.0, 0.2], [1.0, 0.0, -0.5]])},
         f_categorical, None),
]
BY_NAME = {c.name: c for c in CASES}


@functools.cache
def reference(name: str) -> dict[str, torch.Tensor]:
    """exact_grad where it applies (quadrature for ≤ 3 Normal coordinates, enumeration), else the
    hand derivative."""
    case = BY_NAME[name]
    if case.name == "batched":  # 6 coordinates: no exact method
        return case.hand(**case.params)
    return exact_grad(case.f, case.builder, case.params).grads


@pytest.mark.parametrize("name", [c.name for c in CASES if c.hand is not None and c.name != "batched"])
def test_exact_grad_adds_the_direct_term_of_a_declared_parameter(name):
    case = BY_NAME[name]
    got = exact_grad(case.f, case.builder, case.params)
    want = case.hand(**case.params)
    for k, v in want.items():
        tol = 1e-9 + (0 if got.error is None else 10 * got.error[k])
        assert ((got.grads[k] - v).abs() <= tol).all(), (k, got.grads[k], v)
    # the same f with θ frozen (no direct term) has another gradient: the check can fail
    names = declared_parameters(case.f, tuple(case.params))
    frozen = {k: v for k, v in case.params.items() if k in names}
    undeclared = exact_grad(lambda x: case.f(x, **frozen), case.builder, case.params)
    assert not torch.allclose(undeclared.grads["loc"], want["loc"], atol=1e-3)


PAIRS = [(c.name, s) for c in CASES for s in usable_specs(c.builder, c.params)]


@pytest.mark.parametrize("name,spec", PAIRS)
def test_declared_parameters_in_both_views(name, spec):
    case = BY_NAME[name]
    est = per_sample(spec, case.f, case.builder, case.params, N, seed=21)
    for k, v in case.params.items():
        assert est.grads[k].shape == (N, *v.shape)
    if not get_estimator(spec).capabilities.biased:  # relaxations: only the two views must agree
        assert_unbiased(est, reference(name))
    loss, grads = surrogate(spec, case.f, case.builder, case.params, N, seed=21)
    assert_views_agree(est, loss, grads)


def test_every_family_has_score_and_other_estimators_under_test():
    # the pairs come from the registry: the discrete cases reach the score family and mvd (Bernoulli)
    names = {s.partition("+")[0] for n, s in PAIRS if n == "bernoulli"}
    assert {"score", "score-loo", "mvd"} <= names
    assert "pathwise" not in names
    assert {s for n, s in PAIRS if n == "declared"} >= {"pathwise", "score", "mvd", "score-optb"}


# ── parameters closed over by f ─────────────────────────────────────────────────────────────

NORMAL = {"loc": t(0.7, -0.4), "scale": t(1.0, 0.5)}


@pytest.mark.parametrize("spec", applicable_specs(independent, NORMAL))
@pytest.mark.parametrize("name", ["loc", "scale"])
def test_per_sample_refuses_a_closed_over_parameter_and_names_the_fix(spec, name):
    params = {k: v.clone().requires_grad_(k == name) for k, v in NORMAL.items()}
    closed = params[name]

    def f(x):
        return (closed * x).sum(-1)

    with pytest.raises(GradestError, match="without declaring it") as err:
        per_sample(spec, f, independent, params, 20, seed=0)
    assert f"def f(x, {name})" in str(err.value)


@pytest.mark.parametrize("spec", applicable_specs(independent, NORMAL))
def test_surrogate_gives_a_closed_over_parameter_its_direct_term(spec):
    # the surrogate differentiates through f's graph, so closing over loc equals declaring it
    params = {k: v.clone().requires_grad_() for k, v in NORMAL.items()}
    get_estimator(spec).surrogate(lambda x: f_multivariate(x, params["loc"]), independent, params, 100,
                                  make_generator(22)).backward()
    closed = {k: v.grad for k, v in params.items()}
    _, declared = surrogate(spec, f_multivariate, independent, NORMAL, 100, seed=22)
    for k in NORMAL:
        assert torch.allclose(closed[k], declared[k], rtol=1e-10, atol=1e-12), k
    # and the declared form differs from dropping the direct term
    _, dropped = surrogate(spec, lambda x: f_multivariate(x, NORMAL["loc"]), independent, NORMAL, 100,
                           seed=22)
    assert not torch.allclose(dropped["loc"], declared["loc"], atol=1e-3)


def test_an_argument_that_is_not_a_parameter_is_refused():
    def f(x, weight):
        return weight * x

    with pytest.raises(GradestError, match="'weight' that is not a parameter"):
        per_sample("pathwise", f, Normal, {"loc": t(0.0), "scale": t(1.0)}, 20, seed=0)
