"""Discrete families at the boundary: probabilities at 0 or 1 (or within torch's clamp of them).

The exact gradient keeps the true derivative (f(1) − f(0) for a Bernoulli); likelihood-ratio
estimators, which never see the other outcome there, refuse with the alternatives; the
measure-valued estimator gives the true derivative.
"""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent

import gradest
from conftest import t
from gradest import GradestError, exact_grad, get_estimator, make_generator
from gradest.estimators.base import Terms, at_the_boundary
from gradest.estimators.score import score_terms


def f(x):
    return torch.cos(3.0 * x)


TRUE = math.cos(3.0) - 1.0  # f(1) − f(0)


@pytest.mark.parametrize("p", [0.0, 1.0, 1e-20, 1.0 - 1e-17, 0.3])
def test_exact_bernoulli_derivative_is_f1_minus_f0_everywhere(p):
    got = exact_grad(f, Bernoulli, {"probs": t(p)})
    assert got.grads["probs"].item() == pytest.approx(TRUE, rel=1e-12)


def test_exact_categorical_at_a_vertex_and_independent_products():
    # L = Σ_j p_j f(j) with p = probs / Σ probs: ∂L/∂probs_i = (f(i) − L) / Σ probs
    got = exact_grad(lambda x: x.double() ** 2, Categorical, {"probs": t(1.0, 0.0, 0.0)})
    assert torch.allclose(got.grads["probs"], t(0.0, 1.0, 4.0), atol=1e-14)
    prod = exact_grad(lambda x: (x * t(1.0, 2.0)).sum(-1) ** 2,
                      lambda probs: Independent(Bernoulli(probs), 1), {"probs": t(0.3, 0.6)})
    # E (b0 + 2 b1)² = p0 + 4 p1 + 4 p0 p1: ∂/∂p0 = 1 + 4 p1, ∂/∂p1 = 4 + 4 p0
    assert torch.allclose(prod.grads["probs"], t(1.0 + 4 * 0.6, 4.0 + 4 * 0.3), atol=1e-12)


def interior_specs():
    dist = Bernoulli(probs=t(0.3).requires_grad_())
    specs = []
    for key in gradest.available():
        name = key.partition("=")[0]
        if gradest.estimators.registry.requires_argument(name):
            continue
        est = get_estimator(name)
        if est.applicable(dist) is None and est.capabilities.interior:
            specs.append(name)
    return specs


@pytest.mark.parametrize("spec", interior_specs())
@pytest.mark.parametrize("p", [0.0, 1.0, 1e-20])
def test_likelihood_ratio_estimators_refuse_the_boundary(spec, p):
    with pytest.raises(GradestError, match=r"at 0 or 1.*'mvd'"):
        get_estimator(spec).per_sample(f, Bernoulli, {"probs": t(p)}, 100, make_generator(0))


def test_the_refusal_is_needed_and_mvd_is_right_there():
    assert {"score", "score-loo", "arm", "disarm", "enumerate"} <= set(interior_specs())
    for p in (0.0, 1.0):
        est = get_estimator("mvd").per_sample(f, Bernoulli, {"probs": t(p)}, 200, make_generator(1))
        assert torch.allclose(est.grads["probs"], t(TRUE).expand(200))
    # what the refusal prevents: at p = 1 every draw is 1, and the score function's estimate (of the
    # clamped density) is f(1)·1, not f(1) − f(0)
    dist = Bernoulli(probs=t(1.0).requires_grad_())
    assert at_the_boundary(dist) and not at_the_boundary(Bernoulli(probs=t(0.5)))
    assert not at_the_boundary(Bernoulli(logits=t(50.0)))  # logits: the derivative there is ~0, truly
    score = get_estimator("score")
    x = torch.ones(50, dtype=torch.float64)
    node = gradest.Node(Bernoulli(probs=dist.probs.expand(50)), 50, True, torch.Size(()), torch.Size(()),
                        Bernoulli, {"probs": dist.probs})
    carrier, explicit = score_terms(node, x, f(x))
    (g,) = Terms(carrier, explicit, f(x)).gradients([dist.probs])
    assert abs(float(g) / 50 - TRUE) > 0.5 and score.capabilities.interior
