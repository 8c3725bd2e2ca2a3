"""Per-node variance attribution: batched single-particle gradients against a brute-force loop,
and single-sample variances against their closed forms."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from conftest import Z_TOL
from gradest.errors import GradestError
from gradest.graph import attribute, graph
from gradest.rng import make_generator


def mixed_graph(n, seed=0):
    params = {
        "a": torch.tensor(0.4, requires_grad=True),
        "loc": torch.tensor([0.2, -0.1], requires_grad=True),
        "log_scale": torch.tensor(-0.3, requires_grad=True),
        "k": torch.tensor(1.3, requires_grad=True),
    }
    with graph(make_generator(seed), n) as g:
        z1 = g.sample("z1", Bernoulli(logits=params["a"]), "score-loo")
        g.cost("first", 2.0 * z1)
        loc = params["loc"] + z1.unsqueeze(-1)  # [N, 2]
        z2 = g.sample("z2", Normal(loc, params["log_scale"].exp()), "pathwise")
        z3 = g.sample("z3", Bernoulli(logits=params["k"] * z2), "score")  # [N, 2]
        g.cost("second", ((z2 - 1.0) ** 2).sum(-1) + z3.sum(-1))
        g.cost("per_bit", z3 * z2)  # [N, 2]: bit i with its own z2_i
    return g, params


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_per_node_matches_a_brute_force_loop(mode):
    n = 40
    g, params = mixed_graph(n)
    found = g.per_node(params, mode)
    groups = g.groups()
    assert set(found.grads) == {"z1", "z3", "z2", "direct"}  # the pathwise group is named after its node
    for group, rows in groups.items():
        for i in range(n):
            loop = torch.autograd.grad(rows[i], list(params.values()), retain_graph=True, allow_unused=True)
            for (name, p), want in zip(params.items(), loop, strict=True):
                want = torch.zeros_like(p) if want is None else want
                # the costs' own gradient is split between the pathwise node and θ's direct use (none here)
                got = found.grads["z2"][name][i] + found.grads["direct"][name][i] if group == "costs" \
                    else found.grads[group][name][i]
                assert torch.allclose(got, want, rtol=1e-12, atol=1e-14), (group, name, i)
                assert not found.grads["direct"][name].any()
    rows = g.rows()
    for i in range(n):
        loop = torch.autograd.grad(rows[i], list(params.values()), retain_graph=True)
        for name, want in zip(params, loop, strict=True):
            assert torch.allclose(found.total[name][i], want, rtol=1e-12, atol=1e-14)


def test_groups_sum_to_the_surrogate_gradient_and_variances_to_a_loop():
    n = 300
    g, params = mixed_graph(n, seed=1)
    found = g.per_node(params)
    want = torch.autograd.grad(g.surrogate(), list(params.values()), retain_graph=True)
    for name, w in zip(params, want, strict=True):
        assert torch.allclose(found.total[name].mean(0), w, rtol=1e-12, atol=1e-14)
    att = attribute(found)
    for group, grads in found.grads.items():
        brute = 0.0
        for g_param in grads.values():
            flat = g_param.reshape(n, -1)
            mean = flat.mean(0)
            brute += sum(float(((flat[i] - mean) ** 2).sum()) for i in range(n)) / (n - 1)
        assert math.isclose(att.nodes[group], brute, rel_tol=1e-10)
    assert math.isclose(att.covariance, att.total - sum(att.nodes.values()), rel_tol=1e-12, abs_tol=1e-12)
    assert math.isclose(sum(att.shares().values()), 1.0)
    g.surrogate().backward()  # the graph survives the diagnostics
    assert params["k"].grad is not None


def two_point_variance(values, probs):
    """Variance and the standard error of a sample variance of a two-point variable (n = 1)."""
    mean = sum(p * v for v, p in zip(values, probs, strict=True))
    central = [v - mean for v in values]
    m2 = sum(p * c**2 for c, p in zip(central, probs, strict=True))
    m4 = sum(p * c**4 for c, p in zip(central, probs, strict=True))
    return m2, math.sqrt(m4 - m2**2)


def test_attribution_finds_the_noisy_node_at_its_closed_form_variance():
    n = 20_000
    a = torch.tensor(0.5, requires_grad=True)
    b = torch.tensor(-0.4, requires_grad=True)
    with graph(make_generator(7), n) as g:
        z1 = g.sample("z1", Bernoulli(logits=a))
        g.cost("loud", 10.0 * z1)  # upstream of z2: weights z1's score only
        z2 = g.sample("z2", Bernoulli(logits=b), parents=())  # by default z1 would be upstream
        g.cost("quiet", (z2 - 0.3) ** 2, parents=("z2",))  # of z2, and so of this cost too
    att = attribute(g.per_node({"a": a, "b": b}))
    p, q = float(torch.sigmoid(a.detach())), float(torch.sigmoid(b.detach()))
    # ĝ_a = 10 z1 (z1 − p) and ĝ_b = (z2 − 0.3)² (z2 − q): two-point variables
    for node, values, probs in (("z1", (10.0 * (1 - p), 0.0), (p, 1 - p)),
                                ("z2", (0.49 * (1 - q), -0.09 * q), (q, 1 - q))):
        var, spread = two_point_variance(values, probs)
        assert abs(att.nodes[node] - var) < Z_TOL * spread / math.sqrt(n), (node, att.nodes[node], var)
    assert att.nodes["z1"] > 100 * att.nodes["z2"]
    assert att.nodes["direct"] == 0.0


def test_per_node_takes_a_sequence_and_refuses_constants():
    g, params = mixed_graph(8)
    found = g.per_node(list(params.values()))
    assert set(found.total) == {"param0", "param1", "param2", "param3"}
    assert found.total["param1"].shape == (8, 2)
    with pytest.raises(GradestError, match="requires_grad=True"):
        g.per_node({"c": torch.tensor(1.0)})


def test_variance_standard_errors_match_the_spread_over_seeds():
    """The reported stderr of each node's variance against the spread of 40 independent repeats
    (the ratio's own relative spread is about 1/√78 ≈ 11%)."""
    def one(seed):
        g, params = mixed_graph(200, seed=seed)
        return attribute(g.per_node(params))

    found = [one(100 + s) for s in range(40)]
    for node in ("z1", "z2", "z3"):
        values = torch.tensor([a.nodes[node] for a in found])
        reported = sum(a.stderr[node] for a in found) / len(found)
        assert 0.6 < float(values.std()) / reported < 1.5, (node, float(values.std()), reported)


def test_report_page_shows_every_node_with_its_standard_error(tmp_path):
    import gradest

    g, params = mixed_graph(300, seed=2)
    path = tmp_path / "attribution.html"
    page = gradest.graph.report(g, path, params)
    assert path.read_text(encoding="utf-8") == page
    assert page.count("data:image/png;base64") == 1
    att = attribute(g.per_node(params))
    for node in ("z1", "z2", "z3", "direct", "total"):
        assert f'<td class="n">{node}</td>' in page
    assert f"{att.nodes['z1']:.4g}" in page and f"{att.stderr['z1']:.4g}" in page
    with pytest.raises(GradestError, match="needs params"):
        gradest.graph.report(g)
