r"""The exact expectation as an estimator: sum over the support (small discrete supports).

    L = Σ_x p(x; θ) f(x; θ),   ∇θ L = Σ_x p(x; θ) f(x; θ) ∇θ log p(x; θ) + Σ_x p(x; θ) ∇θ f(x; θ)

for a Bernoulli, Categorical or OneHotCategorical node (or ``Independent`` of one). Every one of
the N "single-sample" estimates is this exact gradient: zero variance, no random numbers; N = 1
suffices. In the logits ℓ of the family, ∇ℓ log p(x) = x − σ(ℓ) (Bernoulli) or e_x − softmax(ℓ)
(Categorical), handed to autograd as one (ℓ, ĝ_ℓ) pair, so the chain rule reaches any
parameterization.

The sum runs over the joint values of the variables one cost element depends on: with a cost of
shape [N] that is every variable of the node (K^D points for D variables with K values each); with
a per-element cost [N, *C] (f_b depends on its own x_b only) only each element's own variables,
all elements at once — a per-datum cost over a batch of 64 data with 3 bits each costs 2³ = 8
evaluations of f, not 2¹⁹². A sum beyond ``max_support`` points is refused with the alternatives.
f is evaluated once more, on one point, to learn its output shape.

A cost that declares θ gets its direct term Σ_x p(x) ∇θ f(x; θ) through autograd: f is then
evaluated at every point with each sample's parameters (M·N points for ``per_sample``, M for the
surrogate). f's own tensors (a decoder) receive Σ_x p(x) ∇f(x) through the surrogate.

Requires: a small support; only values of f are used.

References: the sum defining the expectation; Mohamed et al., JMLR 21 (2020) §2 (exact gradients as
the reference for every estimator); :func:`gradest.exact_grad` computes the same by autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.distributions import Bernoulli, Categorical, OneHotCategorical

from gradest.errors import GradestError
from gradest.estimators.base import BoundCost, Capabilities, Estimator, Node, Terms, unwrap

#: default bound on the number of points summed over per cost element
MAX_SUPPORT = 2**12


class Enumerate(Estimator):
    """ĝ_n = ∇θ Σ_x p(x; θ) f(x; θ) for every n: the exact gradient, zero variance."""

    capabilities = Capabilities(families=(Bernoulli, Categorical, OneHotCategorical), interior=True,
                                health="none")
    draws_through_inverse_cdf = False  # (no random numbers at all)

    def __init__(self, max_support: int = MAX_SUPPORT, name: str = "enumerate") -> None:
        if isinstance(max_support, bool) or not isinstance(max_support, int) or max_support < 1:
            raise GradestError(f"max_support must be a positive integer, got {max_support!r}")
        self.max_support = max_support
        self.name = name

    def family_refusal(self, family) -> str:
        return (
            f"{self.name} sums over the values of Bernoulli and Categorical variables, not "
            f"{type(family).__name__}; use 'score' or 'score-loo' (any family) or 'pathwise' "
            "(reparameterizable families) instead"
        )

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator) -> Terms:
        family = unwrap(node.dist)
        bernoulli = isinstance(family, Bernoulli)
        one_hot = isinstance(family, OneHotCategorical)
        ell_live = family.logits
        ell = ell_live.detach()
        if node.replicated:
            ell = ell[0]  # the replicas share their values
        shape = ell.shape if bernoulli else ell.shape[:-1]  # [*S]: the variables
        size = 2 if bernoulli else ell.shape[-1]
        like = node.like()

        def points(configs: torch.Tensor, elements: torch.Size) -> torch.Tensor:
            """configs [M, V] -> x [M, *S(, K)]: every element's variables take config m."""
            m = configs.shape[0]
            x = configs.reshape(m, *([1] * len(elements)), -1).expand(m, *elements, configs.shape[1])
            x = x.reshape(m, *shape)
            if one_hot:
                return F.one_hot(x, size).to(like.dtype)
            return x.to(like.dtype) if bernoulli else x

        # one point first: the shape of f's output tells which variables each cost element has
        with torch.no_grad():
            probe = cost(points(torch.zeros(1, shape.numel(), dtype=torch.long, device=ell.device),
                                torch.Size(())), direct=False)
        elements = probe.shape[1:]
        count = shape.numel() // max(elements.numel(), 1)  # variables per cost element
        support = size**count
        if support > self.max_support:
            raise GradestError(
                f"{self.name} sums over the {size}^{count} = {support} joint values of the {count} "
                f"variables each cost element depends on, more than max_support = {self.max_support}; "
                "give a per-element cost (f_b of its own variables, shape [N, *B]) if f separates, or "
                "use a Monte Carlo estimator: 'disarm' (Bernoulli), 'unordered-set' (Categorical) or "
                "'score-loo'"
            )
        values = torch.arange(size, device=ell.device)
        configs = torch.cartesian_prod(*[values] * count).reshape(support, count)
        x = points(configs, elements)  # [M, *S(, K)]

        # log p of each element's variables at each point: [M, *C]
        with torch.no_grad():
            if bernoulli:
                logp = x * F.logsigmoid(ell) + (1 - x) * F.logsigmoid(-ell)
            else:
                index = x.argmax(-1) if one_hot else x
                table = ell.log_softmax(-1).expand(support, *ell.shape)
                logp = table.gather(-1, index.unsqueeze(-1)).squeeze(-1)
            weights = logp.reshape(support, *elements, count).sum(-1).exp()

        fx, direct = self._costs(cost, node, x, weights, support)
        cost.elements = max(elements.numel(), 1)  # (f ran on M points, not N)
        with torch.no_grad():
            pf = weights * fx  # [M, *C]
            value = pf.sum()
            # Σ_x p(x) f(x) ∇ℓ log p(x), per variable
            signal = pf.unsqueeze(-1).expand(support, *elements, count).reshape(support, *shape)
            # ∇ℓ log p(x) without cancellation: 1 − σ(ℓ) as σ(−ℓ), 1 − softmax_k as −expm1(log softmax_k)
            # (ℓ = 27.6, probabilities 1 − 1e-12: the subtraction kept 4 digits)
            if bernoulli:
                g = (signal * torch.where(x == 1, torch.sigmoid(-ell), -torch.sigmoid(ell))).sum(0)
            else:
                hot = (x if one_hot else F.one_hot(x, size).to(ell.dtype)) == 1
                log_soft = ell.log_softmax(-1)
                score = torch.where(hot, -torch.expm1(log_soft), -log_soft.exp())
                g = (signal.unsqueeze(-1) * score).sum(0)
        n = node.num_samples
        g = g.to(ell.dtype)
        return Terms(direct, [(ell_live, g.expand(n, *g.shape))], value.expand(n).clone())

    @staticmethod
    def _costs(cost: BoundCost, node: Node, x: torch.Tensor, weights: torch.Tensor, support: int
               ) -> tuple[torch.Tensor, torch.Tensor | float]:
        """f at the M points ``[M, *C]`` (detached) and the carrier of its direct dependence on θ
        and on its own tensors: N · Σ_x p(x) f(x) in value, with each replica's parameters."""
        n = node.num_samples
        if not cost.declared:
            fx = cost(x, direct=False)
            return fx.detach(), (n * (weights * fx).sum() if fx.requires_grad else 0.0)
        # each sample's parameters at every point: per_sample needs one copy per replica (its
        # gradient is that replica's); the surrogate's replicas are one tensor, so one copy will do
        rows = n if node.replicated else 1
        kwargs = {}
        for name in cost.declared:
            live = cost.for_f[name][:rows]
            repeated = live.unsqueeze(0).expand(support, *live.shape)
            kwargs[name] = repeated.reshape(support * rows, *live.shape[1:])
        xs = x.unsqueeze(1).expand(support, rows, *x.shape[1:]).reshape(support * rows, *x.shape[1:])
        fx = cost.check(cost.f(xs, **kwargs), support * rows)
        fx = fx.reshape(support, rows, *fx.shape[1:])
        scale = 1 if node.replicated else n
        w = weights.unsqueeze(1)
        return fx[:, 0].detach(), (scale * (w * fx).sum() if fx.requires_grad else 0.0)

    def __repr__(self) -> str:
        return f"Enumerate(max_support={self.max_support}, name={self.name!r})"
