"""Per-stochastic-node records of the monitor, for a loss built with gradest.graph: against an
independent estimate (a loop of hand-written backward passes, R large), in the JSONL and
TensorBoard outputs, and without side effects on training."""

import math

import pytest
import torch
from torch.distributions import Bernoulli, Normal

from conftest import Z_TOL
from gradest import GradientMonitor
from gradest.errors import GradestError
from gradest.graph import graph
from gradest.monitor import gradient_statistics, read_jsonl
from gradest.rng import make_generator

PARTICLES = 8


class TwoNodes(torch.nn.Module):
    """z1 ~ Bernoulli(σ(a)) (score-loo), z2 ~ N(loc + w z1, 1) (pathwise), cost (z2 − 1)² + z1."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3, dtype=torch.float64))
        self.loc = torch.nn.Parameter(torch.tensor(-0.2, dtype=torch.float64))
        self.w = torch.nn.Parameter(torch.tensor(1.1, dtype=torch.float64))

    def build(self, generator):
        with graph(generator, PARTICLES) as g:
            z1 = g.sample("z1", Bernoulli(logits=self.a), "score-loo")
            z2 = g.sample("z2", Normal(self.loc + self.w * z1, 1.0), "pathwise")
            g.cost("c", (z2 - 1.0) ** 2 + z1)
        return g


def independent_node_estimates(model, repeats, seed):
    """Each node's share of one training gradient, by hand: a loop of backward passes."""
    gen = make_generator(seed)
    params = [model.a, model.loc, model.w]
    z1_rows, z2_rows = [], []
    for _ in range(repeats):
        p = torch.sigmoid(model.a)
        z1 = (torch.rand(PARTICLES, generator=gen, dtype=torch.float64) < p.detach()).to(torch.float64)
        eps = torch.randn(PARTICLES, generator=gen, dtype=torch.float64)
        z2 = model.loc + model.w * z1 + eps
        cost = (z2 - 1.0) ** 2 + z1
        c = cost.detach()
        signal = c - (c.sum() - c) / (PARTICLES - 1)  # the leave-one-out baseline
        logp = z1 * torch.log(p) + (1 - z1) * torch.log1p(-p)
        z1_rows.append(torch.stack(torch.autograd.grad((signal * logp).mean(), params, allow_unused=True,
                                                       materialize_grads=True)))
        z2_rows.append(torch.stack(torch.autograd.grad(cost.mean(), params, allow_unused=True,
                                                       materialize_grads=True)))
    return {"z1": torch.stack(z1_rows), "z2": torch.stack(z2_rows)}


def exact_shares(model):
    """E of each node's share: p(1 − p)(E[c | z1 = 1] − E[c | z1 = 0]) in a; E ∂c/∂(loc, w) along z2."""
    a, loc, w = (float(t.detach()) for t in (model.a, model.loc, model.w))
    p = 1 / (1 + math.exp(-a))
    z1 = [p * (1 - p) * ((loc + w - 1) ** 2 + 1 - (loc - 1) ** 2), 0.0, 0.0]
    z2 = [0.0, 2 * (loc + w * p - 1), 2 * p * (loc + w - 1)]
    return {"z1": torch.tensor(z1), "z2": torch.tensor(z2)}


def test_node_records_agree_with_an_independent_loop():
    model = TwoNodes()
    monitor = GradientMonitor(model, lambda batch, gen: model.build(gen), every=1, repeats=400, seed=11)
    records = {r.group: r for r in monitor.measure(0, batch=0)}
    assert {"node:z1", "node:z2", "node:direct", "all"} <= set(records)
    brute = independent_node_estimates(model, 3000, seed=12)
    for node in ("z1", "z2"):
        ours = records[f"node:{node}"]
        theirs = gradient_statistics(brute[node])
        assert ours.size == 3 and ours.repeats == 400
        spread = math.hypot(ours.variance_stderr, theirs.variance_stderr)
        assert abs(ours.variance - theirs.variance) < Z_TOL * spread, (node, ours, theirs)
        # |‖ḡ‖ − ‖∇‖| ≤ ‖ḡ − ∇‖, whose mean square is variance / R
        assert abs(ours.mean_norm - exact_shares(model)[node].norm()) < Z_TOL * math.sqrt(ours.variance / 400)
    assert records["node:direct"].variance == 0.0  # θ reaches the cost only through z2
    assert records["node:z1"].variance > records["node:z2"].variance / 100  # both measured, not zero


def test_node_records_go_to_jsonl_and_tensorboard(tmp_path):
    model = TwoNodes()

    class Writer:
        def __init__(self):
            self.tags = []

        def add_scalar(self, tag, value, step):
            self.tags.append(tag)

        def flush(self):
            pass

    writer = Writer()
    path = tmp_path / "monitor.jsonl"
    with GradientMonitor(model, lambda batch, gen: model.build(gen), every=2, repeats=4, jsonl=path,
                         tensorboard=writer) as monitor:
        for step in range(3):
            monitor.step(step, batch=0)
    lines = read_jsonl(path)
    assert [r["group"] for r in lines if r["step"] == 2][-3:] == ["node:z1", "node:z2", "node:direct"]
    assert "gradient/node:z1/variance" in writer.tags and "gradient/node:z2/snr" in writer.tags


def train(model, monitor, steps=6):
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    gen = make_generator(3)
    for step in range(steps):
        if monitor is not None:
            monitor.step(step, batch=0)
        opt.zero_grad()
        model.build(gen).surrogate().backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def test_the_monitor_leaves_a_graph_training_run_unchanged():
    plain = train(TwoNodes(), None)
    model = TwoNodes()
    monitor = GradientMonitor(model, lambda batch, gen: model.build(gen), every=2, repeats=5)
    watched = train(model, monitor)
    assert all(torch.equal(a, b) for a, b in zip(plain, watched, strict=True))
    assert any(r.group == "node:z1" for r in monitor.records)


def test_a_graph_loss_with_repeats_is_refused():
    model = TwoNodes()
    monitor = GradientMonitor(model, lambda batch, gen, repeats: model.build(gen), repeats=3)
    with pytest.raises(GradestError, match="drop loss_fn's repeats argument or use mode='loop'"):
        monitor.measure(0, batch=0)
