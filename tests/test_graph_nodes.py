"""Registered estimators as graph nodes: callable nodes (then=) and relaxations against enumeration
and the single-node estimators, refusals, and the split of the costs' gradient among pathwise nodes.

Monte Carlo checks give every particle its own copy of the parameters (a leaf ``[N, d]``, as in
tests/test_graph.py), so one backward pass yields the N single-particle estimates; their mean is
checked against :func:`gradest.graph.enumerate_graph` within ``Z_TOL`` standard errors.
"""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Normal

import gradest
from conftest import Z_TOL
from gradest import get_estimator
from gradest.errors import GradestError
from gradest.graph import attribute, enumerate_graph, graph
from gradest.rng import make_generator

N = 20_000


def exact_derivatives(model, theta, estimator):
    theta = theta.detach().requires_grad_(True)
    value = enumerate_graph(lambda g: model(g, theta, estimator))
    (grad,) = torch.autograd.grad(value, theta, create_graph=True)
    hess = torch.stack([torch.autograd.grad(grad[i], theta, retain_graph=True)[0] for i in range(len(theta))])
    return grad.detach(), hess.detach()


def particle_estimates(model, theta, v, estimator, seed=0, n=N, second=True):
    rows = theta.detach().expand(n, len(theta)).clone().requires_grad_(True)
    with graph(make_generator(seed), n) as g:
        model(g, rows, estimator)
    total = g.surrogate() * n
    (grad,) = torch.autograd.grad(total, rows, create_graph=second)
    hv = torch.autograd.grad((grad * v).sum(), rows)[0] if second else None
    return grad.detach(), hv, g


def assert_within(samples, exact, what):
    mean = samples.mean(0)
    stderr = samples.std(0) / math.sqrt(samples.shape[0])
    z = (mean - exact).abs() / stderr.clamp_min(1e-12)
    assert (z < Z_TOL).all(), f"{what}: mean {mean}, exact {exact}, z {z}"


def close_or_within(samples, exact, what):
    """An exact node's estimates have no spread where the upstream noise does not reach them."""
    spread = samples.std(0)
    exact_cols = spread < 1e-12
    assert torch.allclose(samples[:, exact_cols].mean(0), exact[exact_cols], rtol=1e-9, atol=1e-12), what
    if (~exact_cols).any():
        assert_within(samples[:, ~exact_cols], exact[~exact_cols], what)


# ── two Bernoulli nodes, the second terminal: its downstream cost is then= ──────────────────


def two_nodes(g, theta, estimator):
    a, b, w = theta.unbind(-1)
    z1 = g.sample("z1", Bernoulli(logits=a), "score-loo", batched=theta.dim() > 1)
    g.sample("z2", Bernoulli(logits=b + w * z1), estimator,
             then=lambda z2: (z1 + 2.0 * z2 - 1.3) ** 2 + 0.4 * w)


THETA2 = torch.tensor([0.3, -0.5, 1.2])
V2 = torch.tensor([1.0, -0.5, 0.7])
FIRST_ORDER = ["arm", "disarm", "rebar", "relax"]
EVERY_ORDER = ["score", "score-loo", "score-const=1.5", "enumerate"]


@pytest.mark.parametrize("estimator", FIRST_ORDER + EVERY_ORDER)
def test_two_node_graph_with_a_terminal_node_of_each_estimator(estimator):
    grad, hess = exact_derivatives(two_nodes, THETA2, estimator)
    second = estimator in EVERY_ORDER
    per_grad, per_hv, g = particle_estimates(two_nodes, THETA2, V2, estimator, second=second)
    assert_within(per_grad, grad, f"{estimator} gradient")
    if second:
        assert_within(per_hv, hess @ V2, f"{estimator} Hessian-vector product")
        assert g.first_order_only == []
    else:
        assert g.first_order_only == ["z2"]


def test_the_terminal_estimators_lower_the_variance_below_the_score_function():
    variance = {}
    for est in ["score", "disarm", "rebar", "enumerate"]:
        per_grad, _, _ = particle_estimates(two_nodes, THETA2, V2, est, n=4000, second=False)
        variance[est] = float(per_grad.var(0).sum())
    assert variance["enumerate"] < variance["disarm"] < variance["score"]
    assert variance["rebar"] < variance["score"]


