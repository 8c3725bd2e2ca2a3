"""The oracle: the exact L(θ) of a graph of Bernoulli, Categorical and OneHotCategorical nodes as a
differentiable sum over every joint value."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, OneHotCategorical

from gradest import rng
from gradest.errors import GradestError
from gradest.estimators.base import unwrap
from gradest.graph.dice import per_particle
from gradest.graph.model import Graph
from gradest.graph.roles import _Support, _support

#: bound on the number of joint values :func:`enumerate_graph` sums over
MAX_SUPPORT = 2**16


class _Discovery(Graph):
    """One particle, to learn each node's family and batch shape."""

    element_signals = False

    def __init__(self) -> None:
        super().__init__(rng.make_generator(0), 1)
        self.supports: dict[str, _Support] = {}

    def sample(self, name, dist, estimator="score", parents=None, batched=None, then=None):
        return super().sample(name, dist, "score", parents, batched, then)

    def _draw(self, name, dist, batched, reparameterized, est):
        size, kind = _support(name, dist)
        x = rng.sample(dist, () if batched else (1,), self.generator, False)
        batch = x.shape[1: x.dim() - len(dist.event_shape)]
        self.supports[name] = _Support(size, batch, kind)
        return x


class _Enumeration(Graph):
    """Every joint value of the nodes, one per particle (mixed radix over the nodes' variables)."""

    element_signals = False  # every cost enters as its total: no element is weighted alone

    def __init__(self, supports: dict[str, _Support]) -> None:
        total = math.prod(s.count for s in supports.values())
        super().__init__(rng.make_generator(0), total)
        self.supports = supports
        self.strides, stride = {}, 1
        for name, s in supports.items():
            self.strides[name] = stride
            stride *= s.count

    def sample(self, name, dist, estimator="score", parents=None, batched=None, then=None):
        return super().sample(name, dist, "score", parents, batched, then)

    def _draw(self, name, dist, batched, reparameterized, est):
        s = self.supports.get(name)
        if s is None or _support(name, dist)[0] != s.size:
            raise GradestError(f"the model's node {name!r} changed between two runs; enumeration needs a "
                               "fixed structure")
        index = torch.arange(self.num_samples) // self.strides[name] % s.count
        digits = index.unsqueeze(-1) // s.size ** torch.arange(s.shape.numel()) % s.size  # [M, V]
        x = digits.reshape(self.num_samples, *s.shape)
        like = unwrap(dist).probs
        if s.kind is Bernoulli:
            return x.to(like.dtype).to(like.device)
        x = x.to(like.device)
        return F.one_hot(x, s.size).to(like.dtype) if s.kind is OneHotCategorical else x


def enumerate_graph(model: Callable[[Graph], object], max_support: int = MAX_SUPPORT) -> torch.Tensor:
    """Exact L(θ) = Σ_z p(z; θ) Σ_c c(z; θ) of the graph ``model(g)`` builds, differentiable.

    ``model`` calls ``g.sample`` and ``g.cost`` as it would on a Monte Carlo graph; it runs twice
    (once to learn the nodes, once on every joint value). The result's autograd gradients of every
    order are the exact ones: the oracle for :meth:`Graph.surrogate`.
    """
    if not callable(model):
        raise GradestError(f"enumerate_graph takes a function model(g) that builds the graph, got "
                           f"{type(model).__name__}")
    with torch.no_grad():
        with _Discovery() as first:
            model(first)
    size = math.prod(s.count for s in first.supports.values())
    if size > max_support:
        raise GradestError(
            f"the graph's nodes take {size} joint values, more than max_support = {max_support}; "
            "enumerate a smaller graph, or check this one by Monte Carlo"
        )
    with _Enumeration(first.supports) as g:
        model(g)
    log_weight: torch.Tensor | float = 0.0
    for node in g.nodes.values():
        log_weight = log_weight + per_particle(g, node.log_prob)
    total = sum(per_particle(g, c.value) for c in g.costs.values())
    return (torch.exp(log_weight) * total).sum()
