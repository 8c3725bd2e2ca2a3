r"""Exact gradients of L(θ) = E_{p(x;θ)}[f(x)], to check estimators against.

Three methods, each differentiating an exact (or quadrature-exact) expression of L(θ) with autograd:

* ``closed-form``: a :class:`~gradest.costs.Cost` with a known E[f] under a diagonal Normal;
  ∇θ L = autograd of that expression through the builder's loc and scale.
* ``quadrature``: any f under a Normal with at most 3 coordinates. Gauss–Hermite nodes
  x_i = μ + √2 σ t_i with weights w_i / π^(D/2) give L ≈ Σ_i w_i f(x_i), and
  ∇θ L = ∫ f(x) ∇θ log p(x; θ) p(x; θ) dx ≈ Σ_i w_i f(x_i) ∇θ log p(x_i; θ), so f need not be
  differentiable. The error estimate sums the differences of orders n, n/2, n/4 and a rounding
  bound, and a score-function Monte Carlo check refuses a gradient the nodes do not resolve.
* ``enumeration``: a family with finite support (Bernoulli, Categorical, products of them):
  L = Σ_x p(x; θ) f(x) summed over every point of the support.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, Normal, OneHotCategorical

from gradest.costs import Cost
from gradest.errors import GradestError
from gradest.estimators.base import (
    BoundCost,
    Builder,
    build,
    check_params,
    cost_arguments,
    declared_parameters,
    plain_replicas,
    total,
)

METHODS = ("closed-form", "quadrature", "enumeration")
#: Gauss–Hermite order per dimension count (the error estimate uses a half and a quarter of it)
QUADRATURE_ORDER = {1: 2000, 2: 200, 3: 50}
MAX_SUPPORT = 2**20
#: safety factor on the worst-case rounding bound n · ε · Σ|terms| of a sum of n terms
ROUNDING_SAFETY = 4.0
#: samples, seed and z-threshold of the Monte Carlo check of a quadrature gradient
CHECK_SAMPLES, CHECK_SEED, CHECK_Z = 2**16, 0, 6.0
#: a gap to the check beyond this many of its standard errors widens the reported error to cover it
AGREE_Z = 2.0


class ExactGradient(NamedTuple):
    """grads: name -> ∂L/∂θ (param shape); value: L; method used; error: name -> estimate or None."""

    grads: dict[str, torch.Tensor]
    value: torch.Tensor
    method: str
    error: dict[str, torch.Tensor] | None


def _normal_parts(dist: Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    base = dist.base_dist if isinstance(dist, Independent) else dist
    if type(base) is Normal:
        loc, scale = torch.broadcast_tensors(base.loc, base.scale)
        return loc, scale
    return None


def _closed_form(f, dist):
    parts = _normal_parts(dist)
    if not isinstance(f, Cost) or f.normal_mean is None or parts is None:
        return None
    return f.expectation_normal(*parts), None


def _probability(family: Distribution, x: torch.Tensor) -> torch.Tensor:
    """p(x) elementwise ``[M, *batch]``, from the probabilities themselves where the family has them.

    torch's log_prob clamps probabilities to [ε, 1 − ε], so exp(log_prob) has a zero derivative at
    probs = 0 or 1; Σ_x p(x) f(x) written with p itself keeps the true one (f(1) − f(0) for a
    Bernoulli at p = 1).
    """
    if isinstance(family, Bernoulli):
        return torch.where(x == 1, family.probs, 1.0 - family.probs)
    if isinstance(family, OneHotCategorical):
        return (family.probs * x).sum(-1)
    if isinstance(family, Categorical):
        probs = family.probs.expand(*x.shape, family.probs.shape[-1])
        return probs.gather(-1, x.long().unsqueeze(-1)).squeeze(-1)
    return family.log_prob(x).exp()


def _enumeration(f, dist):
    family = dist
    while isinstance(family, Independent):  # a product of finite supports is one too
        family = family.base_dist
    if not family.has_enumerate_support:
        return None
    support = family.enumerate_support(expand=True)  # [K, *batch, *event] of the family
    k, batch, event = support.shape[0], family.batch_shape, family.event_shape
    b = math.prod(batch)
    if k**b > MAX_SUPPORT:
        raise GradestError(
            f"enumeration needs {k}^{b} = {k**b} support points, more than {MAX_SUPPORT}; "
            "use a Monte Carlo estimate with many samples instead"
        )
    flat = support.reshape(k, b, *event)
    index = torch.cartesian_prod(*[torch.arange(k, device=support.device)] * b).reshape(k**b, b)
    x = flat[index, torch.arange(b, device=support.device)].reshape(k**b, *batch, *event)
    fx = f(x)  # with its direct dependence on θ, if f declares it
    p = _probability(family, x).reshape(k**b, -1).prod(1)
    return (p * fx).sum(), None


def exact_grad(
    f: Callable[[torch.Tensor], torch.Tensor],
    dist_builder: Builder,
    params: Mapping[str, torch.Tensor],
    method: str = "auto",
) -> ExactGradient:
    """∇θ E_{p(x;θ)}[f(x)] by the first applicable method (or the one named).

    Args:
        f: the cost, as for the estimators (see :mod:`gradest.estimators.base`).
        dist_builder: parameters -> distribution, as for the estimators.
        params: name -> tensor, as for the estimators.
        method: ``"auto"`` or one of ``closed-form``, ``quadrature``, ``enumeration``.

    Raises:
        GradestError: when the named method (or, for ``auto``, every method) does not apply.
    """
    if method != "auto" and method not in METHODS:
        raise GradestError(f"unknown method {method!r}; choose auto or one of {', '.join(METHODS)}")
    params = check_params(params)
    declared = declared_parameters(f, tuple(params))
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        dist = build(dist_builder, leaves)
        cost = _TotalCost(f, declared, leaves, dist)
        for name in METHODS if method == "auto" else (method,):
            if name == "quadrature":
                if _quadrature_applies(dist):
                    return _quadrature(cost, dist, leaves)
                continue
            if name == "closed-form":
                result = None if declared else _closed_form(f, dist)
            else:
                result = _enumeration(cost, dist)
            if result is None:
                continue
            value, _ = result
            return ExactGradient(_grad(value, leaves), value.detach(), name, None)
    raise GradestError(_why_not(method, f, dist))


class _TotalCost:
    """x [n, *B, *E] -> Σ_b f_b [n], with the declared parameters (live, so ∂f/∂θ is kept) bound."""

    def __init__(self, f, declared, leaves, dist) -> None:
        self.f, self.declared, self.leaves, self.dist = f, declared, leaves, dist

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        arguments = cost_arguments(plain_replicas(self.leaves, n), self.dist, n)
        bound = BoundCost(self.f, self.declared, arguments, n, self.dist.batch_shape)
        if not self.declared:
            with torch.no_grad():
                out = self.f(x)
        else:
            out = self.f(x, **{k: v for k, v in bound.for_f.items() if k in self.declared})
        if not isinstance(out, torch.Tensor) or out.dim() == 0 or out.shape[0] != n:
            return bound.check(out, n)  # raises the precise message
        tail = tuple(out.shape[1:])
        if tail != tuple(self.dist.batch_shape[: len(tail)]):
            bound.check(out, n)
        return total(out)


def _grad(value: torch.Tensor, leaves: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True, materialize_grads=True,
                                retain_graph=True)
    return dict(zip(leaves, grads, strict=True))


def _quadrature_applies(dist: Distribution) -> bool:
    parts = _normal_parts(dist)
    return parts is not None and parts[0].numel() <= 3


class _Rule(NamedTuple):
    """One Gauss–Hermite evaluation: L_n with autograd to θ, and the same sums in (μ, σ) coordinates."""

    value: torch.Tensor  # L_n; its gradient is Σ w f ∇θ log p
    magnitude: torch.Tensor  # a linear form whose gradient is Σ w |f| |∇θ log p| (rounding bound)
    weights: torch.Tensor  # [nodes]
    fx: torch.Tensor  # [nodes]
    z: torch.Tensor  # [nodes, D], (x − μ)/σ at the nodes, exact

    def locscale_grad(self) -> torch.Tensor:
        """∂L/∂(μ_j, σ_j) as [2, D]: Σ w f z/σ and Σ w f (z² − 1)/σ."""
        wf = (self.weights * self.fx).unsqueeze(1)
        return torch.stack([(wf * self.z).sum(0), (wf * (self.z**2 - 1.0)).sum(0)])


def _quadrature_value(f, dist, loc, order) -> _Rule:
    """Gauss–Hermite of order n per coordinate.

    log p(x_i; θ) is written through z = (√2 σ₀ t_i − (μ − μ₀)) / σ, which equals √2 t_i at θ₀ exactly
    and has the derivatives of (x_i − μ)/σ: forming x_i − μ by subtraction would lose the digits of
    σ t_i to the rounding of x_i when σ ≪ |μ|.
    """
    from scipy.special import roots_hermite  # scipy loads only when quadrature runs

    dims = loc.numel()
    t, w = roots_hermite(order)  # stable for high orders, unlike numpy's hermgauss
    t = torch.as_tensor(t, dtype=loc.dtype, device=loc.device)
    w = torch.as_tensor(w, dtype=loc.dtype, device=loc.device)
    nodes = torch.cartesian_prod(*[t] * dims).reshape(-1, dims)
    weights = torch.cartesian_prod(*[w] * dims).reshape(-1, dims).prod(1) / math.pi ** (dims / 2)
    # nodes whose weight underflows to 0 contribute nothing, and f may overflow there (exp(2x) at 70 σ)
    keep = weights > 0
    nodes, weights = nodes[keep], weights[keep]
    mu, sigma = (p.reshape(-1) for p in _normal_parts(dist))
    offset = math.sqrt(2.0) * sigma.detach() * nodes  # x_i − μ₀, exact in t_i
    with torch.no_grad():
        x = (mu.detach() + offset).reshape(len(nodes), *loc.shape)
    fx = f(x)
    if not bool(torch.isfinite(fx).all()):
        bad = ~torch.isfinite(fx)
        out = (offset / sigma.detach()).abs().max(1).values[bad]  # standard deviations from μ
        nearest = int(out.argmin())
        raise GradestError(
            f"f is NaN or inf at {int(bad.sum())} of the {len(nodes)} quadrature nodes (the nearest at x = "
            f"{x.reshape(len(nodes), -1)[bad][nearest].tolist()}, {float(out[nearest]):.3g} standard "
            "deviations out): Gauss–Hermite needs f finite on the whole real line; compare "
            "estimators against each other instead"
        )
    z = (offset - (mu - mu.detach())) / sigma
    logp = (-0.5 * z**2 - torch.log(sigma)).sum(1)
    # value Σ w f, gradient Σ w f ∇log p: the detach is the score identity, not an approximation
    value = (weights * fx * (1.0 + logp - logp.detach())).sum()
    zd, fx = z.detach(), fx.detach()
    return _Rule(value, _abs_linear_form(weights * fx.abs(), zd, mu, sigma), weights, fx, zd)


def _abs_linear_form(wf: torch.Tensor, z: torch.Tensor, mu: torch.Tensor,
                     sigma: torch.Tensor) -> torch.Tensor:
    """A linear function of (μ, σ) whose gradient is Σ_i wf_i |∂ log p_i / ∂(μ_j, σ_j)|, so that autograd
    carries such a bound through the builder to the parameters."""
    size = wf.unsqueeze(1) / sigma.detach()
    return (size * z.abs()).sum(0) @ mu + (size * (z**2 - 1.0).abs()).sum(0) @ sigma


def _quadrature(f, dist, leaves) -> ExactGradient:
    r"""Gauss–Hermite at orders n, n/2, n/4, checked against a score-function Monte Carlo estimate.

    error_k = |g_n − g_{n/2}| + |g_{n/2} − g_{n/4}| + R · n_nodes · ε · Σ_i w_i |f(x_i)| |∂_k log p(x_i)|:
    the order differences plus a worst-case bound on the rounding of the sum. Every rule can miss a
    feature of f narrower than its node spacing (exp(−x²) under σ = 10³ is 0 at every node): a Monte
    Carlo estimate, with its own standard error, catches that, and a quadrature gradient that
    disagrees with it is refused rather than reported with an error bar it does not have (a feature
    carrying less than about 1/CHECK_SAMPLES of the probability can escape both).
    """
    loc = _normal_parts(dist)[0]
    order = QUADRATURE_ORDER[loc.numel()]
    rules = [_quadrature_value(f, dist, loc, order // d) for d in (1, 2, 4)]
    grads, *coarser = (_grad(r.value, leaves) for r in rules)
    rounding = _grad(rules[0].magnitude, leaves)
    scale = ROUNDING_SAFETY * len(rules[0].weights) * torch.finfo(loc.dtype).eps
    error = {k: (grads[k] - coarser[0][k]).abs() + (coarser[0][k] - coarser[1][k]).abs()
             + scale * rounding[k].abs() for k in leaves}
    # the same error in (μ, σ) coordinates, where the Monte Carlo check runs
    sigma0 = _normal_parts(dist)[1].reshape(-1).detach()
    ls = [r.locscale_grad() / sigma0 for r in rules]
    ls_error = (ls[0] - ls[1]).abs() + (ls[1] - ls[2]).abs()
    widen = _check_against_monte_carlo(f, dist, loc.shape, rules[0], ls[0], ls_error)
    if widen is not None:
        mu, sigma = (p.reshape(-1) for p in _normal_parts(dist))
        extra = _grad(widen[0] @ mu + widen[1] @ sigma, leaves)
        error = {k: error[k] + extra[k].abs() for k in leaves}
    return ExactGradient(grads, rules[0].value.detach(), "quadrature", error)


def _check_against_monte_carlo(f, dist, shape, rule: _Rule, grad: torch.Tensor,
                               error: torch.Tensor) -> torch.Tensor | None:
    """Compare ∂L/∂(μ, σ) with a score-function estimate (leave-one-out baseline) on CHECK_SAMPLES draws.

    The standard error is the larger of the sample's and the one the quadrature predicts, Var =
    Σ w (f − L)² s² − g²: for a heavy-tailed f (exp(x) under a wide Normal) the sample spread of a
    finite Monte Carlo run is far below its true value, and would raise false alarms.
    Returns None when the two agree within AGREE_Z standard errors (beyond the rule's own error);
    the [2, D] widening of the error when they agree only within CHECK_Z; raises beyond that.
    """
    mu, sigma = (p.reshape(-1).detach() for p in _normal_parts(dist))
    generator = torch.Generator(device=mu.device).manual_seed(CHECK_SEED)
    eps = torch.randn(CHECK_SAMPLES, mu.numel(), generator=generator, dtype=mu.dtype, device=mu.device)
    with torch.no_grad():
        fx = f((mu + sigma * eps).reshape(CHECK_SAMPLES, *shape)).detach()
    if not bool(torch.isfinite(fx).all()):
        return None  # the estimators report a non-finite f on their own samples
    baseline = (fx.sum() - fx) / (CHECK_SAMPLES - 1)
    scores = torch.stack([eps, eps**2 - 1.0]) / sigma  # [2, N, D]
    terms = (fx - baseline).unsqueeze(1) * scores
    mean = terms.mean(1)
    value = (rule.weights * rule.fx).sum()
    quad_scores = torch.stack([rule.z, rule.z**2 - 1.0]) / sigma
    quad_var = (rule.weights.unsqueeze(1) * ((rule.fx - value) ** 2).unsqueeze(1) * quad_scores**2).sum(1)
    variance = torch.maximum(terms.var(1), quad_var - grad**2)
    stderr = (variance.clamp(min=0.0) / CHECK_SAMPLES).sqrt()
    gap = (grad - mean).abs()
    bad = gap > CHECK_Z * stderr + error
    if bool(bad.any()):
        which, coord = (int(i) for i in bad.nonzero()[0])
        name = ("μ", "σ")[which] + (f"[{coord}]" if mu.numel() > 1 else "")
        raise GradestError(
            f"quadrature does not resolve this f at these parameters: for ∂L/∂{name} it gives "
            f"{float(grad[which, coord]):.6g} (± {float(error[which, coord]):.2g}) but a "
            f"score-function Monte Carlo check with {CHECK_SAMPLES} samples gives "
            f"{float(mean[which, coord]):.6g} ± {float(stderr[which, coord]):.2g}; f varies on a scale "
            "the Gauss–Hermite nodes step over (a narrow feature under a wide Normal): use a named cost "
            "with a closed form, or compare estimators against each other"
        )
    # a gap beyond the Monte Carlo noise is evidence the nodes missed part of f: widen the error to
    # what the check can vouch for instead of keeping the rule's own (then too small) estimate
    doubtful = gap > AGREE_Z * stderr + error
    if not bool(doubtful.any()):
        return None
    return torch.where(doubtful, gap + AGREE_Z * stderr, torch.zeros_like(gap))


def _why_not(method: str, f, dist: Distribution) -> str:
    family = type(dist).__name__
    if method == "closed-form":
        return (f"no closed form for this cost under {family}: closed forms cover the named "
                "costs (square, exp, cos, linear) under a Normal; try method='quadrature'")
    if method == "quadrature":
        return (f"quadrature needs a Normal with at most 3 coordinates, got {family} with "
                f"batch {list(dist.batch_shape)} and event {list(dist.event_shape)}")
    if method == "enumeration":
        return f"enumeration needs a family with finite support; {family} has none"
    return (f"no exact gradient for {family} with this cost: exact methods cover named costs "
            "under a Normal, any cost under a Normal of ≤ 3 coordinates, and finite-support "
            "families; compare estimators against each other instead")
