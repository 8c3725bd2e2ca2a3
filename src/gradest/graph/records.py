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
        """Standard error of each mean: the rows' spread over √N where the particles are i.i.d., the
        spread of the graphs' means (:func:`combine`) where a node couples them.

        Raises SampleHealthError where fewer than two particles carry a coordinate's estimate
        (:func:`gradest.health.carried`: its standard error is one particle's value over N and cannot
        show what the particles missed), and GradestError for the rows of one graph with a coupling
        node (their spread misses the coupling's share of the variance: with f = x² under
        Categorical(½, ½) every score-loo row is equal) or for fewer than two graphs."""
        for k, g in self.total.items():
            reason = health.carried(g, k)
            if reason is not None:
                raise SampleHealthError(f"graph: {reason.replace('draws', 'particles')}")
        if self.coupled:
            count = 1 if self.groups is None else int(torch.unique(self.groups).numel())
            if count < 2:
                names = ", ".join(repr(n) for n in self.coupled)
                raise GradestError(
                    f"node {names} couples the particles (its estimator makes each particle's term depend "
                    "on the others', as score-loo's baseline, the others' mean, does), so the spread of one "
                    "graph's rows misses the coupling's share of the variance; build the graph K times on "
                    "one generator (K ≥ 16) and take gradest.graph.combine([g.per_node(params) "
                    "for g in graphs]).stderr(), the spread of the graphs' means")
        return {k: mean_stderr(g, self.groups) for k, g in self.total.items()}


def combine(records: Sequence[NodeGradients]) -> NodeGradients:
    """The rows of independent graphs (the same model built again on fresh draws) as one record: its
    mean is the particles' mean; its :meth:`~NodeGradients.stderr` the spread of the graphs' means
    where a node couples the particles (the rows are then labelled by graph), else the rows' spread."""
    records = list(records)
    if not records or not all(isinstance(r, NodeGradients) for r in records):
        raise GradestError("combine takes a list of NodeGradients (Graph.per_node(params) of independent "
                           "graphs of one model)")
    first = records[0]
    for r in records[1:]:
        same = r.grads.keys() == first.grads.keys() and r.coupled == first.coupled and all(
            r.grads[k].keys() == v.keys() and all(r.grads[k][p].shape[1:] == t.shape[1:]
                                                  for p, t in v.items())
            for k, v in first.grads.items())
        if not same:
            raise GradestError("combine needs the per_node records of one model (the same nodes, estimators "
                               "and parameters in each graph)")
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
