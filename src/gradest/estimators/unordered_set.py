r"""The unordered set estimator: k draws without replacement per Categorical, with its built-in baseline.

For a Categorical with probabilities p over D and a set S of k' = min(k, |D|) distinct values drawn
without replacement (Gumbel-top-k: the k' largest ℓ_d + g_d), Kool, van Hoof & Welling (2020) give

    L̂ = Σ_{s∈S} p(s) R(S, s) f(s),     R(S, s) = p^{D∖s}(S ∖ s) / p(S)
    ĝ = Σ_{s∈S} ∇θ p(s) R(S, s) [f(s) − B_s],   B_s = Σ_{s'∈S} p(s') R^{D∖s}(S, s') f(s')

with p(S) the probability of drawing the set S in any order, p^{D∖s} the same law on D without s
(renormalized), R^{D∖s}(S, s') = p^{D∖{s,s'}}(S ∖ {s, s'}) / p^{D∖s}(S ∖ s) for s' ≠ s and
R^{D∖s}(S, s) = 1. Both are unbiased: the weights p(s) R(S, s) sum to one over S, and the baseline
B_s is, given s ∈ S, an unbiased estimate of E[f] (s's own term exactly, the others by the
estimator on D ∖ s), so Σ_s ∇p(s) E[B_s | s ∈ S] = E[f] Σ_s ∇p(s) = 0. ∇ℓ p(s) = p(s)(e_s − p) in
the logits. When k ≥ |D| the set is the whole support and the estimate is exact (zero variance).

The set probabilities come from the subset recursion P_E(U) = Σ_{t∈U∖E} P_E(U ∖ t) p_t / m(D ∖ (U ∖ t)),
P_E(E) = 1 (draw U ∖ E in any order once E is removed; m = probability mass), exact and in sums of
positive terms: O(2^k' · k'³) per variable, so 2 ≤ k ≤ 8 (k = 1 would leave B_s nothing to
estimate the other values' costs from).

One of gradest's N single-sample estimates is one such set (k' evaluations of f): the N estimates
are independent. Each Categorical is its own domain, so f must give one cost per Categorical
variable (``[N, *B]`` for a batch B, or ``[N]`` for a single Categorical) — a cost of several
variables would need sampling without replacement from their product (stochastic beam search),
which this estimator does not do. A cost that declares θ gets its direct term Σ_s p(s)R(S, s) ∇θ f(s).

Requires: a Categorical or OneHotCategorical node; only values of f are used.

References: Kool, van Hoof & Welling (2020), "Estimating gradients for discrete random variables
by sampling without replacement", ICLR; Kool, van Hoof & Welling (2019), "Stochastic beams and where
to find them: the Gumbel-top-k trick".
"""

from __future__ import annotations

import itertools

import torch
from torch.distributions import Categorical, OneHotCategorical

from gradest import rng
from gradest.errors import GradestError
from gradest.estimators import concrete
from gradest.estimators.base import BoundCost, Capabilities, Estimator, Node, Terms, unwrap

#: the largest set size (the recursion visits 2^k subsets)
MAX_K = 8


