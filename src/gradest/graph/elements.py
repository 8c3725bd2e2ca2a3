r"""The costs' contract, verified: cost element c of particle n depends on the draws of its own
particle (and, for a per-element cost, its own element) only.

A cost ``[N, *C]`` given to ``g.cost`` as a value is used per element: the DiCE surrogate weights
cost element c by the log-density of the score nodes' element c alone (the plate independence that
lowers the variance). That is right only if c_{n,b} is computed from the draws z_{n,b} of its own
particle and element; a cost that centres over the batch or runs a batch-norm layer in training
mode mixes them, and every score-type node upstream is then biased. A value cannot be re-evaluated
on a changed draw (the contract probe of :mod:`gradest.contract`), so the graph reads the
dependence from autograd instead:

each floating draw z of a score-type node is returned as z + δ, δ a zero leaf (same numbers). For
the cost V and a node's δ, two vector–Jacobian products, with a random v restricted to a random half
of the allowed groups (particle n and the node's element b) and to the other half: where V's
Jacobian in δ is block diagonal over the groups, the groups outside each half get exactly zero (a
row-wise computation multiplies zero cotangents through; no rounding can make them otherwise), and
any dependence across the two halves shows there. A dependence on every other group (a mean over
the batch, a batch-norm) is always seen; one on a single other group half the time (a quarter for
the particles, checked with the first product alone: it runs on every cost). The random
vectors come from a private generator (the user's randomness is not touched). The check runs on every
``g.cost`` with such a node upstream and on every node's parameters built from upstream samples (no
verdict is cached: the same line can compute another cost, a network can switch to training mode):
one backward pass (both products at once for elements). Particles are checked for every cost (each
particle is one independent run of the model, and a score term weights particle n's costs by its
own log-density), elements for a per-element cost.

What autograd cannot see, this cannot: a dependence through a comparison, an integer index or a
``detach`` carries no derivative. A per-element cost with no derivative path at all to such a node is
refused (its contract cannot be checked), and so is one downstream of a node whose draws are integers
(Categorical): no zero leaf can be added to them. Both refusals name the ways out: the total per
particle ``[N]``, ``then=fn`` (a function the graph can re-run on changed draws, probed as
:mod:`gradest.contract` probes a single node's cost), or OneHotCategorical (floating draws). A cost
whose mixing goes only through such operations on floating draws is the limit of the check, and so
is a total cost ``[N]`` with no derivative path to the draws (a score node's cost need not be
differentiable, so it is not refused; its particles go unchecked).
"""

from __future__ import annotations

import torch

from gradest.errors import GradestError

#: a dependence across groups smaller than this many machine epsilons of the largest within is rounding
LEAK = 64.0


def check(cost: str, value: torch.Tensor, nodes: list[tuple[str, torch.Tensor, int]]) -> None:
    """Refuse cost ``value [N, *C]`` if it mixes the elements (or particles) of a node.

    nodes: (name, δ leaf ``[N, *B, *E]``, m) for each watched score-type node upstream, where the
    cost's element c lines up with the node's element through their first m batch dims.
    """
    nodes = [(name, leaf, m) for name, leaf, m in nodes if m > 0]
    if value.dim() < 2 or not nodes:
        return
    for name, leaf, m in nodes:
        mixes = _mixes(value, leaf, m)
        if mixes is None:
            raise GradestError(_unverifiable(cost, name))
        if mixes:
            n = value.shape[0]
            raise GradestError(
                f"cost {cost!r} mixes the elements of node {name!r}: its element c moves with the draws of "
                f"other elements or particles (a centring over the batch, a batch-norm layer in training "
                f"mode; shape {list(value.shape)}), and the graph weights each cost element by the "
                f"log-density of that element alone, which would bias {name!r}'s gradient; give the total "
                f"per particle, shape [{n}] (e.g. cost.sum(-1)), or make the cost act on each element alone"
            )


