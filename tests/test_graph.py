"""Stochastic computation graphs: DiCE surrogate gradients, first and second order, against exact ones.

Monte Carlo checks give every particle its own copy of the parameters (a leaf ``P [N, d]``), so
one backward pass yields the N single-particle gradients ∇s_n and Hessian-vector products H_n v;
their mean is the estimate and their spread its standard error (the leave-one-out baseline makes
them dependent at O(1/N) only). Exact values: :func:`gradest.graph.enumerate_graph` for discrete
graphs, closed forms or Gauss–Hermite quadrature with a Normal node.
"""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal, OneHotCategorical

from conftest import Z_TOL
from gradest.errors import GradestError
from gradest.graph import enumerate_graph, graph, magic_box
from gradest.rng import make_generator

N = 20_000
SEED = 0


def exact_derivatives(model, theta):
    """Gradient and Hessian of the exact L(θ) = enumerate_graph(model(·, θ))."""
    theta = theta.detach().requires_grad_(True)
    value = enumerate_graph(lambda g: model(g, theta))
    (grad,) = torch.autograd.grad(value, theta, create_graph=True)
    hess = torch.stack([torch.autograd.grad(grad[i], theta, retain_graph=True)[0] for i in range(len(theta))])
    return grad.detach(), hess.detach()


def particle_estimates(model, theta, v, estimator, seed=SEED, n=N):
    """Per-particle ∇s_n [n, d] and H_n v [n, d], each particle with its own parameter copy."""
    rows = theta.detach().expand(n, len(theta)).clone().requires_grad_(True)
    with graph(make_generator(seed), n) as g:
        model(g, rows, estimator)
    total = g.surrogate() * n  # Σ_n s_n: its gradient in row n is particle n's estimate
    (grad,) = torch.autograd.grad(total, rows, create_graph=True)
    (hv,) = torch.autograd.grad((grad * v).sum(), rows)
    return grad.detach(), hv


def assert_within(samples, exact, what):
    mean = samples.mean(0)
    stderr = samples.std(0) / math.sqrt(samples.shape[0])
    z = (mean - exact).abs() / stderr.clamp_min(1e-12)
    assert (z < Z_TOL).all(), f"{what}: mean {mean}, exact {exact}, z {z}"


def columns(theta):
    """θ [d] (exact: shared) or [N, d] (per particle): its columns, and whether roots are batched."""
    return theta.unbind(-1), theta.dim() > 1


# ── two nodes: a Bernoulli chain ────────────────────────────────────────────────────────────


def two_nodes(g, theta, estimator="score"):
    (a, b, w), batched = columns(theta)
    z1 = g.sample("z1", Bernoulli(logits=a), estimator, batched=batched)
    z2 = g.sample("z2", Bernoulli(logits=b + w * z1), estimator)
    g.cost("c", (z1 + 2.0 * z2 - 1.3) ** 2)


@pytest.mark.parametrize("estimator", ["score", "score-loo"])
def test_two_node_chain_first_and_second_order(estimator):
    theta = torch.tensor([0.3, -0.5, 1.2])
    v = torch.tensor([1.0, -0.5, 0.7])
    grad, hess = exact_derivatives(two_nodes, theta)
    per_grad, per_hv = particle_estimates(two_nodes, theta, v, estimator)
    assert_within(per_grad, grad, "gradient")
    assert_within(per_hv, hess @ v, "Hessian-vector product")


def test_loo_baseline_lowers_the_variance_of_both_orders():
    theta, v = torch.tensor([0.3, -0.5, 1.2]), torch.tensor([1.0, -0.5, 0.7])
    plain = particle_estimates(two_nodes, theta, v, "score", n=4000)
    loo = particle_estimates(two_nodes, theta, v, "score-loo", n=4000)
    for p, q in zip(plain, loo, strict=True):
        assert q.var(0).sum() < p.var(0).sum()


# ── three nodes: Categorical → Bernoulli (two bits) → Categorical, costs in between ─────────


