r"""The Concrete (Gumbel-softmax) relaxation of Bernoulli and one-hot Categorical draws.

    Bernoulli(σ(ℓ)):        z = ℓ + log u − log(1 − u),   b = H(z) = 1[z > 0],   x̃ = σ(z/τ)
    OneHotCategorical(ℓ):   z = ℓ + g,  g_k = −log(−log u_k),   b = onehot(argmax z),   x̃ = softmax(z/τ)

with u ~ Uniform(0, 1) from the caller's generator (or a sampler's uniforms). b is an exact draw
of the family (the Gumbel-max trick: P(b = 1) = P(u > σ(−ℓ)) = σ(ℓ)); x̃ is its continuous
relaxation, differentiable in the logits ℓ, and x̃ → b as τ → 0. The relaxed estimators
(:mod:`gradest.estimators.relaxed`), REBAR and RELAX build on these draws.

All estimators of discrete families here work in the logits ℓ of the family (``family.logits``,
Categorical's normalized logits, or computed by torch from the stored ``probs``): their explicit
single-sample gradients are handed to autograd as (ℓ, ĝ_ℓ) pairs, and the chain rule through ℓ
reaches the user's parameterization (probs, logits, a network's weights).

References: Maddison, Mnih & Teh (2017), "The Concrete distribution"; Jang, Gu & Poole (2017),
"Categorical reparameterization with Gumbel-softmax"; Gumbel (1954).
"""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli, Distribution, OneHotCategorical

from gradest import rng
from gradest.errors import GradestError
from gradest.estimators import base
from gradest.estimators.base import BoundCost, Node, unwrap

#: the families a relaxation exists for (a Categorical's index samples cannot be relaxed)
RELAXABLE = (Bernoulli, OneHotCategorical)


def logits(node: Node) -> torch.Tensor:
    """The family's logits ℓ, live (a function of the parameters): ``[N, *S]`` or ``[*S]``."""
    return unwrap(node.dist).logits


def uniforms(estimator, node: Node, shape: torch.Size, generator: torch.Generator,
             count: int = 1) -> list[torch.Tensor]:
    """``count`` tensors of uniforms ``[N, *shape]`` in (0, 1), drawn together from the generator
    (or the estimator's sampler) on the parameters' device and in their dtype."""
    size = shape.numel()
    u = estimator.uniforms(node.num_samples, count * size, generator, node.like())
    return list(u.reshape(node.num_samples, count, *shape).unbind(1))


def perturb(family: Distribution, ell: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """z = ℓ + noise (logistic for Bernoulli, Gumbel per class for one-hot), ``[N, *S]``."""
    return ell + (rng.logistic(u) if isinstance(family, Bernoulli) else rng.gumbel(u))


def hard(family: Distribution, z: torch.Tensor) -> torch.Tensor:
    """b = H(z): an exact draw of the family, detached."""
    z = z.detach()
    if isinstance(family, Bernoulli):
        return (z > 0).to(z.dtype)
    return torch.nn.functional.one_hot(z.argmax(-1), z.shape[-1]).to(z.dtype)


def soft(family: Distribution, z: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """x̃ = σ(z/τ) or softmax(z/τ): the relaxed sample, differentiable in z and τ."""
    if isinstance(family, Bernoulli):
        return torch.sigmoid(z / temperature)
    return torch.softmax(z / temperature, -1)


def noise_shape(node: Node) -> torch.Size:
    """The shape of one sample's logits (without the sample axis)."""
    ell = unwrap(node.dist).logits
    return ell.shape[1:] if node.replicated else ell.shape


def check_temperature(value: float, what: str = "the temperature") -> float:
    value = float(value)
    if not value > 0.0 or value == float("inf"):
        raise GradestError(f"{what} must be a positive finite number, got {value!r}")
    return value


def constant_in_x(cost: BoundCost, x: torch.Tensor, fx: torch.Tensor) -> bool:
    """Whether f gives the same values at mirrored and shrunk copies of the points x in [0, 1]
    (then a zero gradient in x is right; otherwise f has no gradient path and a relaxation's
    derivative would silently be zero)."""
    x = x.detach()
    return base.constant_in_x(cost, fx, (1.0 - x, 0.5 * x, 0.5 + 0.5 * x))


def no_gradient_path(name: str, alternatives: str) -> GradestError:
    return GradestError(
        f"{name} differentiates f at relaxed points, and f has no gradient path from its input to "
        "its output (it detaches, rounds, thresholds or indexes with x, or leaves torch); make f "
        f"differentiable in x, or use {alternatives} instead"
    )