# ── three nodes: Categorical → two Bernoulli bits → Categorical (terminal) ─────────────────


def three_nodes(g, theta, estimator):
    a0, a1, a2, b0, b1, w, c0, c1, c2 = theta.unbind(-1)
    z1 = g.sample("z1", Categorical(logits=torch.stack([a0, a1, a2], -1)), "score-loo",
                  batched=theta.dim() > 1)
    g.cost("early", torch.tensor([0.5, -1.0, 2.0])[z1])
    z2 = g.sample("z2", Bernoulli(logits=torch.stack([b0 + w * z1, b1 - w * z1], -1)), "score-loo")
    g.cost("bits", (z2 - 0.4) ** 2)
    logits3 = torch.stack([c0, c1, c2], -1) + z2.sum(-1, keepdim=True) * torch.tensor([0.0, 0.5, -0.5])
    g.sample("z3", Categorical(logits=logits3), estimator,
             then=lambda z3: (z3.to(z2.dtype) - z1.to(z2.dtype)) ** 2 + 0.3 * z2[:, 0] + c1 * z3)


THETA3 = torch.tensor([0.2, -0.4, 0.1, 0.3, -0.2, 0.5, 0.0, 0.4, -0.3])
V3 = torch.linspace(-1.0, 1.0, 9)


@pytest.mark.parametrize("estimator", ["unordered-set=2", "enumerate", "score-loo"])
def test_three_node_graph_with_a_categorical_terminal(estimator):
    grad, hess = exact_derivatives(three_nodes, THETA3, estimator)
    second = estimator != "unordered-set=2"
    per_grad, per_hv, _ = particle_estimates(three_nodes, THETA3, V3, estimator, second=second)
    assert_within(per_grad, grad, f"{estimator} gradient")
    if second:
        assert_within(per_hv, hess @ V3, f"{estimator} Hessian-vector product")


def bernoulli_terminal(g, theta, estimator):
    """Categorical → Bernoulli → three Bernoulli bits (terminal, per-bit cost summed)."""
    a0, a1, a2, b, w, c = theta.unbind(-1)
    z1 = g.sample("z1", Categorical(logits=torch.stack([a0, a1, a2], -1)), "score", batched=theta.dim() > 1)
    z2 = g.sample("z2", Bernoulli(logits=b + w * z1), "score-loo")
    logits3 = c.unsqueeze(-1) + torch.stack([z2, -z2, z1.to(z2.dtype)], -1)
    g.sample("z3", Bernoulli(logits=logits3), estimator,
             then=lambda z3: ((z3 - 0.45) ** 2 * torch.tensor([1.0, 2.0, 3.0])).sum(-1) + z2 * z3[:, 0])


@pytest.mark.parametrize("estimator", ["arm", "disarm", "rebar"])
def test_three_node_graph_with_a_bernoulli_terminal(estimator):
    theta = torch.tensor([0.1, 0.3, -0.2, 0.4, -0.7, 0.2])
    grad, _ = exact_derivatives(bernoulli_terminal, theta, estimator)
    per_grad, _, _ = particle_estimates(bernoulli_terminal, theta, None, estimator, second=False)
    assert_within(per_grad, grad, f"{estimator} gradient")


# ── a callable node's own term is the single-node estimator's, seed for seed ──────────────


@pytest.mark.parametrize("estimator", ["arm", "disarm", "rebar", "relax", "unordered-set=3"])
def test_a_root_callable_node_gives_the_single_node_estimates(estimator):
    n = 64
    categorical = estimator.startswith("unordered")
    shape = (4,) if categorical else (3,)
    logits = torch.linspace(-0.6, 0.8, shape[0], dtype=torch.float64).requires_grad_(True)
    if categorical:
        def f(x):
            return (x.to(torch.float64) - 1.2) ** 2
        family = Categorical
    else:
        def f(x):
            return ((x - 0.45) ** 2).sum(-1) + x[:, 0] * x[:, 1]
        family = Bernoulli
    single = get_estimator(estimator).per_sample(f, family, {"logits": logits}, n, make_generator(3))
    with graph(make_generator(3), n) as g:
        value = g.sample("z", family(logits=logits), estimator, then=f)
    found = g.per_node({"logits": logits})
    assert torch.allclose(value, single.values.to(value.dtype), rtol=1e-12)
    assert torch.allclose(found.grads["z"]["logits"], single.grads["logits"], rtol=1e-10, atol=1e-12)
    assert not found.grads["direct"]["logits"].any()


