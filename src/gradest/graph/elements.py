r"""A per-element cost's contract, verified: cost element c of particle n depends on the draws of
its own element only.

A cost ``[N, *C]`` given to ``g.cost`` as a value is used per element: the DiCE surrogate weights
cost element c by the log-density of the score nodes' element c alone (the plate independence that
lowers the variance). That is right only if c_{n,b} is computed from the draws z_{n,b} of its own
particle and element; a cost that centres over the batch or runs a batch-norm layer in training
mode mixes them, and every score-type node upstream is then biased. A value cannot be re-evaluated
on a changed draw (the contract probe of :mod:`gradest.contract`), so the graph reads the
dependence from autograd instead:

each floating draw z of a score-type node with batch elements is returned as z + δ, δ a zero leaf
(same numbers). For the cost V and a node's δ, two vector–Jacobian products with v₁ (random) and
v₂ = s ⊙ v₁, s constant on each allowed group (particle n and the node's element b), satisfy

    ∂⟨v₂, V⟩/∂δ = s ⊙ ∂⟨v₁, V⟩/∂δ

exactly when V's Jacobian in δ is block diagonal over the groups; any dependence across elements or
particles breaks it (for almost every s). The random vectors come from a private generator (the
user's randomness is not touched). The check runs on every ``g.cost`` of a per-element value with
such a node upstream (no verdict is cached: the same line can compute another cost, a network can
switch to training mode): one batched backward pass of the cost, both products at once.

What autograd cannot see, this cannot: a dependence through a comparison, an integer index or a
``detach`` carries no derivative. A per-element cost with no derivative path at all to such a node is
refused (its contract cannot be checked), and so is one downstream of a node whose draws are integers
(Categorical): no zero leaf can be added to them. Both refusals name the ways out: the total per
particle ``[N]``, ``then=fn`` (a function the graph can re-run on changed draws, probed as
:mod:`gradest.contract` probes a single node's cost), or OneHotCategorical (floating draws). A cost
whose mixing goes only through such operations on floating draws is the limit of the check.
"""

from __future__ import annotations

import torch

from gradest.errors import GradestError

#: rounding allowance of the comparison, in machine epsilons of each entry's size
_ROUNDING = 256.0


def watched(value: torch.Tensor, elements: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(value + δ, δ)`` for a floating draw with batch elements (``elements`` > 0 batch dims past the
    particle axis), else ``(value, None)``."""
    if elements == 0 or not value.is_floating_point():
        return value, None
    leaf = torch.zeros_like(value, requires_grad=True)
    return value + leaf, leaf


def check(cost: str, value: torch.Tensor, nodes: list[tuple[str, torch.Tensor, int]]) -> None:
    """Refuse cost ``value [N, *C]`` if it mixes the elements (or particles) of a node.

    nodes: (name, δ leaf ``[N, *B, *E]``, m) for each watched score-type node upstream, where the
    cost's element c lines up with the node's element through their first m batch dims.
    """
    nodes = [(name, leaf, m) for name, leaf, m in nodes if m > 0]
    if value.dim() < 2 or not nodes:
        return
    for name, leaf, m in nodes:
        _check_node(cost, value, name, leaf, m)


def _check_node(cost: str, value: torch.Tensor, node: str, leaf: torch.Tensor, m: int) -> None:
    n = value.shape[0]
    groups = value.shape[: 1 + m]
    gen = torch.Generator(device=value.device).manual_seed(0x9E3779B9)
    v1 = torch.randn(value.shape, generator=gen, dtype=value.dtype, device=value.device)
    s = 1.0 + torch.rand(groups, generator=gen, dtype=value.dtype, device=value.device)
    trailing = value.dim() - len(groups)
    v2 = v1 * s.reshape(*groups, *([1] * trailing))
    if not value.requires_grad:
        raise GradestError(_unverifiable(cost, node))
    with torch.enable_grad():
        both = torch.autograd.grad(value, leaf, torch.stack([v1, v2]), retain_graph=True, allow_unused=True,
                                   is_grads_batched=True)[0]
    if both is None:
        raise GradestError(_unverifiable(cost, node))
    u1, u2 = both
    expected = u1 * s.reshape(*groups, *([1] * (leaf.dim() - len(groups))))
    eps = torch.finfo(value.dtype).eps
    scale = _ROUNDING * eps * (u2.abs() + expected.abs() + eps * float(u1.abs().amax()))
    if bool(((u2 - expected).abs() > scale).any()):
        raise GradestError(
            f"cost {cost!r} mixes the elements of node {node!r}: its element c moves with the draws of "
            f"other elements or particles (a centring over the batch, a batch-norm layer in training "
            f"mode; shape {list(value.shape)}), and the graph weights each cost element by the "
            f"log-density of that element alone, which would bias {node!r}'s gradient; give the total "
            f"per particle, shape [{n}] (e.g. cost.sum(-1)), or make the cost act on each element alone"
        )


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
