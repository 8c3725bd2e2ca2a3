r"""Exact gradients of L(θ) = E_{p(x;θ)}[f(x)], to check estimators against.

Three methods, each differentiating an exact (or quadrature-exact) expression of L(θ) with autograd:

* ``closed-form``: a :class:`~gradest.costs.Cost` with a known E[f] under a diagonal Normal;
  ∇θ L = autograd of that expression through the builder's loc and scale.
* ``quadrature``: any f under a Normal with at most 3 coordinates, through the score identity
  ∇θ L = ∫ f(x) ∇θ log p(x; θ) p(x; θ) dx, so f need not be differentiable. One coordinate: adaptive
  Gauss–Kronrod (7, 15) in z = (x − μ)/σ, bisecting the panels where f jumps or kinks, with an error
  that bounds the actual one (the tests check it on steps, kinks, narrow peaks, fast growth and
  oscillation), and a search on random draws for features narrower than the nodes' spacing. Two or
  three: Gauss–Hermite of orders n, n/2, n/4, whose differences estimate the error, widened by what a
  Monte Carlo check vouches for. The score-function Monte Carlo check refuses a gradient the nodes do
  not resolve.
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
from gradest.errors import GradestError, NonFiniteError
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
    if b * math.log2(max(k, 1)) > math.log2(MAX_SUPPORT):
        # k**b itself can have more digits than Python will print (2^20000)
        count = f" = {k**b}" if b * math.log2(max(k, 1)) < 64 else ""
        raise GradestError(
            f"enumeration needs {k}^{b}{count} support points, more than {MAX_SUPPORT}; "
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
        GradestError: when the named method (or, for ``auto``, every method) does not apply, or f
            is not callable.
        NonFiniteError: E f or its gradient is not finite at these parameters (exp(−k x²) with
            k < 0 under a wide Normal): there is no gradient to check against.
    """
    if not isinstance(method, str) or (method != "auto" and method not in METHODS):
        raise GradestError(f"unknown method {method!r}; choose auto or one of {', '.join(METHODS)}")
    if not callable(f):
        raise GradestError(f"f must be a function of the samples x [N, ...] -> [N], got {type(f).__name__}; "
                           "e.g. gradest.named_cost('square')")
    if not callable(dist_builder):
        raise GradestError(f"dist_builder must be a function of the parameters -> a Distribution (e.g. "
                           f"torch.distributions.Normal), got {type(dist_builder).__name__}")
    params = check_params(params)
    declared = declared_parameters(f, tuple(params))
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        dist = build(dist_builder, leaves)
        cost = _TotalCost(f, declared, leaves, dist)
        for name in METHODS if method == "auto" else (method,):
            if name == "quadrature":
                if _quadrature_applies(dist):
                    return _finite(_quadrature(cost, dist, leaves))
                continue
            if name == "closed-form":
                result = None if declared else _closed_form(f, dist)
            else:
                result = _enumeration(cost, dist)
            if result is None:
                continue
            value, _ = result
            return _finite(ExactGradient(_grad(value, leaves), value.detach(), name, None))
    raise GradestError(_why_not(method, f, dist))


def _finite(exact: ExactGradient) -> ExactGradient:
    """``exact``, or a NonFiniteError: an infinite E f (or gradient) is no reference to check against."""
    if not (bool(torch.isfinite(exact.value).all())
            and all(bool(torch.isfinite(g).all()) for g in exact.grads.values())):
        raise NonFiniteError(
            f"E f is not finite at these parameters (exact value {float(exact.value.sum()):g}, by "
            f"{exact.method}), so ∇θ E f does not exist; change the parameters or the cost"
        )
    return exact


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