@pytest.mark.parametrize("estimator", ["gumbel-softmax=0.5", "straight-through", "gumbel-st=0.7"])
def test_a_relaxed_node_gives_the_single_node_estimates(estimator):
    n = 50
    logits = torch.tensor([0.3, -0.8], dtype=torch.float64, requires_grad=True)

    def f(x):
        return ((x - 0.45) ** 2).sum(-1) + x[:, 0] * x[:, 1]

    single = get_estimator(estimator).per_sample(f, Bernoulli, {"logits": logits}, n, make_generator(5))
    with graph(make_generator(5), n) as g:
        x = g.sample("z", Bernoulli(logits=logits), estimator)
        g.cost("c", f(x))
    found = g.per_node({"logits": logits})
    assert set(found.grads) == {"z", "direct"}
    assert torch.allclose(found.grads["z"]["logits"], single.grads["logits"], rtol=1e-10, atol=1e-12)
    grad = torch.autograd.grad(g.surrogate(), logits)[0]
    assert torch.allclose(grad, single.grads["logits"].mean(0), rtol=1e-10)


def test_gumbel_softmax_bias_in_a_graph_shrinks_with_the_temperature():
    """Two nodes, the root relaxed: the bias against enumeration falls as τ → 0 (f smooth)."""
    theta = torch.tensor([0.3, -0.5, 1.2])

    def model(g, th, est):
        a, b, w = th.unbind(-1)
        z1 = g.sample("z1", Bernoulli(logits=a), est, batched=th.dim() > 1)
        z2 = g.sample("z2", Bernoulli(logits=b + w * z1), "score-loo")
        g.cost("c", (z1 + 2.0 * z2 - 1.3) ** 2)

    grad, _ = exact_derivatives(model, theta, "score")
    bias = {}
    for tau in (1.0, 0.1):
        per_grad, _, _ = particle_estimates(model, theta, None, f"gumbel-softmax={tau}", n=40_000,
                                            second=False)
        err = per_grad.mean(0) - grad
        stderr = per_grad.std(0) / math.sqrt(per_grad.shape[0])
        bias[tau] = (float(err[2]), float(stderr[2]))  # ∂/∂w: the relaxed z1 reaches z2's logits
    assert abs(bias[1.0][0]) > Z_TOL * bias[1.0][1]  # biased at τ = 1, measurably (−0.15)
    assert abs(bias[0.1][0]) + Z_TOL * bias[0.1][1] < abs(bias[1.0][0]) / 2  # (−0.018 at τ = 0.1)


# ── the costs' own gradient split among pathwise nodes ─────────────────────────────────────


def test_pathwise_split_by_where_theta_enters_against_the_chain_rule():
    n = 32
    loc = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    w = torch.tensor(1.4, dtype=torch.float64, requires_grad=True)
    m = torch.tensor(-0.2, dtype=torch.float64, requires_grad=True)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    with graph(make_generator(2), n) as g:
        x = g.sample("x", Normal(loc, 1.0), "pathwise")
        y = g.sample("y", Normal(w * x + m, 1.0), "pathwise")
        g.cost("c", y**2 + c * loc + w * x)
    found = g.per_node({"loc": loc, "w": w, "m": m, "c": c})
    x, y = x.detach(), y.detach()
    zero = torch.zeros(n, dtype=torch.float64)
    # dC/dθ along: θ's use in x (loc: through y and through w·x), in y (w, m), direct (c·loc, w·x)
    want = {
        "x": {"loc": 2 * y * w.detach() + w.detach(), "w": zero, "m": zero, "c": zero},
        "y": {"loc": zero, "w": 2 * y * x, "m": 2 * y, "c": zero},
        "direct": {"loc": c.detach().expand(n), "w": x, "m": zero, "c": loc.detach().expand(n)},
    }
    assert set(found.grads) == set(want)
    for group, grads in want.items():
        for name, value in grads.items():
            assert torch.allclose(found.grads[group][name], value, rtol=1e-12, atol=1e-14), (group, name)
    att = attribute(found)
    assert att.nodes["direct"] < att.nodes["y"] and att.stderr["y"] > 0 and att.num_samples == n


