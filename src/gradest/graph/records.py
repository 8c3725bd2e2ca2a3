"""The graph's records: its stochastic nodes and costs, the per-node gradients and their
variance attribution."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.distributions import Distribution


@dataclass
class StochasticNode:
    """One sampled node: its draw ``value [N, *B, *E]`` (None for a callable node, whose hook draws
    privately), log p ``[N, *B]`` (score nodes) and ancestors.

    kind: ``"score"``, ``"reparameterized"`` or ``"callable"``; baseline: score-const's B.
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
    """

    grads: dict[str, dict[str, torch.Tensor]]
    total: dict[str, torch.Tensor]
    values: torch.Tensor


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