def three_nodes(g, theta, estimator="score"):
    cols, batched = columns(theta)
    a0, a1, a2, b0, b1, w, c0, c1, c2 = cols
    logits1 = torch.stack([a0, a1, a2], -1)
    z1 = g.sample("z1", Categorical(logits=logits1), estimator, batched=batched)
    g.cost("early", torch.tensor([0.5, -1.0, 2.0])[z1])
    bits = torch.stack([b0 + w * z1, b1 - w * z1], -1)  # [N, 2]
    z2 = g.sample("z2", Bernoulli(logits=bits), estimator)
    shift = z2.sum(-1, keepdim=True)
    logits3 = torch.stack([c0, c1, c2], -1) + shift * torch.tensor([0.0, 0.5, -0.5])
    z3 = g.sample("z3", Categorical(logits=logits3), estimator)
    g.cost("bits", (z2 - 0.4) ** 2)  # per element [N, 2]: bit i alone
    g.cost("last", (z3.to(z2.dtype) - z1.to(z2.dtype)) ** 2 + 0.3 * z2[:, 0])


@pytest.mark.parametrize("estimator", ["score", "score-loo"])
def test_three_node_graph_first_and_second_order(estimator):
    theta = torch.tensor([0.2, -0.4, 0.1, 0.3, -0.2, 0.5, 0.0, 0.4, -0.3])
    v = torch.linspace(-1.0, 1.0, 9)
    grad, hess = exact_derivatives(three_nodes, theta)
    per_grad, per_hv = particle_estimates(three_nodes, theta, v, estimator)
    assert_within(per_grad, grad, "gradient")
    assert_within(per_hv, hess @ v, "Hessian-vector product")


# ── mixed: score-function and pathwise nodes with a Normal ─────────────────────────────────


def score_then_pathwise(g, theta, estimator="score-loo"):
    (a, mu, w, log_s), batched = columns(theta)
    z1 = g.sample("z1", Bernoulli(logits=a), estimator, batched=batched)
    z2 = g.sample("z2", Normal(mu + w * z1, log_s.exp()), "pathwise")
    g.cost("c", (z2 - 1.0) ** 2 + 0.5 * z1)


def closed_form_score_then_pathwise(theta):
    a, mu, w, log_s = theta
    p = torch.sigmoid(a)
    s2 = (2 * log_s).exp()
    return (1 - p) * ((mu - 1) ** 2 + s2) + p * ((mu + w - 1) ** 2 + s2 + 0.5)


def pathwise_then_score(g, theta, estimator="score-loo"):
    (mu, log_s, k), batched = columns(theta)
    z1 = g.sample("z1", Normal(mu, log_s.exp()), "pathwise", batched=batched)
    z2 = g.sample("z2", Bernoulli(logits=k * z1), estimator)
    g.cost("c", (z2 - 0.5 * z1) ** 2 + z1)


def quadrature_pathwise_then_score(theta):
    """E over z1 ~ N(μ, s²) by Gauss–Hermite (80 nodes), the Bernoulli summed exactly."""
    mu, log_s, k = theta
    t, wts = (torch.from_numpy(a) for a in np.polynomial.hermite.hermgauss(80))
    x = mu + math.sqrt(2.0) * log_s.exp() * t
    p = torch.sigmoid(k * x)
    inner = p * ((1 - 0.5 * x) ** 2 + x) + (1 - p) * ((0.5 * x) ** 2 + x)
    return (wts * inner).sum() / math.sqrt(math.pi)


@pytest.mark.parametrize(
    ("model", "exact", "theta"),
    [
        (score_then_pathwise, closed_form_score_then_pathwise, [0.4, 0.2, 1.5, -0.3]),
        (pathwise_then_score, quadrature_pathwise_then_score, [0.3, -0.4, 1.1]),
    ],
    ids=["score-then-pathwise", "pathwise-then-score"],
)
def test_mixed_graph_first_and_second_order(model, exact, theta):
    theta = torch.tensor(theta)
    v = torch.linspace(1.0, -0.6, len(theta))
    grad = torch.autograd.functional.jacobian(exact, theta)
    hess = torch.autograd.functional.hessian(exact, theta)
    per_grad, per_hv = particle_estimates(model, theta, v, "score-loo")
    assert_within(per_grad, grad, "gradient")
    assert_within(per_hv, hess @ v, "Hessian-vector product")