def check_particles(what: str, value: torch.Tensor, nodes: list[tuple[str, torch.Tensor]],
                    why: str | None = None) -> None:
    """Refuse ``value [N, …]`` (a cost, a node's parameters) if its particle n moves with the draws of
    another particle of a node in ``nodes`` ((name, δ leaf) of score-type nodes upstream).

    Each particle is one independent run of the model, and a score-type node's term weights particle
    n's costs by particle n's log-density alone: a mean, a sum or a batch-norm over the particle axis
    would make every such node's gradient the gradient of something else (x · mean_n x under N(0.3, 1):
    0.30 where the truth is 0.6). A value with no derivative path to the draws cannot be checked and is
    let through (the limit named in the module docstring)."""
    if value.dim() == 0 or value.shape[0] < 2 or not value.requires_grad:
        return
    for name, leaf in nodes:
        if _mixes(value, leaf, 0, both_ways=False):  # (one product: this check runs on every cost)
            because = why or (f"{name!r}'s score term weights particle n's costs by particle n's "
                              "log-density alone, so its gradient would be wrong")
            raise GradestError(
                f"{what} mixes the particles of node {name!r}: its value for particle n moves with the draws "
                f"of other particles (a mean, sum or batch-norm over the particle axis, dim 0), but each "
                f"particle is one independent run of the model and {because}; compute each particle from "
                f"its own draws (reduce over the other dims, e.g. dim=-1), or average over particles only "
                f"in the loss (g.surrogate() is already their mean)"
            )


def _mixes(value: torch.Tensor, leaf: torch.Tensor, m: int, both_ways: bool = True) -> bool | None:
    """Whether ``value``'s Jacobian in ``leaf`` is not block diagonal over the groups (particle, first m
    batch dims) (None: no derivative path at all).

    Two vector–Jacobian products with a random v restricted to a random half A of the groups and to the
    other half: for a block-diagonal Jacobian the groups outside the half get exactly zero (a row-wise
    computation multiplies their zero cotangents through), whatever the rounding of the rest; any entry
    there beyond LEAK machine epsilons of the largest inside is a dependence across groups. Without
    ``both_ways`` only the first product (half the cost): a dependence of a group in the half on one
    outside; a dependence on every other group is still always seen."""
    if not value.requires_grad:
        return None
    groups = value.shape[: 1 + m]
    count = groups.numel()
    if count < 2:
        return False
    gen = torch.Generator(device=value.device).manual_seed(0x9E3779B9)
    v = torch.randn(value.shape, generator=gen, dtype=value.dtype, device=value.device)
    half = torch.zeros(count, dtype=torch.bool, device=value.device)
    half[torch.randperm(count, generator=gen, device=value.device)[: count // 2]] = True
    half = half.reshape(groups)
    inside = half.reshape(*groups, *([1] * (value.dim() - len(groups))))
    mask = half.reshape(*groups, *([1] * (leaf.dim() - len(groups)))).expand(leaf.shape)
    with torch.enable_grad():
        if both_ways:
            both = torch.autograd.grad(value, leaf, torch.stack([v * inside, v * ~inside]), retain_graph=True,
                                       allow_unused=True, is_grads_batched=True)[0]
            if both is None:
                return None
            own = torch.cat([both[0][mask], both[1][~mask]])
            leak = torch.cat([both[0][~mask], both[1][mask]])
        else:
            u = torch.autograd.grad(value, leaf, v * inside, retain_graph=True, allow_unused=True)[0]
            if u is None:
                return None
            own, leak = u[mask], u[~mask]
    own, leak = own[torch.isfinite(own)], leak[torch.isfinite(leak)]  # (0 · inf in a row of its own)
    size = float(own.abs().amax()) if own.numel() else 0.0
    eps = torch.finfo(value.dtype).eps
    return bool(leak.numel()) and bool((leak.abs() > LEAK * eps * size).any())


def unverifiable_integers(cost: str, node: str, shape: list[int]) -> str:
    """The refusal of a per-element cost downstream of a score-type node with integer draws."""
    return (
        f"cost {cost!r} is used per element (shape {shape}), but node {node!r} draws integers, which carry "
        f"no derivative, so whether each cost element depends on its own element's draw alone cannot be "
        f"checked (a cost that mixes the elements would bias {node!r}'s gradient); give the total per "
        f"particle, shape [{shape[0]}] (e.g. cost.sum(-1)), or pass the per-element cost as "
        f"g.sample({node!r}, dist, estimator, then=fn) (fn is re-run on changed draws and probed), or "
        f"draw one-hot vectors (OneHotCategorical)"
    )


def _unverifiable(cost: str, node: str) -> str:
    return (
        f"cost {cost!r} is used per element, but it carries no derivative in the draws of node {node!r} "
        f"(an integer index, a comparison, a detach or no_grad lies between them), so whether each element "
        f"depends on its own draw alone cannot be checked; give the total per particle, shape [N] "
        f"(e.g. cost.sum(-1)), or compute it from the draws with differentiable operations"
    )
