r"""ARM and DisARM: antithetic estimators for Bernoulli nodes, in the logits ℓ (p = σ(ℓ)).

With u ~ Uniform(0, 1)^D, the draw b = 1[u < σ(ℓ)] and its antithetic partner b̃ = 1[1 − u < σ(ℓ)]
(each marginally Bernoulli(σ(ℓ)), coupled through u):

    ARM      ĝ_ℓ,i = (f(b̃) − f(b)) (u_i − ½)                                  (Yin & Zhou 2019)
    DisARM   ĝ_ℓ,i = ½ (f(b̃) − f(b)) (−1)^{b_i} 1[b_i ≠ b̃_i] σ(|ℓ_i|)          (Dong et al. 2020)

ARM is ∇ℓ E[f(b)] = E_u[(f(1[u > σ(−ℓ)]) − f(1[u < σ(ℓ)]))(u − ½)] (augment, REINFORCE, merge).
DisARM integrates u out given the pair, E[u_i − ½ | b_i, b̃_i] = ½ (−1)^{b_i} 1[b_i ≠ b̃_i] σ(|ℓ_i|),
which can only lower the variance (Rao–Blackwell), and vanishes where the pair agrees. Both are
unbiased; each sample costs two evaluations of f. The value is (f(b) + f(b̃))/2.

The explicit ĝ_ℓ reaches the user's parameterization through autograd of the family's logits (σ⁻¹
of the stored probs). With per-element costs (f_b depends on its own x_b only) each coordinate's
difference is that of its own element's cost, as for the score function. A cost that declares θ
gets its direct term (∂f(b)/∂θ + ∂f(b̃)/∂θ)/2, unbiased since b and b̃ are both draws of p.

Requires: a Bernoulli node (or ``Independent`` of one); only values of f are used (f may be a black
box). For Categorical nodes use 'unordered-set' or 'score-loo'.

References: Yin & Zhou (2019), "ARM: augment-REINFORCE-merge gradient for stochastic binary
networks", ICLR; Dong, Mnih & Tucker (2020), "DisARM: an antithetic gradient estimator for binary
latent variables", NeurIPS.
"""

from __future__ import annotations

import torch
from torch.distributions import Bernoulli

from gradest.estimators import concrete
from gradest.estimators.base import (
    BoundCost,
    Capabilities,
    Estimator,
    Node,
    Terms,
    broadcast_signal,
    carrier,
    total,
    unwrap,
)


class ARM(Estimator):
    """ĝ_ℓ = (f(b̃) − f(b)) (u − ½) (ARM) or its conditional expectation given (b, b̃) (DisARM)."""

    capabilities = Capabilities(families=(Bernoulli,), interior=True)
    draws_through_inverse_cdf = False  # (the sampler's uniforms are u itself)

    def __init__(self, disarm: bool = False, name: str | None = None) -> None:
        self.disarm = disarm
        self.name = name or ("disarm" if disarm else "arm")

    def family_refusal(self, family) -> str:
        return (
            f"{self.name} has rules for Bernoulli, not {type(family).__name__}; use 'unordered-set' "
            "(Categorical), 'score' or 'score-loo' (any family) instead"
        )

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator) -> Terms:
        family = unwrap(node.dist)
        ell = family.logits
        (u,) = concrete.uniforms(self, node, concrete.noise_shape(node), generator)
        p = torch.sigmoid(ell.detach())
        b = (u < p).to(u.dtype)
        self.healthy(node, b)  # every b alike: the pair's difference never shows f(1) − f(0)
        b_anti = (1.0 - u < p).to(u.dtype)
        fb, fa = cost(b), cost(b_anti)  # with gradients only where f depends on θ or tensors of its own
        with torch.no_grad():  # the difference is a constant of the math
            diff = broadcast_signal((fa.detach() - fb.detach()).to(u.dtype), b)
            if self.disarm:
                sign = 1.0 - 2.0 * b  # (−1)^b
                g = 0.5 * diff * sign * (b != b_anti).to(u.dtype) * torch.sigmoid(ell.detach().abs())
            else:
                g = diff * (u - 0.5)
        direct = carrier(fb) + carrier(fa)
        return Terms(0.5 * direct if isinstance(direct, torch.Tensor) else 0.0, [(ell, g)],
                     0.5 * (total(fb.detach()) + total(fa.detach())))

    def __repr__(self) -> str:
        return f"ARM(disarm={self.disarm}, name={self.name!r})"
