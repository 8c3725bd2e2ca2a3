r"""Pathwise estimator (reparameterization trick).

    ∇θ E_{p(x;θ)}[f(x; θ)] = E_{p(ε)}[∇θ f(g(ε; θ); θ)],   x = g(ε; θ)

One sample's estimate is ∇θ f(x_n; θ) with x_n = g(ε_n; θ), so the gradient flows through the
sampler: explicitly for location-scale families (x = μ + σε, ε from the caller's generator), and
implicitly for Gamma, Beta and Dirichlet, whose ``rsample`` differentiates the CDF (Figurnov et
al., 2018). With an antithetic or quasi-Monte Carlo sampler, x = F⁻¹(u; θ) is the
reparameterization instead. A cost that declares θ gets its direct term from the same backward pass.

Requires: the family has ``rsample`` (``has_rsample``); f differentiable in x almost everywhere.
An f with no gradient path from x is refused (it detaches, rounds or thresholds x) unless it is
constant in x, whose pathwise gradient is zero. For discrete families, use the score function.

References: Kingma & Welling (2014); Rezende et al. (2014); Mohamed et al., JMLR 21 (2020) §5.
"""

from __future__ import annotations

import torch

from gradest.errors import GradestError
from gradest.estimators.base import BoundCost, Capabilities, Estimator, Node, Terms, constant_in_x, total


class Pathwise(Estimator):
    """ĝ_n = ∇θ f(x_n(θ); θ), x_n = g(ε_n; θ)."""

    name = "pathwise"
    capabilities = Capabilities(needs_rsample=True, differentiates_f=True, discrete=False, separable=False,
                                health="edge", node="reparameterized")

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.draw(node, generator, reparameterized=True)
        fx = cost(x)
        # (no parameter needing a gradient: nothing to check; a cost constant in x: zero gradient)
        # shifted and scaled copies tell a cost that ignores x from one that detaches it
        if x.requires_grad and not fx.requires_grad and not constant_in_x(
                cost, fx, (x + 1.0, x - 1.0, 2.0 * x, -x)):
            raise GradestError(
                "f has no gradient path from its input to its output (it detaches, rounds, "
                "thresholds or leaves torch), so the pathwise estimator does not apply; "
                "use the score-function estimator ('score' or 'score-loo') instead"
            )
        return Terms(fx.sum(), [], total(fx.detach()))
