"""The DiCE surrogate of a built graph: every cost weighted by the magic box of the score nodes
upstream of it, and the baseline terms (see :mod:`gradest.graph`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from gradest.errors import GradestError
from gradest.graph.records import StochasticNode

if TYPE_CHECKING:
    from gradest.graph.model import Graph


def magic_box(tau: torch.Tensor) -> torch.Tensor:
    """𝔐(τ) = exp(τ − τ.detach()): value 1, gradient 𝔐(τ)∇τ, to every order."""
    return torch.exp(tau - tau.detach())  # detach: the value is fixed at 1, the derivatives are not


def align(log_prob: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """log p ``[N, *B]`` as seen by a cost ``[N, *C]``: summed over B past C, or broadcast over C."""
    batch, cost = log_prob.shape[1:], shape[1:]
    if batch[: len(cost)] == cost:
        return log_prob.reshape(*shape, -1).sum(-1)
    if len(batch) < len(cost) and cost[: len(batch)] == batch:
        return log_prob.reshape(*log_prob.shape, *([1] * (len(cost) - len(batch))))
    raise GradestError(
        f"a cost of shape {list(shape)} does not line up with a node of batch shape {list(log_prob.shape)}: "
        "a per-element cost's dimensions must be the leading batch dimensions of the nodes it depends "
        "on (or extend them); sum the cost to one value per particle, shape [N], otherwise"
    )


def leave_one_out(values: torch.Tensor) -> torch.Tensor:
    """b_n = mean of the other particles' values, per element."""
    n = values.shape[0]
    return (values.sum(0) - values) / (n - 1)


def score_nodes(g: Graph, names: frozenset[str]) -> list[StochasticNode]:
    return [g.nodes[k] for k in g.nodes if k in names and g.nodes[k].log_prob is not None]


def score_sum(g: Graph, names: frozenset[str], shape: torch.Size) -> torch.Tensor | float:
    out: torch.Tensor | float = 0.0
    for node in score_nodes(g, names):
        out = out + align(node.log_prob, shape)
    return out


def baselines(g: Graph) -> list[tuple[StochasticNode, torch.Size, torch.Tensor]]:
    """(w, shape, b_w) for every score node w with a baseline (b detached, aligned to ``shape``):
    score-loo, one per cost c downstream of w (the other particles' c); score-const, one of [N]."""
    out = []
    for node in g.nodes.values():
        if node.baseline is not None:
            like = node.log_prob
            b = torch.full((g.num_samples,), node.baseline, dtype=like.dtype, device=like.device)
            out.append((node, torch.Size((g.num_samples,)), b))
        if not node.loo:
            continue
        for c in g.costs.values():
            if node.name in c.ancestors:
                with torch.no_grad():  # a constant of the math: the other particles' costs
                    out.append((node, c.value.shape, leave_one_out(c.value.detach())))
    return out


def per_particle(g: Graph, t: torch.Tensor) -> torch.Tensor:
    return t.reshape(g.num_samples, -1).sum(1)


def rows(g: Graph) -> torch.Tensor:
    """s_n ``[N]``: the surrogate is their mean (the DiCE form above, per particle)."""
    if not g.costs:
        raise GradestError("the graph has no cost; add one with g.cost(name, tensor)")
    total: torch.Tensor | float = 0.0
    for c in g.costs.values():
        tau = score_sum(g, c.ancestors, c.value.shape)
        term = c.value * magic_box(tau) if isinstance(tau, torch.Tensor) else c.value
        total = total + per_particle(g, term)
    for w, shape, b in baselines(g):
        before = score_sum(g, g.nodes[w.name].ancestors, shape)
        before = before if isinstance(before, torch.Tensor) else torch.zeros(shape, dtype=b.dtype,
                                                                              device=b.device)
        after = before + align(w.log_prob, shape)
        total = total + per_particle(g, b * (magic_box(before) - magic_box(after)))
    return total


def values(g: Graph) -> torch.Tensor:
    """``[N]`` total cost per particle (detached)."""
    return sum(per_particle(g, c.value.detach()) for c in g.costs.values())