def _hermite_nodes(order: int, loc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss–Hermite of order n per coordinate, as z-nodes √2 t_i [n^D, D] with weights w_i / π^(D/2)."""
    from scipy.special import roots_hermite  # scipy loads only when quadrature runs

    dims = loc.numel()
    t, w = roots_hermite(order)  # stable for high orders, unlike numpy's hermgauss
    t = torch.as_tensor(t, dtype=loc.dtype, device=loc.device)
    w = torch.as_tensor(w, dtype=loc.dtype, device=loc.device)
    nodes = torch.cartesian_prod(*[t] * dims).reshape(-1, dims)
    weights = torch.cartesian_prod(*[w] * dims).reshape(-1, dims).prod(1) / math.pi ** (dims / 2)
    # nodes whose weight underflows to 0 contribute nothing, and f may overflow there (exp(2x) at 70 σ)
    keep = weights > 0
    return math.sqrt(2.0) * nodes[keep], weights[keep]


def _quadrature_value(f, dist, loc, nodes, weights) -> _Rule:
    """Σ_i w_i f(x_i) at x_i = μ + σ z_i (z-nodes ``[n, D]``, weights summing to ≈ 1), with autograd to θ.

    log p(x_i; θ) is written through z = (σ₀ z_i − (μ − μ₀)) / σ, which equals z_i at θ₀ exactly
    and has the derivatives of (x_i − μ)/σ: forming x_i − μ by subtraction would lose the digits of
    σ z_i to the rounding of x_i when σ ≪ |μ|.
    """
    mu, sigma = (p.reshape(-1) for p in _normal_parts(dist))
    offset = sigma.detach() * nodes  # x_i − μ₀, exact in z_i
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
    """Adaptive Gauss–Kronrod for one coordinate, Gauss–Hermite at orders n, n/2, n/4 for two or three."""
    loc = _normal_parts(dist)[0]
    if loc.numel() == 1:
        return _adaptive(f, dist, leaves)
    return _hermite(f, dist, leaves)


def _hermite(f, dist, leaves) -> ExactGradient:
    r"""Gauss–Hermite at orders n, n/2, n/4, checked against a score-function Monte Carlo estimate.

    error_k = |g_n − g_{n/2}| + |g_{n/2} − g_{n/4}| + R · n_nodes · ε · Σ_i w_i |f(x_i)| |∂_k log p(x_i)|:
    the order differences plus a worst-case bound on the rounding of the sum. Every rule can miss a
    feature of f narrower than its node spacing (exp(−x²) under σ = 10³ is 0 at every node): a Monte
    Carlo estimate, with its own standard error, catches that, and a quadrature gradient that
    disagrees with it is refused rather than reported with an error bar it does not have (a feature
    carrying less than about 1/CHECK_SAMPLES of the probability can escape both). Nothing certifies f
    between the nodes here (the order differences are an estimate, not a bound, and all three orders
    miss the same narrow peak), so the reported error also holds what that check can vouch for: its
    gap to the rule plus CHECK_Z of its standard errors.
    """
    loc = _normal_parts(dist)[0]
    order = QUADRATURE_ORDER[loc.numel()]
    rules = [_quadrature_value(f, dist, loc, *_hermite_nodes(order // d, loc)) for d in (1, 2, 4)]
    grads, *coarser = (_grad(r.value, leaves) for r in rules)
    rounding = _grad(rules[0].magnitude, leaves)
    scale = ROUNDING_SAFETY * len(rules[0].weights) * torch.finfo(loc.dtype).eps
    error = {k: (grads[k] - coarser[0][k]).abs() + (coarser[0][k] - coarser[1][k]).abs()
             + scale * rounding[k].abs() for k in leaves}
    # the same error in (μ, σ) coordinates, where the Monte Carlo check runs
    sigma0 = _normal_parts(dist)[1].reshape(-1).detach()
    ls = [r.locscale_grad() / sigma0 for r in rules]
    ls_error = (ls[0] - ls[1]).abs() + (ls[1] - ls[2]).abs()
    widen = _check_against_monte_carlo(dist, rules[0], ls[0], ls_error, _draws(f, dist, loc.shape),
                                       vouch=True)
    if widen is not None:
        extra = _locscale_to_params(widen, dist, leaves)
        error = {k: error[k] + extra[k] for k in leaves}
    return ExactGradient(grads, rules[0].value.detach(), "quadrature", error)


def _locscale_to_params(error: torch.Tensor, dist, leaves) -> dict[str, torch.Tensor]:
    """A [2, D] error on ∂L/∂(μ, σ) carried to each parameter as a bound:
    e_θ = Σ_j |∂μ_j/∂θ| e_μj + |∂σ_j/∂θ| e_σj (the Jacobian's absolute values, no cancellation)."""
    mu, sigma = (p.reshape(-1) for p in _normal_parts(dist))
    out = {k: torch.zeros_like(v) for k, v in leaves.items()}
    for row, coords in enumerate((mu, sigma)):
        for j in range(coords.numel()):
            if not float(error[row, j]) > 0.0 or not coords.requires_grad:
                continue  # (a coordinate the builder fixed carries no error to the parameters)
            jac = _grad(coords[j], leaves)
            for k in leaves:
                out[k] = out[k] + jac[k].abs() * error[row, j]
    return out


# ── one coordinate: adaptive Gauss–Kronrod (7, 15) in z = (x − μ)/σ ───────────────────────────
#: Kronrod nodes on [−1, 1] (the Gauss–Legendre 7 nodes are every second one) and both weight sets
_XK = (0.991455371120812639206854697526329, 0.949107912342758524526189684047851,
       0.864864423359769072789712788640926, 0.741531185599394439863864773280788,
       0.586087235467691130294144845693013, 0.405845151377397166906606412076961,
       0.207784955007898467600689403773245, 0.0)
_WK = (0.022935322010529224963732008058970, 0.063092092629978553290700663189204,
       0.104790010322250183839876322541518, 0.140653259715525918745189590510238,
       0.169004726639267902826583426598550, 0.190350578064785409913256402421014,
       0.204432940075298892414161999234649, 0.209482141084727828012999174891714)
_WG = (0.0, 0.129484966168869693270611432679082, 0.0, 0.279705391489276667901467771423780,
       0.0, 0.381830050505118944950369775488975, 0.0, 0.417959183673469387755102040816327)
#: z-range (beyond it φ(z) < 1e-313, below float64's normal range), first panel width
TAIL, FIRST_WIDTH = 38.0, 0.5
#: target error relative to Σ |terms|, absolute floor, bisection rounds, panels at most
ADAPT_REL, ADAPT_ABS, ADAPT_ROUNDS, ADAPT_PANELS = 1e-11, 1e-300, 80, 20_000
#: safety factor on the error estimate (Σ_panels |K15 − G7| ⊕ the change under one more bisection)
ERROR_SAFETY = 10.0
#: a result whose estimated error exceeds this fraction of Σ |terms| is refused, not reported
CERTIFY_REL = 1e-6


def _kronrod_tables(dtype, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.tensor(_XK, dtype=dtype, device=device)
    nodes = torch.cat([-x[:-1], x.flip(0)])  # 15 nodes, ascending
    wk = torch.tensor(_WK, dtype=dtype, device=device)
    wg = torch.tensor(_WG, dtype=dtype, device=device)
    return nodes, torch.cat([wk[:-1], wk.flip(0)]), torch.cat([wg[:-1], wg.flip(0)])


class _Panels(NamedTuple):
    """Panels [a, b] in z with their nodes [P, 15], Kronrod and Gauss weights × φ, and f there."""

    a: torch.Tensor
    b: torch.Tensor
    z: torch.Tensor
    wk: torch.Tensor
    wg: torch.Tensor
    fx: torch.Tensor


def _evaluate_panels(f, dist, shape, a, b, tables) -> _Panels:
    nodes, wk, wg = tables
    half = 0.5 * (b - a)
    z = (0.5 * (a + b)).unsqueeze(1) + half.unsqueeze(1) * nodes
    phi = torch.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    mu, sigma = (p.reshape(-1).detach() for p in _normal_parts(dist))
    x = (mu + sigma * z.reshape(-1, 1)).reshape(-1, *shape)
    with torch.no_grad():
        fx = f(x).detach().reshape(z.shape)
    weight = half.unsqueeze(1) * phi
    return _Panels(a, b, z, weight * wk, weight * wg, fx)


def _components(p: _Panels, sigma: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per panel [P, 3]: the Kronrod and Gauss estimates of (L, ∂L/∂μ, ∂L/∂σ) = E f · (1, z/σ, (z² − 1)/σ)."""
    s = torch.stack([torch.ones_like(p.z), p.z / sigma, (p.z**2 - 1.0) / sigma], -1)  # [P, 15, 3]
    fs = p.fx.unsqueeze(-1) * s
    return (p.wk.unsqueeze(-1) * fs).sum(1), (p.wg.unsqueeze(-1) * fs).sum(1)


def _magnitude(p: _Panels, sigma: float) -> torch.Tensor:
    """Σ w |f| |s| per component [3]: the size of the sums, their rounding scale."""
    s = torch.stack([torch.ones_like(p.z), p.z / sigma, (p.z**2 - 1.0) / sigma], -1)
    return (p.wk.abs().unsqueeze(-1) * (p.fx.abs().unsqueeze(-1) * s.abs())).sum((0, 1))


def _cat(x: _Panels, y: _Panels) -> _Panels:
    return _Panels(*(torch.cat([u, v]) for u, v in zip(x, y, strict=True)))


def _take(x: _Panels, keep: torch.Tensor) -> _Panels:
    return _Panels(*(u[keep] for u in x))


def _bisect(f, dist, shape, p: _Panels, tables) -> _Panels:
    mid = 0.5 * (p.a + p.b)
    return _evaluate_panels(f, dist, shape, torch.cat([p.a, mid]), torch.cat([mid, p.b]), tables)


def _trisect(f, dist, shape, p: _Panels, tables) -> _Panels:
    """Each panel cut in three: its centre stays the centre node of the middle third, so a point where f
    was seen to differ (a peak between the other nodes) stays a node as the panels shrink onto it."""
    width = p.b - p.a
    left, right = p.a + width / 3.0, p.b - width / 3.0
    return _evaluate_panels(f, dist, shape, torch.cat([p.a, left, right]), torch.cat([left, right, p.b]),
                            tables)


def _check_finite(p: _Panels, dist) -> None:
    bad = ~torch.isfinite(p.fx) & (p.wk > 0)
    if not bool(bad.any()):
        return
    out = p.z[bad].abs()
    nearest = int(out.argmin())
    mu, sigma = (float(v.detach().reshape(-1)[0]) for v in _normal_parts(dist))
    raise GradestError(
        f"f is NaN or inf at {int(bad.sum())} quadrature nodes (the nearest at x = "
        f"{mu + sigma * float(p.z[bad][nearest]):.6g}, {float(out[nearest]):.3g} standard deviations "
        "out): quadrature needs f finite wherever the Normal has mass; compare estimators against each "
        "other instead"
    )


#: panels this close to ±TAIL carry the tails: beyond CERTIFY_REL of the total there, f grows too fast
TAIL_BAND = 4.0


def _check_tails(p: _Panels, k: torch.Tensor, size: torch.Tensor) -> None:
    """Refuse an f whose integrand is still non-negligible near ±TAIL (f(x) ~ exp(0.49 x²) under N(0, 1)):
    the mass beyond the range, where φ underflows, would be missing from the result."""
    edge = torch.maximum(p.a.abs(), p.b.abs()) >= TAIL - TAIL_BAND
    if not bool(edge.any()):
        return
    share = k[edge].abs().sum(0)
    if bool((share > CERTIFY_REL * size.clamp(min=ADAPT_ABS)).any()):
        raise GradestError(
            f"f grows so fast that E f (or its gradient) still has mass {TAIL - TAIL_BAND:g} standard "
            "deviations out, beyond which quadrature cannot follow it; E f may be infinite: check f's "
            "growth against the Normal's tails, or compare estimators against each other"
        )


#: rounds of the feature search, and how far a draw's f may stray from its panel's interpolant, in units
#: of the panel's own |K15 − G7| (per unit of weight), before it counts as a feature the nodes missed
SEARCH_ROUNDS, SEARCH_FACTOR = 40, 100.0


def _refine(f, dist, shape, done: _Panels, active: _Panels, tables, sigma: float) -> tuple[_Panels, bool]:
    """Cut the panels whose error indicator exceeds their share of the target error in three, round
    after round, until the sum converges (True) or a budget ends (False); every new panel is evaluated
    in one batched call of f per round. The indicator is |K15 − G7| plus the edge mismatch (see
    :func:`_edge_mismatch`)."""
    eps = torch.finfo(active.z.dtype).eps
    for _ in range(ADAPT_ROUNDS):
        everything = _cat(done, active)
        err = _indicator(everything, tables, sigma)  # [P, 3]
        size = _magnitude(everything, sigma)
        tol = torch.clamp(ADAPT_REL * size, min=ADAPT_ABS)
        if bool((err.sum(0) <= tol).all()):
            return everything, True
        split = (err > tol / len(everything)).any(1)
        if 2 * int(split.sum()) + len(everything) > ADAPT_PANELS:
            return everything, False
        # panels too narrow to split in floating point stay as they are
        narrow = (everything.b - everything.a) <= 64 * eps * everything.b.abs().clamp(min=1.0)
        split = split & ~narrow
        if not bool(split.any()):
            return everything, False
        done = _take(everything, ~split)
        active = _trisect(f, dist, shape, _take(everything, split), tables)
        _check_finite(active, dist)
    return _cat(done, active), False


def _indicator(p: _Panels, tables, sigma: float) -> torch.Tensor:
    """Per panel [P, 3]: |K15 − G7| + the edge mismatch, the error indicator the refinement drives down."""
    k, g = _components(p, sigma)
    return (k - g).abs() + _edge_mismatch(p, tables, sigma)


def _edge_mismatch(p: _Panels, tables, sigma: float) -> torch.Tensor:
    """Per panel [P, 3]: m · W · |s(e)| summed over its two edges e, where m is the gap between the two
    neighbours' interpolants carried to the shared edge and W the panel's probability.

    Where f is resolved the two interpolants meet; where one panel's nodes miss a feature that the
    other's reach (the half of a peak on the far side of an edge), or f jumps at the edge, they do not,
    and the panel could be off by up to m · W. A true jump at an edge stops mattering once the panels
    beside it are narrow enough.
    """
    nodes = tables[0]
    weights = _barycentric_weights(nodes)
    ends = torch.stack([weights / (-1.0 - nodes), weights / (1.0 - nodes)])  # Lagrange basis at t = ∓1
    ends = ends / ends.sum(1, keepdim=True)
    order = torch.argsort(p.a)
    values = p.fx[order] @ ends.T  # [P, 2]: the interpolant at each panel's left and right edge
    out = torch.zeros(len(order), 3, dtype=p.z.dtype, device=p.z.device)
    if len(order) < 2:
        return out
    right, left = values[:-1, 1], values[1:, 0]
    eps = torch.finfo(p.z.dtype).eps
    gap = (right - left).abs()
    gap = torch.where(gap > 64 * eps * torch.maximum(right.abs(), left.abs()), gap, torch.zeros_like(gap))
    edge = p.b[order][:-1]
    scores = torch.stack([torch.ones_like(edge), edge / sigma, (edge**2 - 1.0) / sigma], -1).abs()
    mass = p.wk[order].sum(1)
    jump = gap.unsqueeze(1) * scores  # [P − 1, 3]
    out[:-1] += jump * mass[:-1].unsqueeze(1)
    out[1:] += jump * mass[1:].unsqueeze(1)
    result = torch.empty_like(out)
    result[order] = out
    return result.nan_to_num(nan=0.0, posinf=0.0)


def _barycentric_weights(nodes: torch.Tensor) -> torch.Tensor:
    """w_j = 1 / Π_{k≠j} (t_j − t_k): the weights of the barycentric form of the interpolant through t."""
    diff = nodes.unsqueeze(1) - nodes.unsqueeze(0)
    diff.fill_diagonal_(1.0)
    return 1.0 / diff.prod(1)


def _missed(p: _Panels, tables, z: torch.Tensor, fz: torch.Tensor, sigma: float) -> torch.Tensor:
    """The panels [K] in which a draw z (with f(z) = fz) shows f far from the panel's interpolant, with
    their neighbours.

    Within a panel the 15 nodes define the degree-14 interpolant p; where the rule has converged,
    |f − p| is of the order of the panel's |K15 − G7| per unit of weight (or of rounding). A draw beyond
    SEARCH_FACTOR times that is a feature of f between the nodes (a peak no node reached), unless it
    is too low to matter: |f − p| · |s(z)| within the target error ADAPT_REL · Σ |terms| for each of
    the three sums (s = 1, z/σ, (z² − 1)/σ), which even a feature carrying all the probability could
    not exceed.
    """
    nodes = tables[0]
    order = torch.argsort(p.a)
    a, b, fx = p.a[order], p.b[order], p.fx[order]
    wk, wg = p.wk[order], p.wg[order]
    idx = (torch.searchsorted(a, z, right=True) - 1).clamp(0, len(a) - 1)
    inside = (z >= a[idx]) & (z <= b[idx])
    half, mid = 0.5 * (b - a), 0.5 * (a + b)
    t = (z - mid[idx]) / half[idx]
    diff = t.unsqueeze(1) - nodes  # [M, 15]
    hit = diff == 0
    terms = _barycentric_weights(nodes) / torch.where(hit, torch.ones_like(diff), diff)
    f_nodes = fx[idx]
    interpolant = (terms * f_nodes).sum(1) / terms.sum(1)
    interpolant = torch.where(hit.any(1), (f_nodes * hit).sum(1), interpolant)
    eps = torch.finfo(z.dtype).eps
    mass = wk.sum(1).clamp(min=torch.finfo(z.dtype).tiny)
    local = ((wk - wg) * fx).sum(1).abs() / mass  # [P]: the panel's error in units of f
    scale = torch.maximum(fx.abs().amax(1)[idx], fz.abs())
    gap = (fz - interpolant).abs()
    scores = torch.stack([torch.ones_like(z), z / sigma, (z**2 - 1.0) / sigma], -1).abs()  # [M, 3]
    matters = ((gap.unsqueeze(1) * scores) > ADAPT_REL * _magnitude(p, sigma)).any(1)
    bad = inside & torch.isfinite(gap) & matters & (gap > SEARCH_FACTOR * local[idx] + 64 * eps * scale)
    flagged = torch.unique(idx[bad])
    # the neighbours too: the rest of the feature (a peak whose tail the draw caught) may lie in them
    near = torch.unique(torch.cat([flagged - 1, flagged, flagged + 1]).clamp(0, len(a) - 1))
    return order[near]


def _adaptive(f, dist, leaves) -> ExactGradient:
    r"""L, ∂L/∂μ, ∂L/∂σ = ∫ f(μ + σz) φ(z) (1, z/σ, (z² − 1)/σ) dz by adaptive Gauss–Kronrod.

    The z-range [−38, 38] is cut into panels of width 1/2; each round cuts in three every panel whose
    |K15 − G7|, plus the mismatch of its interpolant with its neighbours' at their shared edges,
    exceeds its share of the target error, so panels shrink onto the jumps and kinks f reveals (a step
    1[x > c] ends in a panel of width ~1e-11 around c) and f is evaluated on all new panels in one
    batched call. Nodes alone cannot see a feature narrower than their spacing (exp(−x²)
    under σ = 10⁴ is 0 at every first node): a feature search then compares f at CHECK_SAMPLES draws
    of the Normal with each panel's degree-14 interpolant, cuts in three every panel (and its two
    neighbours) where a draw shows f away from the interpolant, and refines again, round after round,
    until the interpolants agree with f at every draw. The reported error is
    ERROR_SAFETY × (Σ_panels (|K15 − G7| + edge mismatch) + |K15 on the final panels − K15 on each of
    them bisected once| + a rounding bound): two independent checks of the same sum, each far above the
    actual error once the panels have converged. A result that does not converge to CERTIFY_REL of its
    size is refused. What stays out of reach is a feature that carries less than about 1/CHECK_SAMPLES of the
    probability (no draw lands on it) and that no node reaches; the score-function Monte Carlo check on
    the same draws widens the error, or refuses, where its estimate disagrees. Gradients reach the
    builder's parameters by autograd through the same nodes, so a cost that declares parameters gets
    its direct term E[∂f/∂θ] too.
    """
    loc, scale = _normal_parts(dist)
    shape, dtype, device = loc.shape, loc.dtype, loc.device
    sigma = float(scale.reshape(-1)[0].detach())
    tables = _kronrod_tables(dtype, device)
    panels_count = round(2 * TAIL / FIRST_WIDTH)
    edges = torch.linspace(-TAIL, TAIL, panels_count + 1, dtype=dtype, device=device)
    done = _Panels(*(torch.empty((0, *s), dtype=dtype, device=device) for s in ((), (), *[(15,)] * 4)))
    active = _evaluate_panels(f, dist, shape, edges[:-1], edges[1:], tables)
    _check_finite(active, dist)
    draws = _draws(f, dist, shape)
    z_draws, f_draws = draws[0].reshape(-1), draws[1]
    finite = torch.isfinite(f_draws)
    z_draws, f_draws = z_draws[finite], f_draws[finite]
    for _ in range(SEARCH_ROUNDS):
        final, converged = _refine(f, dist, shape, done, active, tables, sigma)
        which = _missed(final, tables, z_draws, f_draws, sigma)
        if len(which) == 0:
            break
        keep = torch.ones(len(final.a), dtype=torch.bool, device=device)
        keep[which] = False
        done = _take(final, keep)
        active = _trisect(f, dist, shape, _take(final, which), tables)
        _check_finite(active, dist)
    else:
        raise GradestError(
            f"adaptive quadrature could not certify this integral: after {SEARCH_ROUNDS} rounds f still "
            "takes values between the nodes that the panels do not show (it oscillates or jumps more "
            "often than they can resolve); compare estimators against each other instead"
        )
    eps = torch.finfo(dtype).eps
    k, _ = _components(final, sigma)
    _check_tails(final, k, _magnitude(final, sigma))
    refined = _bisect(f, dist, shape, final, tables)
    _check_finite(refined, dist)
    k2, _ = _components(refined, sigma)
    size = _magnitude(final, sigma)
    rounding = ROUNDING_SAFETY * final.z.numel() * eps * size
    indicator = _indicator(final, tables, sigma).sum(0)
    est = ERROR_SAFETY * (indicator + (k.sum(0) - k2.sum(0)).abs()) + rounding  # [3]
    if not converged and bool((est > CERTIFY_REL * size.clamp(min=ADAPT_ABS)).any()):
        raise GradestError(
            "adaptive quadrature could not certify this integral (its error estimate stayed at "
            f"{float(est.max()):.2g} after {len(final)} panels): f oscillates or jumps more often than "
            "the panels can resolve; compare estimators against each other instead"
        )
    # the final nodes as one rule: value Σ W f with its gradient Σ W (∂f/∂θ + f ∇θ log p) by autograd
    z = final.z.reshape(-1, 1)
    weights = final.wk.reshape(-1)
    keep = weights > 0
    rule = _quadrature_value(f, dist, loc, z[keep], weights[keep])
    grads = _grad(rule.value, leaves)
    ls_error = est[1:].reshape(2, 1)
    error = _locscale_to_params(ls_error, dist, leaves)
    declared = getattr(f, "declared", ())
    if declared:
        # the direct term E[∂f/∂θ]: the same sum with the refined panels' nodes, their change as its error
        rz = refined.z.reshape(-1, 1)
        rw = refined.wk.reshape(-1)
        rk = rw > 0
        other = _grad(_quadrature_value(f, dist, loc, rz[rk], rw[rk]).value, leaves)
        error = {n: error[n] + ERROR_SAFETY * (grads[n] - other[n]).abs() for n in leaves}
    ls = torch.stack([k[:, 1].sum(), k[:, 2].sum()]).reshape(2, 1)
    widen = _check_against_monte_carlo(dist, rule, ls, ls_error, draws)
    if widen is not None:
        extra = _locscale_to_params(widen, dist, leaves)
        error = {n: error[n] + extra[n] for n in leaves}
    return ExactGradient(grads, rule.value.detach(), "quadrature", error)


def _draws(f, dist, shape) -> tuple[torch.Tensor, torch.Tensor]:
    """CHECK_SAMPLES standard-normal draws z [N, D] (a fixed seed) and f at μ + σz [N]."""
    mu, sigma = (p.reshape(-1).detach() for p in _normal_parts(dist))
    generator = torch.Generator(device=mu.device).manual_seed(CHECK_SEED)
    eps = torch.randn(CHECK_SAMPLES, mu.numel(), generator=generator, dtype=mu.dtype, device=mu.device)
    with torch.no_grad():
        fx = f((mu + sigma * eps).reshape(CHECK_SAMPLES, *shape)).detach().reshape(CHECK_SAMPLES)
    return eps, fx


def _check_against_monte_carlo(dist, rule: _Rule, grad: torch.Tensor, error: torch.Tensor,
                               draws: tuple[torch.Tensor, torch.Tensor],
                               vouch: bool = False) -> torch.Tensor | None:
    """Compare ∂L/∂(μ, σ) with a score-function estimate (leave-one-out baseline) on the CHECK_SAMPLES
    ``draws`` (z, f(μ + σz)).

    The standard error is the larger of the sample's and the one the quadrature predicts, Var =
    Σ w (f − L)² s² − g²: for a heavy-tailed f (exp(x) under a wide Normal) the sample spread of a
    finite Monte Carlo run is far below its true value, and would raise false alarms.
    Returns None when the two agree within AGREE_Z standard errors (beyond the rule's own error);
    the [2, D] widening of the error when they agree only within CHECK_Z; raises beyond that. With
    ``vouch`` (a rule nothing else certifies between its nodes) the widening is at least what the check
    can vouch for, |gap| + CHECK_Z standard errors, whatever the agreement.
    """
    mu, sigma = (p.reshape(-1).detach() for p in _normal_parts(dist))
    eps, fx = draws
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
            "the quadrature nodes step over (a narrow feature under a wide Normal): use a named cost "
            "with a closed form, or compare estimators against each other"
        )
    # a gap beyond the Monte Carlo noise is evidence the nodes missed part of f: widen the error to
    # what the check can vouch for instead of keeping the rule's own (then too small) estimate
    if vouch:
        return gap + CHECK_Z * stderr
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