def test_node_means_are_the_per_node_means():
    a = torch.tensor(0.4, requires_grad=True)
    loc = torch.tensor(0.1, requires_grad=True)
    with graph(make_generator(4), 40) as g:
        z1 = g.sample("z1", Bernoulli(logits=a), "score-loo")
        z2 = g.sample("z2", Normal(loc + z1, 1.0), "pathwise")
        g.sample("z3", Bernoulli(logits=z2), "disarm", then=lambda z3: (z3 - 0.3 * z2) ** 2)
    found = g.per_node({"a": a, "loc": loc})
    means = g.node_means({"a": a, "loc": loc})
    assert set(means) == set(found.grads) == {"z1", "z3", "z2", "direct"}
    for group in means:
        for name in ("a", "loc"):
            want = found.grads[group][name].mean(0)
            assert torch.allclose(means[group][name], want, rtol=1e-10, atol=1e-14)


# ── refusals ───────────────────────────────────────────────────────────────────────────────


def test_what_cannot_be_a_node_is_refused_with_the_alternative():
    p = torch.tensor(0.3)
    with graph(make_generator(0), 4) as g:
        for spec, message in [
            ("mvd", "at perturbed points, so it is refused as a graph node; use 'score-loo'"),
            ("score-delta", "fits control-variate coefficients"),
            ("score-optb", "fits control-variate coefficients"),
            ("score-ema", "moving average across calls.*use 'score-loo'"),
            ("score-loo+antithetic", "drop the '\\+…' suffix"),
            ("disarm", "give it as then=fn"),
            ("unordered-set", "samples Categorical values without replacement, not Bernoulli"),
            ("gumbel-softmax", "relaxes Bernoulli and one-hot samples, not Categorical"),
        ]:
            dist = Categorical(logits=torch.zeros(3)) if spec == "gumbel-softmax" else Bernoulli(logits=p)
            with pytest.raises(GradestError, match=message):
                g.sample("z", dist, spec, then=None if spec == "disarm" else (lambda z: z.float()))
        g.sample("t", Bernoulli(logits=p), "disarm", then=lambda z: z)
        with pytest.raises(GradestError, match="node 't' is terminal"):
            g.cost("c", torch.zeros(4), parents=("t",))
        with pytest.raises(GradestError, match=r"then= must return a floating-point cost \[4\]"):
            g.sample("u", Bernoulli(logits=p), "arm", then=lambda z: z.sum())
        with pytest.raises(GradestError, match="then= must be a callable"):
            g.sample("v", Bernoulli(logits=p), "score", then=3)
        with pytest.raises(GradestError, match="more than max_support = 4096"):
            g.sample("w", Bernoulli(logits=torch.zeros(13)), "enumerate", then=lambda z: z.sum(-1))


def test_training_graphs_advance_an_annealing_schedule_and_learn_relax_controls():
    from gradest.estimators import Annealing, GumbelSoftmax

    logits = torch.tensor([0.2, -0.4], dtype=torch.float64, requires_grad=True)
    relaxed = GumbelSoftmax(Annealing(start=1.0, minimum=0.1, rate=0.5))
    relax = get_estimator("relax")
    temperatures = []
    for step in range(3):
        with graph(make_generator(step), 32, learn=True) as g:
            x = g.sample("x", Bernoulli(logits=logits), relaxed)
            g.sample("z", Bernoulli(logits=logits + x), relax, then=lambda z: ((z - 0.45) ** 2).sum(-1))
        temperatures.append(relaxed.temperature)
    assert temperatures == pytest.approx([math.exp(-0.5 * k) for k in (1, 2, 3)])
    assert relax.steps == 3
    with graph(make_generator(9), 32) as g:  # a diagnostic graph changes nothing
        g.sample("x", Bernoulli(logits=logits), relaxed)
        g.sample("z", Bernoulli(logits=logits), relax, then=lambda z: ((z - 0.45) ** 2).sum(-1))
    assert relaxed.steps == 3 and relax.steps == 3


