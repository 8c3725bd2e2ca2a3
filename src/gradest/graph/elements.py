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
the cost V and a node's δ, a vector–Jacobian product with a random vector restricted to a random half
of the allowed groups (particle n, and for a per-element cost the node's element b): where V's
Jacobian in δ is block diagonal over the groups, the groups outside the half get exactly zero (a
row-wise computation multiplies zero cotangents through; 0 · w is 0 in every dtype, whatever the
rounding elsewhere), so any nonzero there is a dependence across groups. For elements, and for
fewer than BOTH_WAYS_BELOW particles, a second product on the other half (one batched pass) sees
either direction; for many particles the check of a total cost takes one product. A dependence on
every other group (a mean, a sum, a batch-norm, attention across them) is always seen; one on a
single other group with probability ½ (¼ with one product) on each check. The half is drawn anew
on every check, from a private generator seeded by the state of the graph's generator (the user's
randomness is neither consumed nor replaced; the same seed gives the same verdicts), so a model run
for many steps is checked on many halves. The check runs on every ``g.cost`` with such a node
upstream and on every node built from upstream samples (its log-density, draw or ``then=`` cost);
no verdict is cached (the same line can compute another cost, a network can switch to training
mode). Particles are checked for every cost (each particle is one independent run of the model, and
a score term weights particle n's costs by its own log-density), elements for a per-element cost.

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

#: below this many particles the particle check takes both products (cheap there): either direction seen
BOTH_WAYS_BELOW = 64


def check(cost: str, value: torch.Tensor, nodes: list[tuple[str, torch.Tensor, int]], seed: int) -> None:
    """Refuse cost ``value [N, *C]`` if it mixes the elements (or particles) of a node.

    nodes: (name, δ leaf ``[N, *B, *E]``, m) for each watched score-type node upstream, where the
    cost's element c lines up with the node's element through their first m batch dims.
    """
    nodes = [(name, leaf, m) for name, leaf, m in nodes if m > 0]
    if value.dim() < 2 or not nodes:
        return
    for name, leaf, m in nodes:
        mixes = _mixes(value, leaf, m, seed)
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


def check_particles(what: str, value: torch.Tensor, nodes: list[tuple[str, torch.Tensor]], seed: int,
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
        # one product where the particles are many (it runs on every cost, every step: a fresh half each)
        if _mixes(value, leaf, 0, seed, both_ways=value.shape[0] < BOTH_WAYS_BELOW):
            because = why or (f"{name!r}'s score term weights particle n's costs by particle n's "
                              "log-density alone, so its gradient would be wrong")
            raise GradestError(
                f"{what} mixes the particles of node {name!r}: its value for particle n moves with the draws "
                f"of other particles (a mean, sum or batch-norm over the particle axis, dim 0), but each "
                f"particle is one independent run of the model and {because}; compute each particle from "
                f"its own draws (reduce over the other dims, e.g. dim=-1), or average over particles only "
                f"in the loss (g.surrogate() is already their mean)"
            )


def _mixes(value: torch.Tensor, leaf: torch.Tensor, m: int, seed: int, both_ways: bool = True) -> bool | None:
    """Whether ``value``'s Jacobian in ``leaf`` is not block diagonal over the groups (particle, first m
    batch dims) (None: no derivative path at all).

    A vector–Jacobian product with a random v restricted to a random half A of the groups (drawn from
    ``seed`` on a private generator): for a block-diagonal Jacobian the groups outside A get exactly
    zero (a row-wise computation multiplies their zero cotangents through, and no rounding makes
    0 · w anything but 0), so any nonzero finite entry there is a dependence across groups; entries that
    are not finite (0 · inf in a row of its own) are skipped. With ``both_ways`` a second product on
    the other half (one batched pass) sees a dependence in either direction; without it, one of a
    group in A on one outside it."""
    if not value.requires_grad:
        return None
    groups = value.shape[: 1 + m]
    count = groups.numel()
    if count < 2:
        return False
    gen = torch.Generator(device=value.device).manual_seed(seed)
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
            leak = torch.cat([both[0][~mask], both[1][mask]])
        else:
            u = torch.autograd.grad(value, leaf, v * inside, retain_graph=True, allow_unused=True)[0]
            if u is None:
                return None
            leak = u[~mask]
    return bool(((leak != 0) & torch.isfinite(leak)).any())


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
