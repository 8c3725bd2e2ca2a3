"""How an estimator runs as a graph node: the role its ``capabilities.node`` declares, and the
family rebuilt from per-particle rows of its tensors for a callable node."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical

from gradest.errors import GradestError
from gradest.estimators.base import Estimator, unwrap
from gradest.estimators.baselines import Constant, LeaveOneOut, NoBaseline
from gradest.estimators.registry import get_estimator

_REFUSED = ("as a graph node; use 'score-loo' (any family, every order), 'disarm' with then= "
            "(Bernoulli) or 'pathwise' (reparameterizable families)")


def node_tensors(dist: Distribution) -> dict[str, torch.Tensor]:
    """The tensors a family (under ``Independent``) was built from, by constructor argument; of a
    probs/logits pair the logits (live either way: derived logits carry the chain to the probs)."""
    family = unwrap(dist)
    try:
        names = list(family.arg_constraints)
    except NotImplementedError:
        names = []
    held = vars(vars(family).get("_categorical", family))  # OneHotCategorical keeps them in its Categorical
    present = {k: held[k] for k in names if isinstance(held.get(k), torch.Tensor)}
    if "logits" in present and "probs" in present:
        del present["probs"]
    return present


def rebuild(name: str, dist: Distribution, tensors: Mapping[str, torch.Tensor]) -> Distribution:
    """``dist``'s family built anew from ``tensors`` (same constructor arguments), re-wrapped."""
    ndims = []
    family = dist
    while isinstance(family, Independent):
        ndims.append(family.reinterpreted_batch_ndims)
        family = family.base_dist
    try:
        if not tensors:
            raise TypeError("no parameter tensors")
        out = type(family)(**tensors, validate_args=False)
    except (TypeError, ValueError, RuntimeError) as err:
        raise GradestError(
            f"node {name!r}: a callable node runs its estimator on one copy of the family per particle, and "
            f"{type(family).__name__} could not be rebuilt from its parameters {sorted(tensors)} ({err}); "
            "build the node from a torch family (Normal, Bernoulli, Categorical, …, under Independent) and "
            "put transforms inside then=") from None
    for k in reversed(ndims):
        out = Independent(out, k)
    return out


def node_estimator(name: str, spec: str | Estimator) -> tuple[str, Estimator]:
    """(role, estimator) for node ``name``: the role its ``capabilities.node`` declares; refuses,
    naming the alternative, what cannot be a node."""
    est = get_estimator(spec)
    label = getattr(est, "name", type(est).__name__)
    if est.sampler is not None:
        raise GradestError(f"node {name!r}: {label!r} draws dependent samples (a sampler suffix), which a "
                           "graph's independent particles cannot hold; drop the '+…' suffix")
    kind = est.capabilities.node
    baseline = getattr(est, "baseline", None)
    if kind == "score" and not isinstance(baseline, NoBaseline | LeaveOneOut | Constant):
        raise GradestError(
            f"node {name!r}: {label!r} keeps a moving average across calls, and a graph is built anew each "
            "step; use 'score-loo' (the other particles' costs) or 'score-const=B' for this node")
    if kind == "none":
        raise GradestError(f"node {name!r}: {label!r} {est.node_refusal}, so it is refused {_REFUSED}")
    return kind, est


@dataclass
class _Support:
    """The joint values of one discrete node: ``size`` per variable, ``count`` in all."""

    size: int  # values per variable
    shape: torch.Size  # the node's batch shape B, per particle
    kind: type[Distribution]
    count: int = field(init=False)

    def __post_init__(self) -> None:
        self.count = self.size ** self.shape.numel()


def _support(name: str, dist: Distribution) -> tuple[int, type[Distribution]]:
    family = unwrap(dist)
    if isinstance(family, Bernoulli):
        return 2, Bernoulli
    if isinstance(family, Categorical | OneHotCategorical):
        return family.probs.shape[-1], type(family)
    raise GradestError(
        f"enumerate_graph sums over Bernoulli, Categorical and OneHotCategorical nodes; node {name!r} "
        f"is {type(family).__name__}: check it by Monte Carlo against a closed form instead"
    )
