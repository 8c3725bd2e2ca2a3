r"""Measure-valued derivatives (weak derivatives): a difference of two expectations per parameter.

    ∂/∂θ_i p(x; θ) = c_θi (p⁺(x; θ) − p⁻(x; θ))
    ⇒ ∂/∂θ_i E_p[f(x)] = c_θi (E_{p⁺}[f(x)] − E_{p⁻}[f(x)])

One sample's estimate per coordinate d of a diagonal family is c (f(x⁺) − f(x⁻)), where x⁺ and x⁻
equal a base draw x ~ p except in coordinate d, drawn from p⁺ and p⁻ (2·D evaluations of f per
parameter and sample, all in one batched call of f). Decompositions implemented:

==============  =========  ============================  ============================  ==========
family          parameter  p⁺ (coordinate d)             p⁻ (coordinate d)             c
==============  =========  ============================  ============================  ==========
Normal(μ, σ)    μ          μ + σW, W ~ Weibull(√2, 2)    μ − σW′, W′ ~ Weibull(√2, 2)  1/(√(2π)σ)
Normal(μ, σ)    σ          μ + σM, M ~ ds-Maxwell(0, 1)  μ + σN, N ~ N(0, 1)           1/σ
Exponential(λ)  λ          Exponential(λ)                Gamma(2, λ)                   1/λ
Poisson(λ)      λ          x + 1, x ~ Poisson(λ)         Poisson(λ)                    1
Bernoulli(p)    p          δ₁                            δ₀                            1
==============  =========  ============================  ============================  ==========

Coupling (``coupled=True``, as in the paper and optax): W′ = W; N = U·M with U ~ Uniform(0, 1)
(then U·M ~ N(0, 1)); Gamma(2, λ) = x + E/λ and Poisson's x shared by p⁺ and p⁻, with x the
base draw. Uncoupled draws are independent. Bernoulli's decomposition has no randomness to couple.

Only values of f are used, never its derivative in x: f may be a black box; x may be discrete.
The perturbed points are evaluated without gradients; a cost that declares θ gets its direct
term ∂f/∂θ at the base draw x₀ (one more evaluation of f on the N base points).
Gradients reach the user's parameterization through the chain rule from the family's own
parameters (``loc``, ``scale``, ``rate``, ``probs``).

Requires: a family in the table (or ``Independent`` of one). Cost: (2·D + 1) evaluations of f per
sample and parameter, against 1 for pathwise and score function.

References: Pflug (1989, 1996); Heidergott & Vázquez-Abad (2000); Mohamed et al., JMLR 21 (2020)
§6 and its code (optax ``measure_valued_estimation_mean/std``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributions import Bernoulli, Distribution, Exponential, Normal, Poisson

from gradest import rng
from gradest.errors import GradestError
from gradest.estimators.base import (
    BoundCost,
    Capabilities,
    Estimator,
    Node,
    Terms,
    carrier,
    total,
    unwrap,
)
from gradest.estimators.sampling import std_normal_icdf

#: one rule: (estimator, cost, family, node, generator) -> ([(family tensor φ, ĝ [N, *φ's batch])], x₀)
Rule = Callable[..., tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]]

_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _exponential(u: torch.Tensor) -> torch.Tensor:
    # (u < 1 by at least ε/2, so 1 − u > 0: finite, at most 16.6 in float32 and 36.7 in float64)
    return -torch.log1p(-u)


class _Points:
    """f at the base draw x₀ and at perturbed copies of it, in ONE call of f (in chunks of samples
    when the N·(2D + 1)·D points would exceed ``POINTS_BUDGET`` bytes).

    ``evaluate(x0, blocks)``: per block ``values [N, D]``, row d of the block is x₀ with coordinate d
    replaced by values[:, d]; returns one ``[N, D]`` tensor of total costs per block (detached).
    f(x₀) comes from the same call, with gradients (its direct dependence on θ and on tensors of
    its own); the perturbed points never carry a gradient to θ.
    """

    def __init__(self, cost: BoundCost, node: Node) -> None:
        self.cost = cost
        self.node = node
        self.fx0: torch.Tensor | None = None

    def base(self, x0: torch.Tensor) -> torch.Tensor:
        """Total f(x₀) ``[N]``, with gradients."""
        if self.fx0 is None:
            self.evaluate(x0, [])
        return self.fx0

    def evaluate(self, x0: torch.Tensor, blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        n, d = x0.shape
        per_sample = (1 + len(blocks) * d) * d * x0.element_size()  # bytes of one sample's points
        if blocks and n * per_sample > POINTS_BUDGET:
            return self._in_chunks(x0, blocks, max(1, POINTS_BUDGET // per_sample))
        diag = torch.arange(d, device=x0.device)
        parts = [] if self.fx0 is not None else [x0.unsqueeze(1)]
        for values in blocks:
            points = x0.unsqueeze(1).repeat(1, d, 1)  # [N, D, D]: row d is perturbed in coordinate d
            points[:, diag, diag] = values
            parts.append(points)
        if not parts:
            return []
        points = torch.cat(parts, 1)
        k = points.shape[1]
        shape = (*self.node.batch_shape, *self.node.event_shape)
        # sample-major order: rows n·k … n·k + k − 1 belong to sample n
        x = points.reshape(n * k, *shape)
        with torch.enable_grad():
            if self.fx0 is None and self.cost.declared:
                fx = self._with_direct_term(x, n, k)
            else:
                fx = self.cost(x, direct=False)
            fx = total(fx).reshape(n, k)
            if self.fx0 is None:
                self.fx0, fx = fx[:, 0], fx[:, 1:]
        fx = fx.detach()
        return [fx[:, j * d : (j + 1) * d] for j in range(len(blocks))]

    def _in_chunks(self, x0: torch.Tensor, blocks: list[torch.Tensor], rows: int) -> list[torch.Tensor]:
        """The same values, with the perturbed points built and evaluated ``rows`` samples at a time
        (the N·(2D + 1)·D points of a large parameter would not fit in memory at once)."""
        self.base(x0)  # f(x₀) with its gradients, on all N samples in one call
        parts = []
        for start in range(0, x0.shape[0], rows):
            chunk = _Points(self.cost, self.node)
            chunk.fx0 = self.fx0[start : start + rows]  # (already known: not evaluated again)
            parts.append(chunk.evaluate(x0[start : start + rows], [b[start : start + rows] for b in blocks]))
        return [torch.cat(block) for block in zip(*parts, strict=True)]

    def _with_direct_term(self, x: torch.Tensor, n: int, k: int) -> torch.Tensor:
        """f on all points, the base points (column 0) with the live parameters, the rest detached."""
        cost = self.cost
        kwargs = {}
        for name in cost.declared:
            live = cost.for_f[name]  # [N, …]
            rest = live.detach().unsqueeze(1).expand(n, k - 1, *live.shape[1:])
            kwargs[name] = torch.cat([live.unsqueeze(1), rest], 1).reshape(n * k, *live.shape[1:])
        return cost.check(cost.f(x, **kwargs), n * k)


#: bytes of perturbed points built at once; beyond it they are evaluated in chunks of samples
POINTS_BUDGET = 2**28


def _flat(node: Node, t: torch.Tensor) -> torch.Tensor:
    return node.per_sample(t).detach().reshape(node.num_samples, -1)


def _shaped(node: Node, g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return g.reshape(node.num_samples, *like.shape[1 if node.replicated else 0 :])


def _normal(est, points: _Points, dist: Normal, node: Node, generator):
    loc, scale = dist.loc, dist.scale
    mu, sigma = _flat(node, loc), _flat(node, scale)
    n, d = mu.shape
    want_loc, want_scale = loc.requires_grad, scale.requires_grad
    # columns of u: ε | W, W′ (uncoupled) | |M| from E and Z, sign of M, U or N
    n_loc = (1 if est.coupled else 2) if want_loc else 0
    n_scale = 4 if want_scale else 0
    u = est.uniforms(n, (1 + n_loc + n_scale) * d, generator, mu).reshape(n, -1, d)
    x0 = mu + sigma * std_normal_icdf(u[:, 0])
    blocks = []
    if want_loc:
        w = (2.0 * _exponential(u[:, 1])).sqrt()  # Weibull(scale √2, shape 2), i.e. Rayleigh(1)
        w_neg = w if est.coupled else (2.0 * _exponential(u[:, 2])).sqrt()
        blocks += [mu + sigma * w, mu - sigma * w_neg]
    if want_scale:
        s = u[:, 1 + n_loc :]
        # |M|² ~ χ²₃ = 2·Gamma(3/2) = 2·Exp + Z²; a fair sign makes it double-sided
        m = (2.0 * _exponential(s[:, 0]) + std_normal_icdf(s[:, 1]) ** 2).sqrt()
        m = torch.where(s[:, 2] < 0.5, -m, m)
        normal = s[:, 3] * m if est.coupled else std_normal_icdf(s[:, 3])
        blocks += [mu + sigma * m, mu + sigma * normal]
    fs = points.evaluate(x0, blocks)
    grads = []
    if want_loc:
        grads.append((loc, _shaped(node, (fs[0] - fs[1]) / (_SQRT_2PI * sigma), loc)))
        fs = fs[2:]
    if want_scale:
        grads.append((scale, _shaped(node, (fs[0] - fs[1]) / sigma, scale)))
    return grads, x0


def _exponential_rule(est, points: _Points, dist: Exponential, node: Node, generator):
    rate = dist.rate
    lam = _flat(node, rate)
    n, d = lam.shape
    if not rate.requires_grad:
        return [], _exponential(est.uniforms(n, d, generator, lam)) / lam
    u = est.uniforms(n, (2 if est.coupled else 4) * d, generator, lam).reshape(n, -1, d)
    x0 = _exponential(u[:, 0]) / lam
    if est.coupled:
        # p⁺ is the base draw itself; p⁻ = Gamma(2, λ) adds an independent Exp(λ) to it
        (minus,) = points.evaluate(x0, [x0 + _exponential(u[:, 1]) / lam])
        plus = points.base(x0).detach().unsqueeze(1)
    else:
        gamma2 = (_exponential(u[:, 2]) + _exponential(u[:, 3])) / lam
        plus, minus = points.evaluate(x0, [_exponential(u[:, 1]) / lam, gamma2])
    return [(rate, _shaped(node, (plus - minus) / lam, rate))], x0


def _poisson(est, points: _Points, dist: Poisson, node: Node, generator):
    if est.sampler is not None:
        raise GradestError(
            f"sampler {est.sampler.name!r} draws through the inverse CDF, which torch has not for "
            "Poisson; use 'mvd' without a sampler suffix"
        )
    rate = dist.rate
    lam = _flat(node, rate)
    x0 = rng.poisson(lam, generator)
    if not rate.requires_grad:
        return [], x0
    if est.coupled:
        (plus,) = points.evaluate(x0, [x0 + 1.0])
        minus = points.base(x0).detach().unsqueeze(1)
    else:
        fresh = rng.poisson(lam.repeat(2, 1), generator).reshape(2, *lam.shape)
        plus, minus = points.evaluate(x0, [fresh[0] + 1.0, fresh[1]])
    return [(rate, _shaped(node, plus - minus, rate))], x0


def _bernoulli(est, points: _Points, dist: Bernoulli, node: Node, generator):
    probs = dist.probs
    p = _flat(node, probs)
    x0 = (est.uniforms(p.shape[0], p.shape[1], generator, p) < p).to(p.dtype)
    if not probs.requires_grad:
        return [], x0
    one, zero = points.evaluate(x0, [torch.ones_like(x0), torch.zeros_like(x0)])
    return [(probs, _shaped(node, one - zero, probs))], x0


#: family -> its decomposition; add a family with one function and one line here
RULES: dict[type[Distribution], Rule] = {
    Normal: _normal,
    Exponential: _exponential_rule,
    Poisson: _poisson,
    Bernoulli: _bernoulli,
}


class MeasureValued(Estimator):
    """ĝ_n = c (f(x⁺_n) − f(x⁻_n)) per coordinate, coupled (paper) or with independent draws."""

    # a discrete family's differences f(x + 1) − f(x) stay exact where its draws collapse; a continuous
    # family's perturbed points x ± σw collapse with them
    capabilities = Capabilities(families=tuple(RULES), fixed_support=True, health="continuous",
                                node="none")
    node_refusal = "evaluates the downstream cost at perturbed points"
    # the rules turn a sampler's uniforms into draws themselves (Poisson refuses samplers)
    draws_through_inverse_cdf = False

    def applicable(self, dist: Distribution) -> str | None:
        reason = super().applicable(dist)
        if reason is None and self.sampler is not None and isinstance(unwrap(dist), Poisson):
            return (
                f"sampler {self.sampler.name!r} draws through the inverse CDF, which torch has not for "
                f"Poisson; drop the '+{self.sampler.name}' suffix for this family"
            )
        return reason

    def __init__(self, coupled: bool = True, name: str | None = None) -> None:
        if not isinstance(coupled, bool):
            raise GradestError(f"coupled must be True or False, got {coupled!r}")
        self.coupled = coupled
        self.name = name or ("mvd" if coupled else "mvd-uncoupled")

    def family_refusal(self, family: Distribution) -> str:
        return (
            f"the measure-valued estimator has decompositions for "
            f"{', '.join(c.__name__ for c in RULES)}, not {type(family).__name__}; use "
            "'score' (any family) or 'pathwise' (reparameterizable families) instead"
        )

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator
               ) -> tuple[torch.Tensor, torch.Tensor]:
        family = unwrap(node.dist)
        rule = next(r for c, r in RULES.items() if isinstance(family, c))
        points = _Points(cost, node)
        # the perturbed points are evaluated without gradients: the estimator never differentiates f
        with torch.no_grad():
            grads, x0 = rule(self, points, family, node, generator)
        self.healthy(node, x0)
        fx = points.base(x0)
        # the direct term (where f depends on θ or on tensors of its own) by autograd; ĝ through the
        # family's parameters, and by the chain rule to whatever parameterization the builder used
        return Terms(carrier(fx), grads, fx.detach())

    def __repr__(self) -> str:
        return f"MeasureValued(coupled={self.coupled}, name={self.name!r})"
