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

Which terms make an estimator is the estimator's own knowledge: its registry entry supplies a
``variance`` hook that writes them in the vocabulary of :class:`TermKit` (``kit.score(kit.minus(b))``,
``kit.mvd(coupled=True)``, a control ``kit.score(kit.h(order))``), so a newly registered estimator
gets exact-variance curves by registering its hook, without an edit here. The costs' values,
derivatives and antiderivatives come from the one table :data:`gradest.costs.COST_FORMS`.

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

from gradest.costs import COST_FORMS, CostForms
from gradest.errors import GradestError

Fn = Callable[[np.ndarray], np.ndarray]
TAIL = 14.0
ORDER = 16
#: delta-method order when the estimator name gives none (``score-delta`` = ``score-delta=2``)
DEFAULT_DELTA_ORDER = 2
PARAMS = ("loc", "scale")


#: the named costs with an antiderivative: their values, derivatives and antiderivatives come from the
#: one table in gradest.costs
COSTS: dict[str, CostForms] = {name: forms for name, forms in COST_FORMS.items() if forms.anti is not None}


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


class Decomposition(NamedTuple):
    """One estimator's single-sample estimate as base-variable terms: ĝ = A − β*·C.

    terms: A; control: C, or None; sized: the terms whose size sets the rounding scale (a baseline's
    terms hold f − b, already cancelled: their rounding is that of f's own terms), None: ``terms``.
    """

    terms: list[_Term]
    control: list[_Term] | None = None
    sized: list[_Term] | None = None


class TermKit:
    """The vocabulary an estimator's ``variance`` hook (see :func:`gradest.register`) writes its
    single-sample estimate of ∂/∂param E f in, for one Normal problem and one parameter.

    ``pathwise(fn)``, ``score(fn)``, ``mvd(coupled, order)``: the estimator's terms applied to f (or
    to the function of the base variable ``fn``); ``f()``, ``minus(b)`` (f − b), ``ones()``, ``h(order)``
    and ``dh(order)`` (the delta method's Taylor polynomial of f around μ and its derivative);
    ``mean_f()`` = E f; ``order(arg)`` and ``number(arg, what)`` parse the estimator's argument;
    ``result(terms, control, sized)`` packs a :class:`Decomposition`.
    """

    def __init__(self, problem: NormalProblem, param: str) -> None:
        self.problem, self.param = problem, param
        self.shift = _Shift(problem)

    def _at(self, order: int | None) -> _Shift:
        return _Shift(self.problem, order)

    def f(self) -> Fn:
        return self.shift.f()

    def minus(self, b: float) -> Fn:
        f = self.shift.f()
        return lambda t: f(t) - b

    def ones(self) -> Fn:
        return lambda t: np.ones_like(t)

    def h(self, order: int) -> Fn:
        return self._at(order).h()

    def dh(self, order: int) -> Fn:
        return self._at(order).dh()

    def mean_f(self) -> float:
        return float(_Integrator(_feature_width(self.problem)).mean(_Term(1.0, "eps", self.shift.f())))

    def pathwise(self, fn: Fn | None = None) -> list[_Term]:
        return _pathwise(self.shift, self.param, fn)

    def score(self, fn: Fn | None = None) -> list[_Term]:
        return _score(self.shift, self.param, fn)

    def mvd(self, coupled: bool, order: int | None = None) -> list[_Term]:
        """The measure-valued terms of f, or with ``order`` those of its Taylor polynomial h."""
        return _mvd(self._at(order), self.param, coupled, poly=order is not None)

    @staticmethod
    def order(arg: str | None) -> int:
        try:
            order = int(arg) if arg else DEFAULT_DELTA_ORDER
        except ValueError:
            order = None
        if order not in (1, 2):
            raise GradestError(f"the delta method has order 1 or 2, got {arg!r}")
        return order

    @staticmethod
    def number(arg: str | None, what: str) -> float:
        try:
            return float(arg)
        except (TypeError, ValueError):
            raise GradestError(f"{what} must be a number, got {arg!r}") from None

    @staticmethod
    def result(terms: list[_Term], control: list[_Term] | None = None,
               sized: list[_Term] | None = None) -> Decomposition:
        return Decomposition(terms, control, sized)


def _hook(estimator: str):
    """The registry entry's ``variance`` hook of ``NAME[=ARG]`` and the argument, or a GradestError."""
    from gradest.estimators.registry import lookup

    base, plus, _ = estimator.partition("+")
    name, _, arg = base.partition("=")
    try:
        entry = lookup(name)
    except GradestError:
        entry = None
    if plus or entry is None or entry.variance is None:
        raise GradestError(
            f"no exact variance for estimator {estimator!r}; exact variances cover {', '.join(supported())}"
        )
    if entry.required and not arg:
        raise GradestError(f"estimator {name!r} needs a value: {name}={entry.argument.upper()}")
    return entry.variance, (arg or None)


def supported() -> tuple[str, ...]:
    """Registered estimators whose entry supplies the exact-variance hook (those needing an argument,
    such as ``score-const=B``, are covered with it)."""
    from gradest.estimators.registry import entries

    return tuple(name for name, entry in entries().items()
                 if entry.variance is not None and not entry.required)


def supports(estimator: str) -> bool:
    """Whether :func:`single_sample_variance` knows this estimator (samplers such as +qmc: no)."""
    try:
        _decompose(estimator, NormalProblem("square", 1.0), "loc")
    except (GradestError, ValueError):
        return False
    return True


def _feature_width(problem: NormalProblem) -> float:
    feature = COSTS[problem.cost].feature(problem.k)
    # Gauss–Legendre of order 16 on a quarter of the feature integrates it to rounding error.
    width = 0.1 if feature is None else min(0.1, feature / (4.0 * problem.scale))
    return max(width, 1e-4)


def _decompose(estimator: str, problem: NormalProblem, param: str) -> Decomposition:
    """The estimator's terms A, control C (or None) and rounding-size terms, from its registry hook."""
    hook, arg = _hook(estimator)
    return hook(TermKit(problem, param), arg)


def _evaluate(estimator: str, problem: NormalProblem, param: str, width: float) -> tuple[float, float]:
    a, c, sized = _decompose(estimator, problem, param)
    integ = _Integrator(width)
    mean = integ.total_mean(a)
    tiny = 64 * np.finfo(float).eps
    # f's values carry rounding of ~ε|f|: variances below (64ε)² × the terms' size are that noise
    # (a baseline's terms hold f − b, already cancelled: the size is that of f's own terms)
    sized = a if sized is None else sized
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
    a, _, sized = _decompose(estimator, problem, param)
    return math.sqrt(_Integrator(_feature_width(problem)).magnitude(a if sized is None else sized))


def single_sample_variance(
    estimator: str, problem: NormalProblem, param: str, check_error: bool = True
) -> ExactVariance:
    """Var ĝ of one single-sample estimate of ∂/∂param E f (param ``loc`` or ``scale``).

    Args:
        estimator: a registered name whose entry has a ``variance`` hook (:func:`supported`;
            ``score-delta=1`` selects the order, ``score-const=0.5`` the baseline).
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
