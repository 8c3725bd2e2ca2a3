r"""Score-function estimator (REINFORCE, likelihood ratio).

    ∇θ E_{p(x;θ)}[Σ_b f_b(x; θ)] = E_p[Σ_b (f_b(x; θ) − b_b) ∇θ log p(x_b; θ) + Σ_b ∇θ f_b(x; θ)]

One sample's estimate is Σ_b (f_b(x_n) − b_n,b) ∇θ log p(x_n,b; θ): with a per-element cost each
element's log-density is weighted by its own cost (and baseline), with a cost of shape ``[N]`` by
the total. The last term, the direct dependence of f on θ, appears only for a cost that declares
its parameters. The surrogate is the DiCE/Pyro form f + (f.detach() − b)(log p − log p.detach()).

Only f's values enter the learning signal, never ∂f/∂x, so f may be discrete, non-differentiable
or a black box, and the family may be discrete. The baseline b_n (see
:mod:`gradest.estimators.baselines`) must not depend on x_n.

Requires: log p(x; θ) differentiable in θ; a support that does not move with θ (else the identity
misses boundary terms: refused); per-element costs f_b that depend on their own x_b only.
∇θ log p comes in closed form for Normal, Bernoulli, Categorical, Exponential, Poisson and Gamma
(:mod:`gradest.estimators.scores`), from autograd of ``log_prob`` otherwise.

References: Williams (1992); Glynn (1990); Foerster et al. (2018, DiCE); Mohamed et al., JMLR 21
(2020) §4.
"""

from __future__ import annotations

import torch

from gradest.errors import GradestError
from gradest.estimators.base import (
    BoundCost,
    Capabilities,
    Estimator,
    Node,
    Terms,
    carrier,
    per_element,
    total,
    unwrap,
)
from gradest.estimators.baselines import Baseline, NoBaseline
from gradest.estimators.scores import analytic_score


def score_terms(node: Node, x: torch.Tensor, weight: torch.Tensor, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor | float, list[tuple[torch.Tensor, torch.Tensor]]]:
    """Σ_b weight_b ∇θ log p(x_b) per sample, weight ``[N, *C]`` a constant: (carrier, explicit pairs).

    In closed form for the families of :mod:`gradest.estimators.scores` (explicit pairs; a Normal's
    from the ε of its draw where ``noise`` gives it), else by autograd of ``log_prob`` (the carrier
    Σ_n Σ_b weight_n,b log p(x_n,b)).
    """
    family = unwrap(node.dist)
    rank = x.dim() - len(family.event_shape)  # [N, *batch] of the family
    scores = analytic_score(family, x, weight.reshape(*weight.shape, *([1] * (rank - weight.dim()))), noise)
    if scores is not None:
        return 0.0, scores
    logp = per_element(node.dist.log_prob(x), weight)
    return (weight * logp).sum(), []


class ScoreFunction(Estimator):
    """ĝ_n = Σ_b (f_b(x_n) − b_n,b) ∇θ log p(x_n,b; θ) [+ ∇θ f(x_n; θ)]."""

    capabilities = Capabilities(fixed_support=True, interior=True, node="score")

    def __init__(self, baseline: Baseline | None = None, name: str = "score") -> None:
        if baseline is not None and not (callable(baseline) and hasattr(baseline, "min_samples")):
            raise GradestError(f"baseline must be a baseline (gradest.NoBaseline, Constant, LeaveOneOut, "
                               f"MovingAverage or one with min_samples and __call__), got {baseline!r}")
        self.baseline = NoBaseline() if baseline is None else baseline
        self.name = name
        self.min_samples = self.baseline.min_samples

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        # detached draw: no path from θ through x (and a Normal's ε, which its score reads)
        x, noise = self.draw_standardized(node, generator)
        fx = cost(x)  # a graph only where f depends on θ or on tensors of its own (a decoder)
        signal = fx.detach()
        with torch.no_grad():  # the learning signal is a constant of the math
            if isinstance(self.baseline, NoBaseline):
                weight = signal
            else:
                weight = signal - self.baseline(signal, self.groups(node.num_samples, signal.device))
        if noise is not None:  # a Normal's scores read ε alone: the draws' memory is free for them
            x = noise
        score_carrier, explicit = score_terms(node, x, weight, noise)
        return Terms(carrier(fx) + score_carrier, explicit, total(signal))

    def __repr__(self) -> str:
        return f"ScoreFunction(baseline={self.baseline!r}, name={self.name!r})"
