r"""Exact single-sample variances of the estimators on the Normal problems of the sweep.

For x ~ N(μ, σ²) and a named cost f, one estimator's single-sample estimate ĝ of ∂L/∂θ, θ ∈ {μ, σ},
is a sum Σ_i c_i a_i(V_i) of functions of base variables:

    ε ~ N(0, 1)               pathwise  f′(μ+σε)·(1 or ε);   score  f(μ+σε)·s(ε)
    W, W′ ~ Rayleigh          MVD μ     [f(μ+σW) − f(μ−σW′)] / (√(2π) σ)   (coupled: W′ = W)
    M ~ double-sided Maxwell  MVD σ     [f(μ+σM) − f(μ+σN)] / σ            (coupled: N = U·M, U ~ U(0,1))

with s_μ = ε/σ and s_σ = (ε² − 1)/σ. Then Var ĝ = Σ_ij c_i c_j Cov(a_i(V_i), a_j(V_j)), where

* same variable: Cov = ∫ (a_i − E a_i)(a_j − E a_j) ρ, one-dimensional (centred first: no cancellation);
* M and U·M: E[a(M) b(UM)] = E_M[a(M) · (1/M) ∫_0^M b(t) dt], the inner integral in closed form;
* independent variables: 0.

A control variate C (the score function s: the variance-optimal constant baseline; ĝ of the delta
method's Taylor polynomial h of f around μ) enters with its variance-optimal coefficient
β = Cov(A, C)/Var C, leaving Var(A − βC) = Var A − Cov(A, C)²/Var C: the large-N limit of an
estimated coefficient. The leave-one-out baseline has the limit b = E f.

Integrals are composite Gauss–Legendre over [−14, 14] (Rayleigh: [0, 14]) with panels narrow
against the cost's features — a fraction of the period 2π/k of cos(kx) and of the width 1/√(2k) of
exp(−kx²) — which converges to machine precision; the error estimate is the change when the panels
are halved. Beyond 14 standard deviations the Gaussian weight (< 1e-42) is below any tolerance here.

References: Mohamed et al., JMLR 21 (2020) §6 (measure-valued derivatives) and Fig. 2 (this sweep).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy.special import erf

from gradest.errors import GradestError

Fn = Callable[[np.ndarray], np.ndarray]
TAIL = 14.0
ORDER = 16
#: delta-method order when the estimator name gives none (``score-delta`` = ``score-delta=2``)
DEFAULT_DELTA_ORDER = 2
PARAMS = ("loc", "scale")


class ElementaryCost(NamedTuple):
    """c(x), c′, c″, ∫_{x₀}^{x₀+dx} c (``anti(x0, dx, k)``, free of cancellation for small dx), and
    the width of c's sharpest feature (None: smooth)."""

    value: Callable[[np.ndarray, float], np.ndarray]
    d1: Callable[[np.ndarray, float], np.ndarray]
    d2: Callable[[np.ndarray, float], np.ndarray]
    anti: Callable[[np.ndarray, float], np.ndarray]
    feature: Callable[[float], float | None]


def _exp_anti(x0, dx, k):
    if k == 0:
        return dx
    r = math.sqrt(k)
    return math.sqrt(math.pi / (4.0 * k)) * (erf(r * (x0 + dx)) - erf(r * x0))


def _cos_anti(x0, dx, k):
    # sin(a + d) − sin(a) as a product: no cancellation for small d (near t = 0 in E[b(UM) | M])
    return dx if k == 0 else 2.0 * np.cos(k * (x0 + 0.5 * dx)) * np.sin(0.5 * k * dx) / k


def _square_anti(x0, dx, k):
    a, b = x0 + dx - k, x0 - k
    return dx * (a * a + a * b + b * b) / 3.0


