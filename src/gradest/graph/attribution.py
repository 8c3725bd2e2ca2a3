"""Which node makes the gradient noisy: per-node single-particle gradients of a built graph
and their variances with standard errors (see :mod:`gradest.graph`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

from gradest import health
from gradest.errors import GradestError, NonFiniteError
from gradest.graph.dice import align, baselines, per_particle, values
from gradest.graph.jacobian import jacobian_rows
from gradest.graph.records import Attribution, NodeGradients
from gradest.stats import Statistics, gradient_statistics

if TYPE_CHECKING:
    from gradest.graph.model import Graph


def group_statistics(grads: Mapping[str, torch.Tensor]) -> Statistics:
    """The gradient statistics (:func:`gradest.stats.gradient_statistics`, the one home of the trace
    variance and its standard error) of a group's single-particle gradients, parameters joined."""
    return gradient_statistics(torch.cat([g.reshape(g.shape[0], -1) for g in grads.values()], 1))


def attribute(node_grads: NodeGradients) -> Attribution:
    """Which node makes the gradient noisy: the single-sample variance of each node's term."""
    if not isinstance(node_grads, NodeGradients):
        raise GradestError(f"attribute takes the NodeGradients of Graph.per_node(params), got "
                           f"{type(node_grads).__name__}")
    per_group = {k: group_statistics(g) for k, g in node_grads.grads.items()}
    whole = group_statistics(node_grads.total)
    nodes = {k: s.variance for k, s in per_group.items()}
    stderr = {k: s.variance_stderr for k, s in per_group.items()} | {"total": whole.variance_stderr}
    n = int(node_grads.values.shape[0])
    return Attribution(nodes, whole.variance, whole.variance - sum(nodes.values()), stderr, n)


def node_rows(g: Graph) -> dict[str, torch.Tensor]:
    """Node -> ``[N]`` rows whose first derivatives are the node's own term, per particle
    (score and callable nodes), and ``"costs"``: the rows of the costs' own gradient, which
    :meth:`per_node` splits among the reparameterized nodes and ``"direct"``."""
    if not g.costs:
        raise GradestError("the graph has no cost; add one with g.cost(name, tensor)")
    by_node: dict[str, list[tuple[torch.Size, torch.Tensor]]] = {}
    for w, shape, b in baselines(g):
        by_node.setdefault(w.name, []).append((shape, b))
    out: dict[str, torch.Tensor] = {}
    for name, node in g.nodes.items():
        if node.log_prob is not None:
            row: torch.Tensor | float = 0.0
            for c in g.costs.values():
                if name in c.ancestors:
                    row = row + per_particle(g, c.value.detach() * align(node.log_prob, c.value.shape))
            for shape, b in by_node.get(name, []):
                row = row - per_particle(g, b * align(node.log_prob, shape))
            if isinstance(row, torch.Tensor):
                out[name] = row
        elif node.kind == "callable":
            out[name] = g.costs[name].own
    out["costs"] = sum(per_particle(g, c.value if c.direct is None else c.direct)
                       for c in g.costs.values())
    return out


def split(g: Graph, params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], mode: str | None,
           reduce: bool) -> dict[str, dict[str, torch.Tensor]]:
    """group -> param name -> ``[N, *shape]`` single-particle gradients (``[1, *shape]``, their
    mean, with ``reduce``)."""
    if not isinstance(params, Mapping):
        params = {f"param{i}": p for i, p in enumerate(params)}
    if not params or not all(isinstance(p, torch.Tensor) and p.requires_grad for p in params.values()):
        raise GradestError("per_node needs parameters: a mapping name -> tensor with requires_grad=True")
    groups = node_rows(g)
    costs = groups.pop("costs")
    names, targets = list(params), list(params.values())
    width = 1 if reduce else g.num_samples

    def shaped(rows: torch.Tensor) -> torch.Tensor:
        return rows.mean(0, keepdim=True) if reduce else rows.reshape(width)

    out: dict[str, dict[str, torch.Tensor]] = {}
    if groups:
        jac = jacobian_rows(torch.cat([shaped(r) for r in groups.values()]), targets, mode)
        for i, group in enumerate(groups):
            out[group] = {k: j[i * width:(i + 1) * width].detach()
                          for k, j in zip(names, jac, strict=True)}
    # the costs' gradient with the first k reparameterized nodes blocked, k = 0 … K: D_k
    gated = [k for k, v in g.nodes.items() if v.kind == "reparameterized"]
    blocked = []
    for k in range(len(gated) + 1):
        g._blocked = frozenset(gated[:k])
        try:
            jac = jacobian_rows(shaped(costs), targets, mode)
        finally:
            g._blocked = frozenset()
        blocked.append({name: j.detach() for name, j in zip(names, jac, strict=True)})
    for i, node in enumerate(gated):  # paths that start at θ's use in node i: D_i − D_{i+1}
        out[node] = {k: blocked[i][k] - blocked[i + 1][k] for k in names}
    out["direct"] = blocked[-1]
    return {k: out[k] for k in [*g.nodes, "direct"] if k in out}  # in the order of sampling


def per_node(g: Graph, params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
             mode: str | None = None) -> NodeGradients:
    """Single-particle gradients of each group with respect to ``params``, batched.

    ``mode``: how :func:`jacobian_rows` differentiates (default: forward for fewer parameter
    coordinates than rows, else reverse). The graph is retained, so ``surrogate().backward()``
    still works afterwards.
    """
    g._check_paths()  # rows that are single-particle gradients: no particle mixing through pathwise draws
    for node in g.nodes.values():  # a diagnostic: a score node's draws held to per_sample's standard
        if node.dist is not None and node.value is not None:
            health.check(node.dist, node.value, node.health, training=False,
                         what=f"node {node.name!r} ({node.estimator}): ")
    out = split(g, params, mode, reduce=False)
    names = list(next(iter(out.values())))
    total = {k: sum(out[g][k] for g in out) for k in names}
    _refuse_non_finite(out, total)
    coupled = tuple(k for k, node in g.nodes.items() if node.couples)
    return NodeGradients(out, total, values(g), coupled)


def _refuse_non_finite(out: dict[str, dict[str, torch.Tensor]], total: dict[str, torch.Tensor]) -> None:
    """Refuse rows that are NaN or inf (the costs are finite: the graph checked them)."""
    for name, rows in total.items():
        if bool(torch.isfinite(rows.sum())) or bool(torch.isfinite(rows).all()):
            continue
        n = rows.shape[0]
        bad = int((~torch.isfinite(rows)).reshape(n, -1).any(1).sum())
        group = next((k for k, d in out.items() if not bool(torch.isfinite(d[name]).all())), None)
        where = "" if group is None else \
            " in θ's direct use" if group == "direct" else f" through node {group!r}"
        raise NonFiniteError(
            f"the single-particle gradients of {name!r}{where} are NaN or inf on {bad} of {n} particles "
            f"although every cost is finite: a derivative overflows in {rows.dtype} (a log-density's "
            "derivative at a scale near the dtype's limits: 1/σ³ at σ = 1e-17 in float32) or is undefined "
            "(sqrt or log at 0 in a cost); work in float64, keep the parameters well inside the dtype's "
            "range, or make the cost's derivative finite")


def node_means(g: Graph, params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor]
               ) -> dict[str, dict[str, torch.Tensor]]:
    """group -> param name -> the group's share of ∇ surrogate (the mean over the particles):
    one backward pass per group rather than N (what :class:`gradest.GradientMonitor` records)."""
    return {g: {k: v[0] for k, v in d.items()} for g, d in split(g, params, "reverse", True).items()}
