r"""Pathwise estimator (reparameterization trick).

    ∇θ E_{p(x;θ)}[f(x)] = E_{p(ε)}[∇θ f(g(ε; θ))],   x = g(ε; θ)

One sample's estimate is ∇θ f(x_n) with x_n drawn by ``rsample``, so the gradient flows through
the sampler: explicitly for location-scale families (x = μ + σε), and implicitly for Gamma, Beta
and Dirichlet, whose ``rsample`` differentiates the CDF (Figurnov et al., 2018). With an
antithetic or quasi-Monte Carlo sampler, x = F⁻¹(u; θ) is the reparameterization instead.

Requires: the family has ``rsample`` (``has_rsample``); f differentiable in x almost everywhere.
For discrete families or an f with no gradient path, use the score-function estimator.

References: Kingma & Welling (2014); Rezende et al. (2014); Mohamed et al., JMLR 21 (2020) §5.
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution

from gradest.errors import GradestError
from gradest.estimators.base import Cost, Estimator, evaluate


class Pathwise(Estimator):
    """ĝ_n = ∇θ f(x_n(θ)), x_n = rsample()."""

    name = "pathwise"

    def _terms(
        self, f: Cost, dist: Distribution, num_samples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not dist.has_rsample:
            raise GradestError(
                f"the pathwise estimator needs a reparameterizable family, and "
                f"{type(dist).__name__} has no rsample; use the score-function estimator "
                "('score' or 'score-loo') instead"
            )
        x = self._draw(dist, num_samples, generator, reparameterized=True)
        fx = evaluate(f, x, num_samples)
        if x.requires_grad and not fx.requires_grad:  # (no parameter needing a gradient: nothing to check)
            raise GradestError(
                "f has no gradient path from its input to its output (it detaches, rounds, "
                "thresholds or leaves torch), so the pathwise estimator does not apply; "
                "use the score-function estimator ('score' or 'score-loo') instead"
            )
        return fx, fx.detach()
