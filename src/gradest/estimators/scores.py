r"""Analytic score functions ∇_φ log p(x; φ) of common families, in their own parameters φ.

    Normal(μ, σ):        ∂/∂μ = (x − μ)/σ²,  ∂/∂σ = ((x − μ)²/σ² − 1)/σ
    Bernoulli:           ∂/∂ℓ = x − sigmoid(ℓ) (logits),  ∂/∂p = (x − p)/(p(1 − p)) (probs)
    Categorical:         ∂/∂ℓ̃_j = 1[x = j] (normalized logits),  ∂/∂p_j = 1[x = j]/p_x (probs)
    Exponential(λ):      ∂/∂λ = 1/λ − x
    Poisson(λ):          ∂/∂λ = x/λ − 1
    Gamma(α, β):         ∂/∂α = log β + log x − ψ(α),  ∂/∂β = α/β − x

The score-function estimator multiplies these by its learning signal and hands them to autograd
through ⟨φ − φ.detach(), ĝ⟩, which is cheaper than differentiating ``log_prob`` (one fused pass
instead of a backward through the density). φ is the tensor the family stores (Categorical's
normalized logits or probs), so the chain rule from φ to the user's parameters stays autograd's.
A family not listed here falls back to autograd of ``log_prob``; tests check every rule against it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributions as D
from torch.distributions.utils import clamp_probs

#: family -> (dist, x, w) -> [(family tensor φ, w · ∂ log p(x)/∂φ)], w broadcast against x's batch; a
#: rule writes in place over the tensors it makes (each has x's shape), never over x, w or φ
ScoreRule = Callable[[D.Distribution, torch.Tensor, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]
SCORES: dict[type[D.Distribution], ScoreRule] = {}


def _rule(family: type[D.Distribution]):
    def wrap(fn: ScoreRule) -> ScoreRule:
        SCORES[family] = fn
        return fn

    return wrap


def _stored(dist: D.Distribution, name: str) -> bool:
    return isinstance(vars(dist).get(name), torch.Tensor)


@_rule(D.Normal)
def _normal(dist, x, w):
    loc, scale = dist.loc.detach(), dist.scale.detach()
    z = (x - loc).div_(scale)  # (x − μ has x's shape: divided in place)
    u = w / scale
    g_loc = u * z
    # w z/σ and w (z² − 1)/σ = g_loc z − w/σ, in as few passes over the samples and as few new
    # tensors as the algebra allows: the latter is written over z, which nothing else holds
    return [(dist.loc, g_loc), (dist.scale, z.mul_(g_loc).sub_(u))]


@_rule(D.Bernoulli)
def _bernoulli(dist, x, w):
    if _stored(dist, "logits"):
        return [(dist.logits, (x - torch.sigmoid(dist.logits.detach())).mul_(w))]
    p = clamp_probs(dist.probs.detach())
    return [(dist.probs, (x - p).div_(p * (1.0 - p)).mul_(w))]


@_rule(D.Categorical)
def _categorical(dist, x, w):
    k = dist.param_shape[-1]
    one_hot = torch.nn.functional.one_hot(x.long(), k)
    w = w.unsqueeze(-1)
    if _stored(dist, "logits"):
        return [(dist.logits, one_hot.to(dist.logits.dtype).mul_(w))]
    p = clamp_probs(dist.probs.detach())
    return [(dist.probs, one_hot.to(p.dtype).mul_(w).div_(p))]


@_rule(D.Exponential)
def _exponential(dist, x, w):
    rate = dist.rate.detach()
    return [(dist.rate, (1.0 / rate - x).mul_(w))]


@_rule(D.Poisson)
def _poisson(dist, x, w):
    rate = dist.rate.detach()
    return [(dist.rate, (x / rate).sub_(1.0).mul_(w))]


@_rule(D.Gamma)
def _gamma(dist, x, w):
    alpha, beta = dist.concentration.detach(), dist.rate.detach()
    return [
        (dist.concentration, x.log().add_(beta.log() - torch.digamma(alpha)).mul_(w)),
        (dist.rate, (alpha / beta - x).mul_(w)),
    ]


def _normal_of_noise(dist, eps, w):
    """The Normal rule given ε = (x − μ)/σ as drawn (x = μ + σε): two passes over the draws fewer."""
    u = w / dist.scale.detach()
    g_loc = u * eps
    return [(dist.loc, g_loc), (dist.scale, (g_loc * eps).sub_(u))]


def analytic_score(dist: D.Distribution, x: torch.Tensor, weight: torch.Tensor | float = 1.0,
                   noise: torch.Tensor | None = None) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """[(φ, weight · ∂ log p(x)/∂φ)] for a listed family, else None.

    ``weight`` broadcasts against x's batch dimensions ``[N, *batch]`` (a learning signal). ``noise``:
    for a Normal, the ε that made x = μ + σε (:meth:`gradest.Estimator.draw_standardized`), read in
    place of (x − μ)/σ.
    """
    rule = SCORES.get(type(dist))
    if rule is None:
        return None
    if not isinstance(weight, torch.Tensor):
        weight = torch.full((), float(weight), dtype=x.dtype if x.is_floating_point() else None,
                            device=x.device)
    if noise is not None and type(dist) is D.Normal:
        return _normal_of_noise(dist, noise, weight)
    return rule(dist, x, weight)