def test_the_value_a_terminal_node_returns_cannot_be_counted_twice():
    """A then= node's returned cost is a cost of the graph already: adding it again (as a cost, or in a
    later node) would double the upstream learning signal but not the node's own term — refused."""
    w = torch.tensor([0.2, -0.4], dtype=torch.float64, requires_grad=True)

    def model(g, again):
        b1 = g.sample("b1", Bernoulli(logits=w[0]), "score-loo")
        c = g.sample("b2", Bernoulli(logits=w[1] + b1), "disarm", then=lambda b2: (b1 + b2 - 0.45) ** 2)
        again(g, c)
        return c

    for again in (lambda g, c: g.cost("c", c), lambda g, c: g.cost("c", 2 * c + 1),
                  lambda g, c: g.sample("b3", Bernoulli(logits=c), "score")):
        with pytest.raises(GradestError, match="already a cost of the graph"):
            with graph(make_generator(0), num_samples=8) as g:
                model(g, again)
        with pytest.raises(GradestError, match="already a cost of the graph"):
            enumerate_graph(lambda g, again=again: model(g, again))
    # read, not counted: fine, and the numbers are the node's estimates
    with graph(make_generator(0), num_samples=8) as g:
        c = model(g, lambda g, c: None)
    assert c.shape == (8,) and torch.isfinite(c).all()


@pytest.mark.parametrize("est", ["score", "enumerate", "disarm"])
def test_a_then_cost_is_downstream_of_every_earlier_node_whatever_parents_says(est):
    """parents= names what the node's distribution depends on; its then= cost may use any earlier sample,
    so an upstream score node's term must see that cost (it used to be dropped: a zero gradient)."""
    a = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64, requires_grad=True)
    c0 = torch.tensor([-0.2, 0.4, 0.1], dtype=torch.float64, requires_grad=True)

    def model(g, name):
        z1 = g.sample("z1", Bernoulli(logits=a), "score")
        g.sample("z3", Bernoulli(logits=c0), name, parents=(),
                 then=lambda z3: ((z3 + 2 * z1) ** 2).sum(-1))

    exact = torch.cat([t.reshape(-1) for t in torch.autograd.grad(
        enumerate_graph(lambda g: model(g, "score")), [a, c0])])
    n = 20_000
    with graph(make_generator(1), num_samples=n) as g:
        model(g, est)
    total = g.per_node({"a": a, "c0": c0}).total
    rows = torch.cat([total["a"], total["c0"]], dim=1)
    z = (rows.mean(0) - exact) / (rows.std(0) / n**0.5)
    assert exact[:3].abs().min() > 1.0  # the upstream parameter's gradient is far from zero
    assert z.abs().max() < Z_TOL, z


def test_a_second_derivative_through_a_first_order_node_is_refused():
    """disarm's hook returns a detached ĝ: its Hessian would miss ∂ĝ/∂θ (0.18 against the exact 0.2346),
    so differentiating twice is refused; an enumerate node still differentiates to every order."""
    a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    k = torch.tensor(0.8, dtype=torch.float64, requires_grad=True)

    def model(g, est):
        z1 = g.sample("z1", Bernoulli(logits=a), "score")
        g.sample("z3", Bernoulli(logits=k * z1 - 0.2), est, then=lambda z: (z - 0.3 * k) ** 2 + z * k)

    (gk,) = torch.autograd.grad(enumerate_graph(lambda g: model(g, "score")), k, create_graph=True)
    (exact,) = torch.autograd.grad(gk, k)
    with graph(make_generator(0), num_samples=2000) as g:
        model(g, "disarm")
    (first,) = torch.autograd.grad(g.surrogate(), k, retain_graph=True)  # first order: fine
    assert torch.isfinite(first)
    with pytest.raises(GradestError, match="first derivatives only"):
        torch.autograd.grad(g.surrogate(), k, create_graph=True)
    assert g.per_node({"a": a, "k": k}).total["k"].shape == (2000,)  # the split still works
    with graph(make_generator(0), num_samples=2000) as g:
        model(g, "enumerate")
    (gk,) = torch.autograd.grad(g.surrogate(), k, create_graph=True)  # every order: not refused
    (second,) = torch.autograd.grad(gk, k)  # (checked against enumeration in the second-order tests)
    assert torch.isfinite(second) and exact > 0.2


