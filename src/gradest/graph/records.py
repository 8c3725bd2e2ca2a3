"""The graph's records: its stochastic nodes and costs, the per-node gradients and their
variance attribution."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.distributions import Distribution

from gradest import health
from gradest.errors import GradestError, SampleHealthError
from gradest.stats import mean_stderr


@dataclass
class StochasticNode:
    """One sampled node: its draw ``value [N, *B, *E]`` (None for a callable node, whose hook draws
    privately), log p ``[N, *B]`` (score nodes) and ancestors.

    kind: ``"score"``, ``"reparameterized"`` or ``"callable"``; baseline: score-const's B;
    couples: its estimator makes one particle's term depend on the others (a leave-one-out baseline).
    """

    name: str
    estimator: str
    value: torch.Tensor | None
    log_prob: torch.Tensor | None
    ancestors: frozenset[str]
    kind: str = "score"
    baseline: float | None = None
    loo: bool = False
    first_order: bool = False
    #: the node's distribution and its estimator's ``Capabilities.health``: the per-particle split, a
    #: diagnostic, checks a score node's draws as ``per_sample`` does (gradest.health)
    dist: Distribution | None = None
    health: str = "none"
    couples: bool = False


@dataclass
class CostNode:
    """A cost ``[N]`` or ``[N, *C]`` (live) and its ancestors.

    A callable node's cost also carries ``own`` (``[N]`` rows whose first derivatives are the
    node's explicit estimate) and ``direct`` (rows for the costs' own gradient; default: the value).
    """

    name: str
    value: torch.Tensor
    ancestors: frozenset[str]
    own: torch.Tensor | None = None
    direct: torch.Tensor | None = None


class NodeGradients(NamedTuple):
    """Single-particle first-order gradients, split by node.

    grads: group -> param name -> ``[N, *param.shape]``; a group is a node (score, callable or
        reparameterized), or ``"direct"`` (θ's direct use in the costs).
    total: param name -> ``[N, *param.shape]``, the sum of the groups; its mean is ∇ surrogate.
    values: ``[N]`` total cost per particle.
    coupled: the nodes whose estimator couples the particles (``score-loo``: each particle's baseline
        is the others' mean), so that the rows are not independent.
    groups: ``[N]`` labels of the independent graphs the rows come from (:func:`combine`), or None
        for the rows of one graph.
    """

    grads: dict[str, dict[str, torch.Tensor]]
    total: dict[str, torch.Tensor]
    values: torch.Tensor
    coupled: tuple[str, ...] = ()
    groups: torch.Tensor | None = None

    @property
    def num_samples(self) -> int:
        """N, the number of particles (over all the graphs of :func:`combine`)."""
        return int(self.values.shape[0])

    def mean(self) -> dict[str, torch.Tensor]:
        """The estimate of ∂L/∂θ: the mean of the single-particle gradients (∇ surrogate), per parameter."""
        return {k: g.mean(0) for k, g in self.total.items()}

    def stderr(self) -> dict[str, torch.Tensor]:
        """Standard error of each mean: the rows' spread over √N where the particles are i.i.d. (N − 1
        degrees of freedom), the spread of the K graphs' means (:func:`combine`) where a node couples
        them (K − 1 degrees of freedom: read it with Student's t; K ≥ 16 gives it to about 20 %).

        Raises SampleHealthError where fewer than two particles carry a coordinate's estimate, or (one
        graph's i.i.d. rows) one to three particles set apart from the rest hold its spread
        (:func:`gradest.health.carried`: its standard error is those particles' values over N and
        cannot show what the particles missed), and
        GradestError where a node couples the particles and the rows are those of one graph (their
        spread misses the coupling's share of the variance: with f = x² under Categorical(½, ½) every
        score-loo row is equal), of graphs whose sizes differ by more than a factor 2 (the spread of
        their means then misweighs them), or of graphs whose means
        all agree while their rows vary (the same draws twice, or a tie that no spread can see)."""
        for k, g in self.total.items():
            reason = health.carried(g, k, independent=self.groups is None)
            if reason is not None:
                reason = reason.replace("draws", "particles").replace("that draw's", "that particle's")
                reason = reason.replace("draw N ≳", "build the graph with N ≳").replace(
                    " samples (some 25", " particles (some 25")
                reason = reason.replace("draw many more samples", "build the graph with many more particles")
                reason = reason.replace("gradest.exact_grad", "gradest.enumerate_graph, for discrete nodes")
                raise SampleHealthError(f"graph: {reason}")
        if self.coupled:
            self._check_graphs()
        return {k: mean_stderr(g, self.groups) for k, g in self.total.items()}

    def _check_graphs(self) -> None:
        """The refusals of :meth:`stderr` for rows coupled by a node (see there)."""
        names = ", ".join(repr(n) for n in self.coupled)
        why = (f"node {names} couples the particles (its estimator makes each particle's term depend on "
               "the others', as score-loo's baseline, the others' mean, does)")
        fix = ("build the graph K times on one generator (K ≥ 16, each on fresh draws, the same num_samples) "
               "and take gradest.graph.combine([g.per_node(params) for g in graphs]).stderr(), the spread "
               "of the graphs' means")
        if self.groups is None:
            raise GradestError(f"{why}, so the spread of one graph's rows misses the coupling's share of the "
                               f"variance; {fix}")
        sizes = torch.bincount(self.groups.long())
        sizes = sizes[sizes > 0]
        if sizes.numel() < 2:
            raise GradestError(f"{why}: its standard error is the spread of independent graphs' means, and "
                               f"these rows come from one graph; {fix}")
        if int(sizes.max()) > 2 * int(sizes.min()):
            raise GradestError(f"{why}: its standard error is the spread of the graphs' means, which assumes "
                               f"graphs alike, but their sizes run from {int(sizes.min())} to "
                               f"{int(sizes.max())} particles; {fix}")
        if health.frozen(torch.cat([g.reshape(g.shape[0], -1) for g in self.total.values()], 1),
                         self.groups.long()):
            raise GradestError(f"{why}: its standard error is the spread of the graphs' means, and the "
                               f"{sizes.numel()} graphs' means all agree while their rows vary (the same "
                               f"draws in each, or a tie the spread cannot see): it would read 0; {fix}")


def combine(records: Sequence[NodeGradients]) -> NodeGradients:
    """The rows of independent graphs (the same model built again on fresh draws) as one record: its
    mean is the particles' mean; its :meth:`~NodeGradients.stderr` the spread of the graphs' means
    where a node couples the particles (the rows are then labelled by graph), else the rows' spread.

    Raises GradestError for records of different models, and for records that all have the same rows
    (one graph given K times, or graphs built on generators seeded alike: not independent)."""
    records = list(records)
    if not records or not all(isinstance(r, NodeGradients) for r in records):
        raise GradestError("combine takes a list of NodeGradients (Graph.per_node(params) of independent "
                           "graphs of one model)")
    first = records[0]
    for i, r in enumerate(records[1:], 1):
        differs = _differs(first, r)
        if differs:
            raise GradestError(f"combine needs the per_node records of one model, but record {i} differs "
                               f"from record 0 in {differs}")
    _refuse_repeats(records)
    grads = {k: {p: torch.cat([r.grads[k][p] for r in records]) for p in v} for k, v in first.grads.items()}
    total = {p: torch.cat([r.total[p] for r in records]) for p in first.total}
    values = torch.cat([r.values for r in records])
    if not first.coupled:  # the particles of every graph are i.i.d.: the rows are the sample
        return NodeGradients(grads, total, values)
    labels, offset = [], 0
    for r in records:
        own = torch.zeros(r.num_samples, dtype=torch.long) if r.groups is None else r.groups.long()
        labels.append(own + offset)
        offset += int(own.max()) + 1 if own.numel() else 0
    return NodeGradients(grads, total, values, first.coupled, torch.cat(labels))


def _differs(a: NodeGradients, b: NodeGradients) -> str | None:
    """What record ``b`` has other than ``a`` (groups, coupling nodes, parameters, shapes), or None."""
    if a.grads.keys() != b.grads.keys():
        return f"its groups ({', '.join(b.grads)} against {', '.join(a.grads)})"
    if a.coupled != b.coupled:
        return f"the nodes that couple the particles ({b.coupled} against {a.coupled})"
    for k, v in a.grads.items():
        if b.grads[k].keys() != v.keys():
            return f"the parameters of group {k!r}"
        for p, t in v.items():
            if b.grads[k][p].shape[1:] != t.shape[1:]:
                return f"the shape of ∂/∂{p} ({list(b.grads[k][p].shape[1:])} against {list(t.shape[1:])})"
    return None


def _refuse_repeats(records: list[NodeGradients]) -> None:
    """Refuse records that all have the same rows where the rows vary: the same draws every time (one
    graph given K times, or K graphs on generators seeded alike). (Two of them alike by chance is
    possible for a few discrete particles, so only all alike is refused.)"""
    first = records[0]
    rows = torch.cat([g.reshape(g.shape[0], -1) for g in first.total.values()], 1)
    if len(records) < 2 or rows.shape[0] < 2 or bool((rows == rows[:1]).all()):
        return  # rows that do not vary are the same whatever the draws
    if all(all(torch.equal(r.total[p], first.total[p]) for p in first.total) for r in records[1:]):
        raise GradestError(
            f"the {len(records)} records have the same rows: the same graph given {len(records)} times, or "
            "graphs built on generators seeded alike, which are not independent; build every graph on fresh "
            "draws (one generator for all of them)")


class Attribution(NamedTuple):
    """Single-sample gradient variances (trace of the covariance, summed over the parameters).

    nodes: group -> variance of its term alone; total: variance of the whole single-sample gradient;
    covariance: total − Σ nodes (twice the summed covariances between the groups' terms);
    stderr: group (and ``"total"``) -> the standard error of that variance estimate;
    num_samples: the N single-particle gradients the variances come from.
    """

    nodes: dict[str, float]
    total: float
    covariance: float
    stderr: dict[str, float] | None = None
    num_samples: int | None = None

    def shares(self) -> dict[str, float]:
        """Each group's variance as a fraction of the sum of the groups' variances."""
        whole = sum(self.nodes.values())
        return {k: (v / whole if whole > 0 else 0.0) for k, v in self.nodes.items()}