def test_enumeration_matches_the_closed_form_sum():
    theta = torch.tensor([0.3, -0.5, 1.2])
    a, b, w = theta
    p1 = torch.sigmoid(a)
    want = 0.0
    for z1 in (0.0, 1.0):
        p2 = torch.sigmoid(b + w * z1)
        for z2 in (0.0, 1.0):
            want += (p1 if z1 else 1 - p1) * (p2 if z2 else 1 - p2) * (z1 + 2 * z2 - 1.3) ** 2
    assert torch.allclose(enumerate_graph(lambda g: two_nodes(g, theta)), want, rtol=1e-14)


# ── cost placement, values, magic box ──────────────────────────────────────────────────────


def test_a_cost_upstream_of_a_node_does_not_weight_its_score():
    a = torch.tensor(0.3, requires_grad=True)
    b = torch.tensor(-0.2, requires_grad=True)
    with graph(make_generator(1), 500) as g:
        z1 = g.sample("z1", Bernoulli(logits=a))
        g.cost("c1", 10.0 * z1)
        z2 = g.sample("z2", Bernoulli(logits=b))
        g.cost("c2", (z2 - 0.3) ** 2)
    (grad_b,) = torch.autograd.grad(g.surrogate(), b)
    score2 = z2 - torch.sigmoid(b.detach())
    want = ((z2 - 0.3) ** 2 * score2).mean()
    wrong = ((10.0 * z1 + (z2 - 0.3) ** 2) * score2).mean()
    assert torch.allclose(grad_b, want, rtol=1e-12, atol=1e-14)
    assert not torch.allclose(grad_b, wrong)


def test_declared_parents_prune_the_scores_a_cost_weights():
    a = torch.tensor(0.3, requires_grad=True)
    b = torch.tensor(-0.2, requires_grad=True)
    with graph(make_generator(2), 300) as g:
        z1 = g.sample("z1", Bernoulli(logits=a))
        z2 = g.sample("z2", Bernoulli(logits=b))
        g.cost("c", 3.0 * z1, parents=("z1",))
        g.cost("d", z2 * z1, parents=("z2", "z1"))
    ga, gb = torch.autograd.grad(g.surrogate(), (a, b))
    s1, s2 = z1 - torch.sigmoid(a.detach()), z2 - torch.sigmoid(b.detach())
    assert torch.allclose(ga, ((3.0 * z1 + z2 * z1) * s1).mean(), rtol=1e-12)
    assert torch.allclose(gb, (z2 * z1 * s2).mean(), rtol=1e-12)


def test_ancestors_of_a_declared_parent_are_upstream_too():
    a = torch.tensor(0.3, requires_grad=True)
    with graph(make_generator(3), 200) as g:
        z1 = g.sample("z1", Bernoulli(logits=a))
        z2 = g.sample("z2", Bernoulli(logits=z1 - 0.5), parents=("z1",))
        g.sample("noise", Bernoulli(logits=torch.tensor(0.0)))
        g.cost("c", z2, parents=("z2",))
    assert g.costs["c"].ancestors == {"z1", "z2"}
    (ga,) = torch.autograd.grad(g.surrogate(), a)
    assert torch.allclose(ga, (z2 * (z1 - torch.sigmoid(a.detach()))).mean(), rtol=1e-12)


@pytest.mark.parametrize("estimator", ["score", "score-loo"])
def test_the_value_is_the_monte_carlo_estimate(estimator):
    theta = torch.tensor([0.3, -0.5, 1.2], requires_grad=True)
    with graph(make_generator(4), 64) as g:
        two_nodes(g, theta, estimator)
    z1, z2 = g.nodes["z1"].value, g.nodes["z2"].value
    assert torch.allclose(g.surrogate(), ((z1 + 2 * z2 - 1.3) ** 2).mean(), rtol=1e-14)
    assert torch.equal(g.values(), (z1 + 2 * z2 - 1.3) ** 2)


def test_same_seed_same_numbers():
    theta = torch.linspace(-0.5, 0.5, 9)
    out = []
    for _ in range(2):
        with graph(make_generator(5), 32) as g:
            three_nodes(g, theta, "score-loo")
        out.append(g.rows().detach())
    assert torch.equal(out[0], out[1])


def test_magic_box_is_one_with_the_derivatives_of_exp():
    tau = torch.tensor(0.7, requires_grad=True)
    m = magic_box(tau * tau)
    (d1,) = torch.autograd.grad(m, tau, create_graph=True)
    (d2,) = torch.autograd.grad(d1, tau)
    assert float(m.detach()) == 1.0
    assert torch.allclose(d1, 2 * tau.detach())
    assert torch.allclose(d2, torch.tensor(2.0 + 4 * 0.49))