def test_a_root_node_with_n_rows_is_not_taken_for_a_batched_one():
    """parents=() means no upstream sample: a parameter of N rows is N variables per particle."""
    theta = torch.tensor([0.2, -0.3, 0.5], dtype=torch.float64)
    with graph(make_generator(0), num_samples=3) as g:
        g.sample("z0", Bernoulli(logits=torch.tensor(0.0, dtype=torch.float64)), "score")
        z1 = g.sample("z1", Bernoulli(logits=theta), "score", parents=())
    assert z1.shape == (3, 3)


# ── a user's estimator (the extending tutorial's, verbatim) as a graph node ───────────────────


class TutorialLooScore(gradest.Estimator):
    """Score function with a leave-one-out baseline: (f(x_n) − mean of the others) ∇θ log p(x_n; θ)."""

    name = "my-loo-score"
    capabilities = gradest.Capabilities(fixed_support=True, interior=True)
    min_samples = 2
    couples_samples = True

    def terms(self, cost, node, generator):
        x = self.draw(node, generator, reparameterized=False)
        fx = cost(x)
        signal = fx.detach()
        n = signal.shape[0]
        weight = signal - (signal.sum(0) - signal) / (n - 1)
        log_p = node.dist.log_prob(x)
        weight = weight.reshape(*weight.shape, *[1] * (log_p.dim() - weight.dim()))
        carrier = (weight * log_p).sum()
        if fx.requires_grad:
            carrier = carrier + fx.sum()
        return gradest.Terms(carrier=carrier, explicit=[], values=signal.reshape(n, -1).sum(1))


def test_a_users_estimator_is_a_callable_node_by_default():
    """Declared nothing about graphs: it runs as a terminal node on its then= cost, against enumeration."""
    assert TutorialLooScore().capabilities.node == "callable"
    grad, _ = exact_derivatives(two_nodes, THETA2, "score")
    per_grad, _, _ = particle_estimates(two_nodes, THETA2, V2, TutorialLooScore(), second=False)
    assert_within(per_grad, grad, "the tutorial's estimator as the terminal node")


def test_a_users_estimator_on_a_continuous_node_below_a_score_node():
    """z1 ~ Bernoulli(σ(a)), z2 ~ Normal(μ + w z1, 1), cost (z2 − 1)²: E = E_z1[(μ + w z1 − 1)² + 1]."""
    theta = torch.tensor([0.4, -0.3, 0.8])

    def model(g, th):
        a, mu, w = th.unbind(-1)
        z1 = g.sample("z1", Bernoulli(logits=a), "score-loo", batched=th.dim() > 1)
        g.sample("z2", Normal(mu + w * z1, torch.ones(())), TutorialLooScore(),
                 then=lambda z2: (z2 - 1.0) ** 2)

    a, mu, w = theta.tolist()
    p = 1 / (1 + math.exp(-a))
    exact = torch.tensor([p * (1 - p) * ((mu + w - 1) ** 2 - (mu - 1) ** 2),
                          2 * (p * (mu + w - 1) + (1 - p) * (mu - 1)),
                          2 * p * (mu + w - 1)])
    rows = theta.expand(N, 3).clone().requires_grad_(True)
    with graph(make_generator(3), N) as g:
        model(g, rows)
    (grad,) = torch.autograd.grad(g.surrogate() * N, rows)
    assert_within(grad, exact, "the tutorial's estimator on a Normal node")
