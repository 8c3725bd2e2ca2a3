r"""Score-function estimator (REINFORCE, likelihood ratio).

    ∇θ E_{p(x;θ)}[f(x)] = E_{p(x;θ)}[(f(x) − b) ∇θ log p(x; θ)]

One sample's estimate is (f(x_n) − b_n) ∇θ log p(x_n; θ). Only f's values are used, never its
derivative, so f may be discrete, non-differentiable or a black box; the family may be discrete.
The baseline b_n (see :mod:`gradest.estimators.baselines`) must not depend on x_n.

Requires: log p(x; θ) differentiable in θ. Variance grows with the spread of f and with the
dimension of x, which is why baselines matter.

References: Williams (1992); Glynn (1990); Mohamed et al., JMLR 21 (2020) §4.
"""

from __future__ import annotations

import torch
from torch.distributions import Distribution

from gradest.errors import GradestError
from gradest.estimators.base import (
    Cost,
    Estimator,
    evaluate,
    joint_log_prob,
    support_moves_with_parameters,
)
from gradest.estimators.baselines import NoBaseline


class ScoreFunction(Estimator):
    """ĝ_n = (f(x_n) − b_n) ∇θ log p(x_n; θ)."""

    def __init__(self, baseline=None, name: str = "score") -> None:
        self.baseline = NoBaseline() if baseline is None else baseline
        self.name = name
        self.min_samples = getattr(self.baseline, "min_samples", 1)

    def _terms(
        self, f: Cost, dist: Distribution, num_samples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if support_moves_with_parameters(dist):
            raise GradestError(
                f"the support of {type(dist).__name__} moves with its parameters, so the score-function "
                "identity ∇E f = E[f ∇log p] misses the boundary terms and would be biased; use "
                "'pathwise' instead"
            )
        # detached draw: no path from θ through x
        x = self._draw(dist, num_samples, generator, reparameterized=False)
        with torch.no_grad():  # the score function never differentiates f
            fx = evaluate(f, x, num_samples)
            if getattr(self.baseline, "accepts_groups", False):
                weight = fx - self.baseline(fx, self._groups(num_samples))
            else:
                weight = fx - self.baseline(fx)
        logp = joint_log_prob(dist, x, num_samples)
        # Value f(x_n), gradient weight_n ∇ log p: the weight is a constant of the math.
        return fx + weight * (logp - logp.detach()), fx

    def __repr__(self) -> str:
        return f"ScoreFunction(baseline={self.baseline!r}, name={self.name!r})"
