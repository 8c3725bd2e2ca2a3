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

#: family -> (dist, x) -> [(family tensor φ, ∂ log p(x)/∂φ shaped like x's batch)]
ScoreRule = Callable[[D.Distribution, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]
SCORES: dict[type[D.Distribution], ScoreRule] = {}


def _rule(family: type[D.Distribution]):
    def wrap(fn: ScoreRule) -> ScoreRule:
        SCORES[family] = fn
        return fn

    return wrap


def _stored(dist: D.Distribution, name: str) -> bool:
    return isinstance(vars(dist).get(name), torch.Tensor)


@_rule(D.Normal)
def _normal(dist, x):
    loc, scale = dist.loc.detach(), dist.scale.detach()
    z = (x - loc) / scale
    return [(dist.loc, z / scale), (dist.scale, (z * z - 1.0) / scale)]


@_rule(D.Bernoulli)
def _bernoulli(dist, x):
    if _stored(dist, "logits"):
        return [(dist.logits, x - torch.sigmoid(dist.logits.detach()))]
    p = clamp_probs(dist.probs.detach())
    return [(dist.probs, (x - p) / (p * (1.0 - p)))]


@_rule(D.Categorical)
def _categorical(dist, x):
    k = dist._num_events
    one_hot = torch.nn.functional.one_hot(x.long(), k)
    if _stored(dist, "logits"):
        return [(dist.logits, one_hot.to(dist.logits.dtype))]
    p = clamp_probs(dist.probs.detach())
    return [(dist.probs, one_hot.to(p.dtype) / p)]


@_rule(D.Exponential)
def _exponential(dist, x):
    rate = dist.rate.detach()
    return [(dist.rate, 1.0 / rate - x)]


@_rule(D.Poisson)
def _poisson(dist, x):
    rate = dist.rate.detach()
    return [(dist.rate, x / rate - 1.0)]


@_rule(D.Gamma)
def _gamma(dist, x):
    alpha, beta = dist.concentration.detach(), dist.rate.detach()
    return [
        (dist.concentration, beta.log() + x.log() - torch.digamma(alpha)),
        (dist.rate, alpha / beta - x),
    ]


def analytic_score(dist: D.Distribution, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """[(φ, ∂ log p(x)/∂φ)] for a listed family built from stored tensors, else None."""
    rule = SCORES.get(type(dist))
    if rule is None:
        return None
    return rule(dist, x)