# ── refusals ────────────────────────────────────────────────────────────────────────────────


def test_refusals_name_the_fix():
    gen = make_generator(0)
    p = torch.tensor(0.3)
    with graph(gen, 4) as g:
        with pytest.raises(GradestError, match="no rsample; use the score-function estimator"):
            g.sample("z", Bernoulli(logits=p), "pathwise")
        with pytest.raises(GradestError, match="give it as then=fn"):
            g.sample("z", Bernoulli(logits=p), "disarm")
        with pytest.raises(GradestError, match="unknown estimator 'nope'"):
            g.sample("z", Bernoulli(logits=p), "nope")
        z = g.sample("z", Bernoulli(logits=p))
        with pytest.raises(GradestError, match="used twice"):
            g.sample("z", Bernoulli(logits=p))
        with pytest.raises(GradestError, match="unknown parent 'y'"):
            g.cost("c", z, parents=("y",))
        with pytest.raises(GradestError, match=r"one value per particle .* got \[3\]"):
            g.cost("c", torch.zeros(3))
        g.sample("bits", Bernoulli(logits=torch.zeros(3)))
        with pytest.raises(GradestError, match="computed from no sampled node"):
            g.cost("constant", torch.zeros(4, 5))  # a particle axis in shape only
        g.cost("c", z.unsqueeze(-1).expand(4, 5) * 1.0)
        with pytest.raises(GradestError, match="does not line up"):
            g.rows()
        with pytest.raises(GradestError, match=r"batched=True needs a batch shape starting with N = 4"):
            g.sample("w", Bernoulli(logits=torch.zeros(3)), batched=True)
    with pytest.raises(GradestError, match="closed"):
        g.sample("w", Bernoulli(logits=p))
    with graph(gen, 1) as one, pytest.raises(GradestError, match="score-loo needs num_samples ≥ 2"):
        one.sample("z", Bernoulli(logits=p), "score-loo")
    with pytest.raises(GradestError, match="no cost"):
        graph(gen, 2).surrogate()
    with pytest.raises(GradestError, match="node 'x' is Normal"):
        enumerate_graph(lambda g: g.cost("c", g.sample("x", Normal(p, 1.0), "pathwise")))


def test_per_element_cost_against_a_scalar_node_broadcasts():
    a = torch.tensor(0.2, requires_grad=True)
    with graph(make_generator(6), 100) as g:
        z = g.sample("z", Bernoulli(logits=a))
        g.cost("c", z.unsqueeze(-1) * torch.tensor([1.0, 2.0]))
    (ga,) = torch.autograd.grad(g.surrogate(), a)
    assert torch.allclose(ga, (3.0 * z * (z - torch.sigmoid(a.detach()))).mean(), rtol=1e-12)


def test_enumeration_of_one_hot_nodes_and_its_bound():
    logits = torch.tensor([0.2, -0.3, 0.5])

    def model(g):
        z = g.sample("z", OneHotCategorical(logits=logits))
        g.cost("c", (z * torch.tensor([1.0, 4.0, 9.0])).sum(-1))

    want = (logits.softmax(-1) * torch.tensor([1.0, 4.0, 9.0])).sum()
    assert torch.allclose(enumerate_graph(model), want, rtol=1e-14)
    with pytest.raises(GradestError, match="more than max_support = 2"):
        enumerate_graph(model, max_support=2)


def test_the_costs_own_gradient_is_split_among_the_pathwise_nodes():
    loc = torch.tensor(0.3, requires_grad=True)
    with graph(make_generator(8), 16) as g:
        x = g.sample("x", Normal(loc, 1.0), "pathwise")
        b = g.sample("b", Bernoulli(logits=x))
        y = g.sample("y", Normal(x + b, 1.0), "pathwise")
        g.cost("c", y**2)
    found = g.per_node({"loc": loc})
    assert list(found.grads) == ["x", "b", "y", "direct"]  # in the order of sampling
    assert torch.allclose(found.total["loc"].mean(0), torch.autograd.grad(g.surrogate(), loc)[0], rtol=1e-12)