COSTS: dict[str, ElementaryCost] = {
    "square": ElementaryCost(
        lambda x, k: (x - k) ** 2, lambda x, k: 2.0 * (x - k), lambda x, k: np.full_like(x, 2.0),
        _square_anti, lambda k: None),
    "exp": ElementaryCost(
        lambda x, k: np.exp(-k * x**2), lambda x, k: -2.0 * k * x * np.exp(-k * x**2),
        lambda x, k: (4.0 * k**2 * x**2 - 2.0 * k) * np.exp(-k * x**2), _exp_anti,
        lambda k: 1.0 / math.sqrt(2.0 * k) if k > 0 else None),
    "cos": ElementaryCost(
        lambda x, k: np.cos(k * x), lambda x, k: -k * np.sin(k * x),
        lambda x, k: -(k**2) * np.cos(k * x), _cos_anti,
        lambda k: 2.0 * math.pi / abs(k) if k != 0 else None),
    "linear": ElementaryCost(
        lambda x, k: k * x, lambda x, k: np.full_like(x, k), lambda x, k: np.zeros_like(x),
        lambda x0, dx, k: k * dx * (x0 + 0.5 * dx), lambda k: None),
}


@dataclass(frozen=True)
class NormalProblem:
    """E_{N(x; loc, scale²)}[c(x; k)] for a named elementwise cost c, one coordinate."""

    cost: str
    k: float
    loc: float = 1.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.cost not in COSTS:
            raise GradestError(f"exact variances cover the costs {', '.join(COSTS)}, got {self.cost!r}")
        if not self.scale > 0:
            raise GradestError(f"scale must be > 0, got {self.scale}")


class ExactVariance(NamedTuple):
    """Single-sample variance of one estimator for one parameter, with its quadrature error estimate."""

    variance: float
    error: float
    mean: float  # E ĝ, the exact gradient (a check: every estimator here is unbiased)


class _Term(NamedTuple):
    coef: float
    var: str  # eps | w | w2 | m | um | n
    fn: Fn
    anti: Fn | None = None  # t -> ∫_0^t fn, needed for terms in U·M


_DENSITY = {"eps": "normal", "n": "normal", "um": "normal", "w": "rayleigh", "w2": "rayleigh",
            "m": "maxwell"}


