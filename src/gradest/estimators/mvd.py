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

Only values of f are used, never its derivative: f may be a black box; x may be discrete.
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
from torch.distributions import Bernoulli, Distribution, Exponential, Independent, Normal, Poisson

from gradest.errors import GradestError
from gradest.estimators.base import Cost, Estimator, evaluate

#: one rule: (estimator, f, family, N, generator) -> ([(family parameter, ĝ)], f(x₀))
Rule = Callable[..., tuple[list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor]]

_SQRT_2PI = math.sqrt(2.0 * math.pi)


def _std_normal(u: torch.Tensor) -> torch.Tensor:
    return math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)


def _exponential(u: torch.Tensor) -> torch.Tensor:
    return -torch.log1p(-u)


def _evaluate(
    f: Cost, x0: torch.Tensor, blocks: list[tuple[torch.Tensor, torch.Tensor]], shape: torch.Size
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """f at x₀ ``[N, D]`` and, per block (base, values), at base with coordinate d set to values[:, d].

    Returns f(x₀) ``[N]`` and one ``[N, D]`` tensor per block, from ONE call of f on
    ``N · (1 + len(blocks) · D)`` points.
    """
    n, d = x0.shape
    diag = torch.arange(d)
    parts = [x0.unsqueeze(1)]
    for base, values in blocks:
        points = base.unsqueeze(1).repeat(1, d, 1)  # [N, D, D]: row d is perturbed in coordinate d
        points[:, diag, diag] = values
        parts.append(points)
    points = torch.cat(parts, 1)
    k = points.shape[1]
    fx = evaluate(f, points.reshape(n * k, *shape[1:]), n * k).reshape(n, k)
    return fx[:, 0], [fx[:, 1 + j * d : 1 + (j + 1) * d] for j in range(len(blocks))]


def _flat(t: torch.Tensor, n: int) -> torch.Tensor:
    return t.detach().reshape(n, -1)


def _normal(est: MeasureValued, f: Cost, dist: Normal, n: int, generator: torch.Generator):
    loc, scale = dist.loc, dist.scale
    shape = loc.shape
    mu, sigma = _flat(loc, n), _flat(scale, n)
    d = mu.shape[1]
    want_loc, want_scale = loc.requires_grad, scale.requires_grad
    # columns of u: ε | W, W′ (uncoupled) | |M| from E and Z, sign of M, U or N
    n_loc = (1 if est.coupled else 2) if want_loc else 0
    n_scale = 4 if want_scale else 0
    u = est._uniforms(n, (1 + n_loc + n_scale) * d, generator, mu.dtype).reshape(n, -1, d)
    x0 = mu + sigma * _std_normal(u[:, 0])
    blocks = []
    if want_loc:
        w = (2.0 * _exponential(u[:, 1])).sqrt()  # Weibull(scale √2, shape 2), i.e. Rayleigh(1)
        w_neg = w if est.coupled else (2.0 * _exponential(u[:, 2])).sqrt()
        blocks += [(x0, mu + sigma * w), (x0, mu - sigma * w_neg)]
    if want_scale:
        s = u[:, 1 + n_loc :]
        # |M|² ~ χ²₃ = 2·Gamma(3/2) = 2·Exp + Z²; a fair sign makes it double-sided
        m = (2.0 * _exponential(s[:, 0]) + _std_normal(s[:, 1]) ** 2).sqrt()
        m = torch.where(s[:, 2] < 0.5, -m, m)
        normal = s[:, 3] * m if est.coupled else _std_normal(s[:, 3])
        blocks += [(x0, mu + sigma * m), (x0, mu + sigma * normal)]
    values, fs = _evaluate(f, x0, blocks, shape)
    grads = []
    if want_loc:
        grads.append((loc, ((fs[0] - fs[1]) / (_SQRT_2PI * sigma)).reshape(shape)))
        fs = fs[2:]
    if want_scale:
        grads.append((scale, ((fs[0] - fs[1]) / sigma).reshape(shape)))
    return grads, values


def _exponential_rule(est: MeasureValued, f: Cost, dist: Exponential, n: int, generator):
    rate = dist.rate
    shape = rate.shape
    lam = _flat(rate, n)
    d = lam.shape[1]
    if not rate.requires_grad:
        u = est._uniforms(n, d, generator, lam.dtype)
        values, _ = _evaluate(f, _exponential(u) / lam, [], shape)
        return [], values
    u = est._uniforms(n, (2 if est.coupled else 4) * d, generator, lam.dtype).reshape(n, -1, d)
    x0 = _exponential(u[:, 0]) / lam
    if est.coupled:
        # p⁺ is the base draw itself; p⁻ = Gamma(2, λ) adds an independent Exp(λ) to it
        values, (minus,) = _evaluate(f, x0, [(x0, x0 + _exponential(u[:, 1]) / lam)], shape)
        plus = values.unsqueeze(1)
    else:
        gamma2 = (_exponential(u[:, 2]) + _exponential(u[:, 3])) / lam
        values, (plus, minus) = _evaluate(
            f, x0, [(x0, _exponential(u[:, 1]) / lam), (x0, gamma2)], shape
        )
    return [(rate, ((plus - minus) / lam).reshape(shape))], values


def _poisson(est: MeasureValued, f: Cost, dist: Poisson, n: int, generator):
    if est.sampler is not None:
        raise GradestError(
            f"sampler {est.sampler.name!r} draws through the inverse CDF, which torch has not for "
            "Poisson; use 'mvd' without a sampler suffix"
        )
    rate = dist.rate
    shape = rate.shape
    lam = _flat(rate, n)
    x0 = torch.poisson(lam, generator=generator)
    if not rate.requires_grad:
        values, _ = _evaluate(f, x0, [], shape)
        return [], values
    if est.coupled:
        values, (plus,) = _evaluate(f, x0, [(x0, x0 + 1.0)], shape)
        minus = values.unsqueeze(1)
    else:
        fresh = torch.poisson(lam.repeat(2, 1), generator=generator).reshape(2, n, -1)
        values, (plus, minus) = _evaluate(f, x0, [(x0, fresh[0] + 1.0), (x0, fresh[1])], shape)
    return [(rate, (plus - minus).reshape(shape))], values


def _bernoulli(est: MeasureValued, f: Cost, dist: Bernoulli, n: int, generator):
    probs = dist.probs
    shape = probs.shape
    p = _flat(probs, n)
    x0 = (est._uniforms(n, p.shape[1], generator, p.dtype) < p).to(p.dtype)
    if not probs.requires_grad:
        values, _ = _evaluate(f, x0, [], shape)
        return [], values
    values, (one, zero) = _evaluate(f, x0, [(x0, torch.ones_like(x0)), (x0, torch.zeros_like(x0))], shape)
    return [(probs, (one - zero).reshape(shape))], values


#: family -> its decomposition; add a family with one function and one line here
RULES: dict[type[Distribution], Rule] = {
    Normal: _normal,
    Exponential: _exponential_rule,
    Poisson: _poisson,
    Bernoulli: _bernoulli,
}


class MeasureValued(Estimator):
    """ĝ_n = c (f(x⁺_n) − f(x⁻_n)) per coordinate, coupled (paper) or with independent draws."""

    def __init__(self, coupled: bool = True, name: str | None = None) -> None:
        self.coupled = coupled
        self.name = name or ("mvd" if coupled else "mvd-uncoupled")

    def _terms(
        self, f: Cost, dist: Distribution, num_samples: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        family = dist.base_dist if isinstance(dist, Independent) else dist
        rule = RULES.get(type(family))
        if rule is None:
            raise GradestError(
                f"the measure-valued estimator has decompositions for "
                f"{', '.join(c.__name__ for c in RULES)}, not {type(family).__name__}; use "
                "'score' (any family) or 'pathwise' (reparameterizable families) instead"
            )
        # f is evaluated on detached points: the estimator never differentiates f
        with torch.no_grad():
            grads, values = rule(self, f, family, num_samples, generator)
        terms = values
        for param, g in grads:
            # value f(x₀); gradient ĝ through the family's parameter, and by the chain rule
            # to whatever parameterization the builder used
            terms = terms + ((param - param.detach()) * g).reshape(num_samples, -1).sum(1)
        return terms, values

    def __repr__(self) -> str:
        return f"MeasureValued(coupled={self.coupled}, name={self.name!r})"