def set_probabilities(p: torch.Tensor, rest: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """p(S), p^{D∖s}(S ∖ s) and p^{D∖{s,s'}}(S ∖ {s, s'}) for sets S of k' values.

    p: ``[..., k']`` the probabilities of S's members; rest: ``[...]`` the mass outside S.
    Returns ``[...]``, ``[..., k']`` and ``[..., k', k']`` (the diagonal holds the second).
    """
    k = p.shape[-1]
    full = (1 << k) - 1
    pairs = list(itertools.combinations(range(k), 2))
    excluded = [0] + [1 << i for i in range(k)] + [(1 << i) | (1 << j) for i, j in pairs]
    # mass outside U, for every subset U, as sums of positive terms
    bits = torch.tensor([[(u >> i) & 1 for i in range(k)] for u in range(1 << k)], dtype=p.dtype,
                        device=p.device)  # [2^k, k]
    outside = rest.unsqueeze(-1) + (p.unsqueeze(-2) * (1.0 - bits)).sum(-1)  # [..., 2^k]
    start = torch.tensor([[float(u == e) for e in excluded] for u in range(1 << k)], dtype=p.dtype,
                         device=p.device)  # [2^k, |E|]
    table: list[torch.Tensor] = []
    for u in range(1 << k):
        value = start[u].expand(*p.shape[:-1], len(excluded))
        for t in range(k):
            if u >> t & 1:
                prev = u ^ (1 << t)
                # P_E(U ∖ t) is 0 unless E ⊆ U ∖ t: draws of t ∈ E never count
                value = value + table[prev] * (p[..., t] / outside[..., prev]).unsqueeze(-1)
        table.append(value)
    final = table[full]  # [..., |E|]
    whole = final[..., 0]
    one = final[..., 1 : 1 + k]
    two = torch.diag_embed(one)
    for index, (i, j) in enumerate(pairs):
        two[..., i, j] = two[..., j, i] = final[..., 1 + k + index]
    return whole, one, two


class UnorderedSet(Estimator):
    """ĝ = Σ_{s∈S} ∇p(s) R(S, s) [f(s) − B_s] over a set S of k draws without replacement."""

    capabilities = Capabilities(families=(Categorical, OneHotCategorical), interior=True)
    draws_through_inverse_cdf = False  # (the sampler's uniforms become the Gumbel noise)

    def __init__(self, k: int = 4, name: str = "unordered-set") -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 2 <= k <= MAX_K:
            # (k = 1 leaves the baseline nothing to estimate the other values' costs from)
            raise GradestError(f"the set size k must be an integer from 2 to {MAX_K}, got {k!r}")
        self.k = k
        self.name = name

    def family_refusal(self, family) -> str:
        return (
            f"{self.name} samples Categorical values without replacement, not {type(family).__name__}; "
            "use 'disarm' or 'arm' (Bernoulli), 'score' or 'score-loo' (any family) instead"
        )

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator) -> Terms:
        family = unwrap(node.dist)
        one_hot = isinstance(family, OneHotCategorical)
        ell_live = family.logits
        shape = concrete.noise_shape(node)  # [*S, K]
        size = shape[-1]
        k = min(self.k, size)
        (u,) = concrete.uniforms(self, node, shape, generator)
        ell = node.per_sample(ell_live.detach())
        log_p = ell.log_softmax(-1)
        chosen = (ell + rng.gumbel(u)).topk(k, -1).indices  # [N, *S, k]: Gumbel-top-k
        probs = log_p.exp()
        p_set = probs.gather(-1, chosen)
        rest = (probs * (1.0 - torch.zeros_like(probs).scatter_(-1, chosen, 1.0))).sum(-1)
        whole, one, two = set_probabilities(p_set, rest)
        weight = p_set * one / whole.unsqueeze(-1)  # p(s) R(S, s), summing to 1 over S
        # R^{D∖s}(S, s') with 1 on the diagonal
        second = two / one.unsqueeze(-1)

        costs, direct = [], 0.0
        for j in range(k):
            x = chosen[..., j]
            if one_hot:
                x = torch.nn.functional.one_hot(x, size).to(probs.dtype)
            fx = cost(x)  # [N, *C]
            if j == 0 and tuple(fx.shape[1:]) != tuple(shape[:-1]):
                raise GradestError(
                    f"{self.name} draws a set per Categorical variable, so f must return one cost per "
                    f"variable, shape [N, {', '.join(map(str, shape[:-1]))}], got {list(fx.shape)} (a "
                    "cost of several variables would need sampling without replacement from their "
                    "product); return per-variable costs if f separates, or use 'score-loo'"
                )
            if fx.requires_grad:  # the direct term (θ declared in f, f's own tensors), set-weighted
                direct = direct + (weight[..., j].detach() * fx).sum()
            costs.append(fx.detach())
        with torch.no_grad():
            raw = torch.stack(costs, -1)  # [N, *S, k], in f's dtype
            f_set = raw.to(probs.dtype)
            baseline = (second * (p_set * f_set).unsqueeze(-2)).sum(-1)  # B_s: [N, *S, k]
            signal = weight * (f_set - baseline)
            # Σ_s w_s A_s (e_s − p): the gradient of p(s) in the logits
            g = torch.zeros_like(probs).scatter_add_(-1, chosen, signal)
            g = g - signal.sum(-1, keepdim=True) * probs
            value = (weight.to(raw.dtype) * raw).reshape(node.num_samples, -1).sum(1)
        return Terms(direct, [(ell_live, g)], value)

    def __repr__(self) -> str:
        return f"UnorderedSet(k={self.k}, name={self.name!r})"