@lru_cache(maxsize=64)
def _rule(kind: str, width: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes t and weights w·ρ(t) of composite Gauss–Legendre for the density ``kind``."""
    lo = 0.0 if kind == "rayleigh" else -TAIL
    panels = math.ceil((TAIL - lo) / width)
    edges = np.linspace(lo, TAIL, panels + 1)
    x, w = np.polynomial.legendre.leggauss(ORDER)
    half = 0.5 * np.diff(edges)
    t = (0.5 * (edges[:-1] + edges[1:])[:, None] + half[:, None] * x).ravel()
    weights = (half[:, None] * w).ravel()
    phi = np.exp(-0.5 * t**2) / math.sqrt(2.0 * math.pi)
    density = {"normal": phi, "maxwell": t**2 * phi, "rayleigh": t * np.exp(-0.5 * t**2)}[kind]
    return t, weights * density


class _Integrator:
    def __init__(self, width: float) -> None:
        self.rules = {kind: _rule(kind, width) for kind in ("normal", "maxwell", "rayleigh")}

    def mean(self, term: _Term) -> float:
        t, w = self.rules[_DENSITY[term.var]]
        return float(w @ term.fn(t))

    def cov(self, a: _Term, b: _Term) -> float:
        if a.var == b.var:
            t, w = self.rules[_DENSITY[a.var]]
            fa, fb = a.fn(t), b.fn(t)
            return float(w @ ((fa - w @ fa) * (fb - w @ fb)))
        if {a.var, b.var} == {"m", "um"}:
            m_term, u_term = (a, b) if a.var == "m" else (b, a)
            t, w = self.rules["maxwell"]
            # E[b(UM) | M = m] = (1/m) ∫_0^m b: the coupling reduced to one dimension. Both factors
            # centred on the same rule (E b(UM) = E_M of that), so constants cancel exactly.
            fa, fb = m_term.fn(t), u_term.anti(t) / t
            return float(w @ ((fa - w @ fa) * (fb - w @ fb)))
        return 0.0

    def variance(self, terms: list[_Term]) -> float:
        return sum(a.coef * b.coef * self.cov(a, b) for a in terms for b in terms)

    def covariance(self, left: list[_Term], right: list[_Term]) -> float:
        return sum(a.coef * b.coef * self.cov(a, b) for a in left for b in right)

    def total_mean(self, terms: list[_Term]) -> float:
        return sum(t.coef * self.mean(t) for t in terms)

    def magnitude(self, terms: list[_Term]) -> float:
        """(Σ_i |c_i| √E[a_i²])², the size of the sum before cancellation: its rounding scale."""
        total = 0.0
        for term in terms:
            t, w = self.rules[_DENSITY[term.var]]
            total += abs(term.coef) * math.sqrt(float(w @ term.fn(t) ** 2))
        return total**2


def _merge(terms: list[_Term]) -> list[_Term]:
    """One term per base variable: Σ_i c_i a_i(V) as a single function of V.

    The coupled MVD's f(μ+σW) − f(μ−σW) then cancels pointwise, before integration, instead of
    between separately integrated covariances (where rounding of their size would remain).
    """
    groups: dict[str, list[_Term]] = {}
    for term in terms:
        groups.setdefault(term.var, []).append(term)

    def combine(fns: list[tuple[float, Fn]]) -> Fn:
        return lambda t: sum(coef * fn(t) for coef, fn in fns)

    out = []
    for var, group in groups.items():
        anti = (combine([(t.coef, t.anti) for t in group]) if all(t.anti is not None for t in group)
                else None)
        out.append(_Term(1.0, var, combine([(t.coef, t.fn) for t in group]), anti))
    return out


def _difference(a: list[_Term], c: list[_Term]) -> list[_Term]:
    """The estimator applied to f − h, term by term (estimators are linear in f): A − C."""

    def minus(f: Fn | None, g: Fn | None) -> Fn | None:
        return None if f is None else (lambda t: f(t) - g(t))

    if [(t.coef, t.var) for t in a] != [(t.coef, t.var) for t in c]:
        raise AssertionError("a control variate must use the estimator's own terms")
    return [_Term(ta.coef, ta.var, minus(ta.fn, tc.fn), minus(ta.anti, tc.anti))
            for ta, tc in zip(a, c, strict=True)]


class _Shift:
    """f(μ + s·σ·t) and friends as functions of the base variable t."""

    def __init__(self, problem: NormalProblem, order: int | None = None) -> None:
        self.p = problem
        self.c = COSTS[problem.cost]
        self.order = order

    def f(self, sign: float = 1.0) -> Fn:
        p, c = self.p, self.c
        return lambda t: c.value(p.loc + sign * p.scale * t, p.k)

    def f_anti(self) -> Fn:
        p, c = self.p, self.c
        return lambda t: c.anti(p.loc, p.scale * t, p.k) / p.scale

    def df(self) -> Fn:
        p, c = self.p, self.c
        return lambda t: c.d1(p.loc + p.scale * t, p.k)

    def taylor_coeffs(self) -> list[float]:
        """h(μ + σt) = Σ_j a_j t^j: the delta method's polynomial of f around μ."""
        p, c = self.p, self.c
        mu = np.asarray(p.loc, dtype=float)
        coeffs = [float(c.value(mu, p.k)), float(c.d1(mu, p.k)) * p.scale]
        if self.order == 2:
            coeffs.append(0.5 * float(c.d2(mu, p.k)) * p.scale**2)
        return coeffs

    def h(self, sign: float = 1.0) -> Fn:
        a = self.taylor_coeffs()
        return lambda t: sum(aj * (sign * t) ** j for j, aj in enumerate(a))

    def dh(self) -> Fn:
        a, scale = self.taylor_coeffs(), self.p.scale
        return lambda t: sum(j * aj * t ** (j - 1) for j, aj in enumerate(a) if j) / scale + 0.0 * t

    def h_anti(self) -> Fn:
        a = self.taylor_coeffs()
        return lambda t: sum(aj * t ** (j + 1) / (j + 1) for j, aj in enumerate(a))


def _score_weight(param: str, scale: float) -> Fn:
    if param == "loc":
        return lambda t: t / scale
    return lambda t: (t**2 - 1.0) / scale


def _times(f: Fn, g: Fn) -> Fn:
    return lambda t: f(t) * g(t)


def _pathwise(sh: _Shift, param: str, fn: Fn | None = None) -> list[_Term]:
    df = fn or sh.df()
    if param == "loc":
        return [_Term(1.0, "eps", df)]
    return [_Term(1.0, "eps", _times(df, lambda t: t))]


def _score(sh: _Shift, param: str, fn: Fn | None = None) -> list[_Term]:
    return [_Term(1.0, "eps", _times(fn or sh.f(), _score_weight(param, sh.p.scale)))]


def _mvd(sh: _Shift, param: str, coupled: bool, poly: bool = False) -> list[_Term]:
    """Measure-valued estimate of f (or, with ``poly``, of the Taylor polynomial h)."""
    plus, minus = (sh.h(1.0), sh.h(-1.0)) if poly else (sh.f(1.0), sh.f(-1.0))
    if param == "loc":
        c = 1.0 / (math.sqrt(2.0 * math.pi) * sh.p.scale)
        return [_Term(c, "w", plus), _Term(-c, "w" if coupled else "w2", minus)]
    c = 1.0 / sh.p.scale
    anti = sh.h_anti() if poly else sh.f_anti()
    return [_Term(c, "m", plus), _Term(-c, "um" if coupled else "n", plus, anti)]


def parse(estimator: str) -> tuple[str, int | None]:
    """``score-delta=1`` -> (``score-delta``, 1); the order is None for estimators without one."""
    name, _, arg = estimator.partition("=")
    if name in DELTA:
        order = int(arg) if arg else DEFAULT_DELTA_ORDER
        if order not in (1, 2):
            raise GradestError(f"the delta method has order 1 or 2, got {estimator!r}")
        return name, order
    if name == "score-const":
        try:
            float(arg)
        except ValueError:
            raise GradestError(
                f"score-const needs its baseline, e.g. score-const=1, got {estimator!r}") from None
    return name, None


DELTA = ("score-delta", "mvd-delta", "pathwise-delta")
SUPPORTED = ("pathwise", "score", "score-loo", "score-optb", "mvd", "mvd-uncoupled", *DELTA)
#: also covered, with their argument: score-const=B
#: score function with a baseline: terms (f − b)·s, already cancelled; rounding is of f·s's size
_BASELINED = ("score-const", "score-loo")


def supports(estimator: str) -> bool:
    """Whether :func:`single_sample_variance` knows this estimator (samplers such as +qmc: no)."""
    try:
        return parse(estimator)[0] in (*SUPPORTED, "score-const")
    except (GradestError, ValueError):
        return False


def _feature_width(problem: NormalProblem) -> float:
    feature = COSTS[problem.cost].feature(problem.k)
    # Gauss–Legendre of order 16 on a quarter of the feature integrates it to rounding error.
    width = 0.1 if feature is None else min(0.1, feature / (4.0 * problem.scale))
    return max(width, 1e-4)


def _decompose(estimator: str, problem: NormalProblem, param: str):
    """(terms A, control variate C or None) with ĝ = A − β*·C."""
    name, order = parse(estimator)
    sh = _Shift(problem, order)
    if name == "pathwise":
        return _pathwise(sh, param), None
    if name == "pathwise-delta":
        return _pathwise(sh, param), _pathwise(sh, param, sh.dh())
    if name == "score":
        return _score(sh, param), None
    if name == "score-const":
        baseline = float(estimator.partition("=")[2])
        return _score(sh, param, lambda t: sh.f()(t) - baseline), None
    if name == "score-loo":
        mean_f = float(_Integrator(_feature_width(problem)).mean(_Term(1.0, "eps", sh.f())))
        return _score(sh, param, lambda t: sh.f()(t) - mean_f), None
    if name == "score-optb":
        return _score(sh, param), _score(sh, param, lambda t: np.ones_like(t))
    if name == "score-delta":
        return _score(sh, param), _score(sh, param, sh.h())
    if name == "mvd":
        return _mvd(sh, param, coupled=True), None
    if name == "mvd-uncoupled":
        return _mvd(sh, param, coupled=False), None
    if name == "mvd-delta":
        return _mvd(sh, param, coupled=True), _mvd(sh, param, coupled=True, poly=True)
    raise GradestError(
        f"no exact variance for estimator {estimator!r}; exact variances cover {', '.join(SUPPORTED)}"
    )


def _evaluate(estimator: str, problem: NormalProblem, param: str, width: float) -> tuple[float, float]:
    a, c = _decompose(estimator, problem, param)
    integ = _Integrator(width)
    mean = integ.total_mean(a)
    tiny = 64 * np.finfo(float).eps
    # f's values carry rounding of ~ε|f|: variances below (64ε)² × the terms' size are that noise
    # (a baseline's terms hold f − b, already cancelled: the size is that of f's own terms)
    sized = _decompose("score", problem, param)[0] if parse(estimator)[0] in _BASELINED else a
    noise = tiny**2 * integ.magnitude(sized)
    r = None if c is None else _merge(_difference(a, c))
    a, c = _merge(a), (None if c is None else _merge(c))
    var_a = integ.variance(a)
    if c is not None and integ.variance(c) > 0.0:  # a constant control removes nothing
        var_c = integ.variance(c)
        # Var(A − β*C) = Var(B) − Cov(B, C)²/Var C for B = A and for B = R = A − C, the estimator
        # applied to f − h. The subtraction cancels to the precision of Var B, so B is the smaller:
        # R where h ≈ f (an exact control of a large f), A where h ≫ f (cos(50x) with σ = 3)
        var_r = integ.variance(r)
        b, var_b = (r, var_r) if var_r < var_a else (a, var_a)
        residual = var_b - integ.covariance(b, c) ** 2 / var_c
        # An exact control (h = f) leaves only rounding, of f − h (~ε|f|) and of the subtraction:
        # call it the zero it is.
        return (residual if residual > max(noise, tiny * var_b) else 0.0), mean
    # e.g. a constant f (k = 0), or (x − k)² at μ = k under the coupled MVD, where f(μ+σW) = f(μ−σW)
    return (var_a if var_a > noise else 0.0), mean


def term_size(estimator: str, problem: NormalProblem, param: str) -> float:
    """√E of the squared terms that make one estimate, summed: the scale of its rounding error.

    A control variate's estimate ĝ_f − c(ĝ_h − E) can be exact (h = f) while its terms are large:
    float64 then leaves noise of ~ε × this size, not of ~ε × the estimate.
    """
    a, _ = _decompose(estimator, problem, param)
    if parse(estimator)[0] in _BASELINED:
        a, _ = _decompose("score", problem, param)
    return math.sqrt(_Integrator(_feature_width(problem)).magnitude(a))


def single_sample_variance(
    estimator: str, problem: NormalProblem, param: str, check_error: bool = True
) -> ExactVariance:
    """Var ĝ of one single-sample estimate of ∂/∂param E f (param ``loc`` or ``scale``).

    Args:
        estimator: a name from :data:`SUPPORTED` (``score-delta=1`` selects the order).
        problem: the cost, its constant k and the Normal's loc and scale.
        param: ``loc`` or ``scale``.
        check_error: also integrate on panels twice as wide; their difference is ``error``
            (otherwise NaN), a bound on the error of the coarse rule and so of the fine one.
    """
    if param not in PARAMS:
        raise GradestError(f"param must be one of {', '.join(PARAMS)}, got {param!r}")
    width = _feature_width(problem)
    fine, mean = _evaluate(estimator, problem, param, width)
    if not check_error:
        return ExactVariance(fine, math.nan, mean)
    coarse, _ = _evaluate(estimator, problem, param, 2.0 * width)
    return ExactVariance(fine, abs(fine - coarse), mean)


def variance_curve(
    estimator: str, cost: str, ks: np.ndarray, param: str, loc: float = 1.0, scale: float = 1.0
) -> np.ndarray:
    """Exact single-sample variances over a grid of k (for the sweep's curves)."""
    return np.array([
        single_sample_variance(
            estimator, NormalProblem(cost, float(k), loc, scale), param, check_error=False
        ).variance
        for k in ks
    ])
