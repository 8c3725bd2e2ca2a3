"""Exact single-sample variances: closed forms, an independent adaptive quadrature, and Monte Carlo."""

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate
from torch.distributions import Normal

import gradest
from gradest.lab import variance_exact as vx
from gradest.lab.sweep import DEFAULT_KS

PARAMS = {"loc": torch.tensor(1.0, dtype=torch.float64), "scale": torch.tensor(1.0, dtype=torch.float64)}


def _var(est, cost, k, param, loc=1.0, scale=1.0):
    return vx.single_sample_variance(est, vx.NormalProblem(cost, k, loc, scale), param)


@pytest.mark.parametrize("k", [0.1, 3.0, 10.0])
def test_pathwise_square_closed_forms(k):
    # ĝ_μ = 2(x − k): variance 4σ²; ĝ_σ = 2(μ − k)ε + 2σε²: variance 4(μ − k)² + 8σ².
    mu, sigma = 1.0, 1.5
    assert _var("pathwise", "square", k, "loc", mu, sigma).variance == pytest.approx(4 * sigma**2, rel=1e-12)
    assert _var("pathwise", "square", k, "scale", mu, sigma).variance == pytest.approx(
        4 * (mu - k) ** 2 + 8 * sigma**2, rel=1e-12)


@pytest.mark.parametrize("k", [0.5, 10.0])
def test_score_cos_closed_form(k):
    # E[cos²(kx) ε²] = ½ + ½ cos(2kμ)(1 − 4k²σ²) e^{−2k²σ²}; ĝ_μ = cos(kx) ε/σ, mean −k sin(kμ) e^{−k²σ²/2}.
    mu, sigma = 1.0, 1.0
    second = 0.5 + 0.5 * math.cos(2 * k * mu) * (1 - 4 * k**2 * sigma**2) * math.exp(-2 * k**2 * sigma**2)
    mean = -k * math.sin(k * mu) * math.exp(-0.5 * k**2 * sigma**2)
    exact = second / sigma**2 - mean**2
    assert _var("score", "cos", k, "loc").variance == pytest.approx(exact, rel=1e-10)


def _quad(g, lo, hi, points):
    """Adaptive quadrature with breakpoints at the sharp feature: an independent reference."""
    inside = sorted(p for p in points if lo < p < hi)
    edges = [lo, *inside, hi]
    return sum(integrate.quad(g, a, b, epsabs=0, epsrel=1e-12, limit=500)[0]
               for a, b in itertools.pairwise(edges))


def test_sharp_exp_cost_against_adaptive_quadrature():
    """exp(−10x²) under N(1, 1): the 1e-6 relative accuracy holds against scipy's quad."""
    k, mu = 10.0, 1.0
    c = lambda x: math.exp(-k * x * x)  # noqa: E731
    dc = lambda x: -2 * k * x * math.exp(-k * x * x)  # noqa: E731
    phi = lambda t: math.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)  # noqa: E731
    ray = lambda w: w * math.exp(-0.5 * w * w)  # noqa: E731
    sharp = [-mu + d for d in (-0.6, -0.2, 0.0, 0.2, 0.6)]  # x = 0 in t = x − μ
    L = 14.0

    def central(g, density, lo, points):
        m = _quad(lambda t: g(t) * density(t), lo, L, points)
        return _quad(lambda t: (g(t) - m) ** 2 * density(t), lo, L, points)

    ref = {
        "pathwise": central(lambda t: dc(mu + t), phi, -L, sharp),
        "score": central(lambda t: c(mu + t) * t, phi, -L, sharp),
        "mvd": central(lambda w: (c(mu + w) - c(mu - w)) / math.sqrt(2 * math.pi), ray, 0.0,
                       [abs(p) for p in sharp] + [mu + d for d in (-0.6, -0.2, 0.0, 0.2, 0.6)]),
    }
    for est, value in ref.items():
        got = _var(est, "exp", k, "loc")
        assert got.variance == pytest.approx(value, rel=1e-8), est
        assert got.error <= 1e-6 * got.variance


def test_coupled_scale_mvd_against_nested_quadrature():
    """The coupled σ estimator [f(μ+σM) − f(μ+σUM)]/σ as a genuine 2-D integral over (M, U)."""
    k, mu = 2.0, 1.0
    c = lambda x: math.exp(-k * x * x)  # noqa: E731
    maxwell = lambda m: m * m * math.exp(-0.5 * m * m) / math.sqrt(2 * math.pi)  # noqa: E731
    mean = float(gradest.exact_grad(gradest.named_cost("exp", k), Normal, PARAMS).grads["scale"])
    inner = lambda m: integrate.quad(lambda u: (c(mu + m) - c(mu + u * m) - mean) ** 2, 0, 1,  # noqa: E731
                                     epsabs=0, epsrel=1e-11)[0]
    ref = _quad(lambda m: inner(m) * maxwell(m), -12.0, 12.0, [-mu, 0.0])
    assert _var("mvd", "exp", k, "scale").variance == pytest.approx(ref, rel=1e-7)


def test_quadrature_error_is_below_1e6_relative_on_the_sweep_grid():
    worst = 0.0
    for cost in ("square", "exp", "cos"):
        for k in DEFAULT_KS:
            for est in ("pathwise", "score", "score-delta", "mvd", "mvd-uncoupled"):
                for param in ("loc", "scale"):
                    r = _var(est, cost, k, param)
                    if r.variance > 0:
                        worst = max(worst, r.error / r.variance)
    assert worst < 1e-6


def test_means_are_the_exact_gradients():
    f = gradest.named_cost("cos", 3.0)
    exact = gradest.exact_grad(f, Normal, PARAMS).grads
    for est in vx.supported():
        for param in ("loc", "scale"):
            assert _var(est, "cos", 3.0, param).mean == pytest.approx(float(exact[param]), abs=1e-10), est


def _available(name):
    try:
        gradest.get_estimator(name)
    except gradest.GradestError:
        return False
    return True


@pytest.mark.parametrize("cost,k", [("exp", 10.0), ("cos", 3.0), ("square", 3.0)])
def test_exact_variances_match_the_registered_estimators(cost, k):
    """Measured single-sample variance within 5 standard errors of the variance estimate.

    The standard error of s² is √((m₄ − s⁴)/N). Estimators whose coefficients are estimated from
    the other samples (leave-one-out) differ from the fixed-coefficient limit by O(1/N), far below it.
    """
    n = 20_000
    f = gradest.named_cost(cost, k)
    for est in vx.supported():
        if not _available(est):
            pytest.fail(f"estimator {est} is not registered")
        per = gradest.get_estimator(est).per_sample(f, Normal, PARAMS, n, gradest.make_generator(3))
        for param in ("loc", "scale"):
            g = per.grads[param]
            s2 = float(g.var())
            exact = _var(est, cost, k, param).variance
            if exact == 0.0:  # an exact control (h = f): nothing but rounding left
                assert s2 < 1e-20, (est, param)
                continue
            se = math.sqrt(max(float(((g - g.mean()) ** 4).mean()) - s2**2, 0.0) / n)
            assert abs(s2 - exact) < 5 * se, (est, param, s2, exact, se)


def test_unknown_estimators_and_costs_are_refused():
    assert not vx.supports("score+qmc")
    assert vx.supports("score-delta=1")
    with pytest.raises(gradest.GradestError, match="exact variances cover"):
        vx.NormalProblem("abs", 1.0)
    with pytest.raises(gradest.GradestError, match="order 1 or 2"):
        _var("score-delta=3", "cos", 1.0, "loc")
    assert np.isfinite(vx.variance_curve("mvd", "cos", np.array([0.5, 1.0]), "scale")).all()


def test_exact_controls_and_constant_costs_give_exactly_zero():
    # h = f (square, order 2; linear) and a constant f (k = 0) have zero variance exactly; at a large
    # loc the subtraction Var A − Cov²/Var C used to leave ~1e-9 of rounding (square, k = 50, μ = −2).
    for loc, scale in ((-2.0, 1.0), (1.0, 0.2), (0.0, 3.0)):
        for k in (0.0, 1.0, 50.0):
            for est in ("score-delta", "mvd-delta", "pathwise-delta"):
                for param in ("loc", "scale"):
                    assert _var(est, "square", k, param, loc, scale).variance == 0.0, (est, k, loc)
                    assert _var(est, "linear", k, param, loc, scale).variance == 0.0, (est, k, loc)
        for cost in ("exp", "cos"):
            for est in ("pathwise", "score-loo", "mvd", "mvd-uncoupled"):
                for param in ("loc", "scale"):
                    assert _var(est, cost, 0.0, param, loc, scale).variance == 0.0, (cost, est, loc)


# quad flags roundoff on pieces where the integrand is ~1e-20 of its peak: irrelevant at rel=1e-8
@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
def test_off_centre_and_wide_problems_against_adaptive_quadrature():
    """loc = −2 and σ = 3 with sharp costs: composite rule and scipy's adaptive quad agree to 1e-8."""
    def phi(t):
        return math.exp(-t * t / 2) / math.sqrt(2 * math.pi)

    def central(g):
        # pieces narrower than cos(50x)'s period; beyond ±10 the weight is < 1e-22 of the total
        points = list(np.linspace(-10, 10, 1601))
        m = _quad(lambda t: g(t) * phi(t), -10.0, 10.0, points)
        return _quad(lambda t: (g(t) - m) ** 2 * phi(t), -10.0, 10.0, points)

    for cost, k, loc, scale in (("exp", 50.0, 1.0, 3.0), ("cos", 50.0, -2.0, 1.0), ("exp", 20.0, -2.0, 0.2)):
        c = vx.COSTS[cost]
        ref = central(lambda t, c=c, k=k, loc=loc, scale=scale:
                      float(c.d1(np.asarray(loc + scale * t), k)) * t)
        assert _var("pathwise", cost, k, "scale", loc, scale).variance == pytest.approx(ref, rel=1e-8)
        ref = central(lambda t, c=c, k=k, loc=loc, scale=scale:
                      float(c.value(np.asarray(loc + scale * t), k)) * t / scale)
        assert _var("score", cost, k, "loc", loc, scale).variance == pytest.approx(ref, rel=1e-8)


def test_constant_baseline_against_monte_carlo_and_its_closed_form():
    # Var[(f − b) s_μ] for cos(kx), σ = 1 shifts from the plain score's by b² E s² − 2b E[f s²]
    k, b = 2.0, 0.7
    plain = _var("score", "cos", k, "loc").variance
    mean_fs2 = math.exp(-k * k / 2) * math.cos(k) * (1 - k * k)  # E[cos(k(1+ε)) ε²]
    mean_fs = -k * math.exp(-k * k / 2) * math.sin(k)  # E[cos(k(1+ε)) ε], the gradient
    expected = plain + b * b - 2 * b * mean_fs2 + 0 * mean_fs  # E s² = 1; the mean is unchanged
    assert _var(f"score-const={b}", "cos", k, "loc").variance == pytest.approx(expected, rel=1e-10)
    assert vx.supports("score-const=0.5") and not vx.supports("score-const")
    n = 20_000
    estimator = gradest.get_estimator(f"score-const={b}")
    per = estimator.per_sample(gradest.named_cost("cos", k), Normal, PARAMS, n, gradest.make_generator(5))
    g = per.grads["loc"]
    s2 = float(g.var())
    se = math.sqrt((float(((g - g.mean()) ** 4).mean()) - s2**2) / n)  # standard error of s²
    assert abs(s2 - expected) < 5 * se


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
def test_a_delta_control_much_larger_than_f_keeps_full_accuracy():
    """cos(50x) under N(1, 9): the Taylor polynomial h is ~1e4 t² against |f| ≤ 1.

    Var(A − β*C) = Var A − Cov(A, C)²/Var C from three independent adaptive quadratures; computed
    through R = A − C instead it lost seven digits (error 6e-8 on 0.0556).
    """
    k, loc, scale = 50.0, 1.0, 3.0
    a0, a1 = math.cos(k * loc), -k * math.sin(k * loc) * scale
    a2 = -0.5 * k * k * math.cos(k * loc) * scale**2
    points = list(np.linspace(-10, 10, 1601))

    def e(g):
        return _quad(lambda t: g(t) * math.exp(-t * t / 2) / math.sqrt(2 * math.pi), -10.0, 10.0, points)

    for param, s in (("loc", lambda t: t / scale), ("scale", lambda t: (t * t - 1) / scale)):
        def fa(t, s=s):
            return math.cos(k * (loc + scale * t)) * s(t)

        def fc(t, s=s):
            return (a0 + a1 * t + a2 * t * t) * s(t)

        ma, mc = e(fa), e(fc)
        var_a = e(lambda t, fa=fa, ma=ma: (fa(t) - ma) ** 2)
        var_c = e(lambda t, fc=fc, mc=mc: (fc(t) - mc) ** 2)
        cov = e(lambda t, fa=fa, fc=fc, ma=ma, mc=mc: (fa(t) - ma) * (fc(t) - mc))
        got = _var("score-delta", "cos", k, param, loc, scale)
        assert got.variance == pytest.approx(var_a - cov**2 / var_c, rel=1e-8)
        assert got.error <= 1e-6 * got.variance


def test_a_registered_estimator_supplies_its_own_variance_hook():
    """Exact variances come from the registry entry's hook, not from a list of names in the lab."""
    from gradest.estimators import registry

    assert not vx.supports("score-copy")
    hook = lambda kit, _: kit.result(kit.score())  # noqa: E731
    registry.register("score-copy", "the score function again", variance=hook)(
        lambda _: gradest.get_estimator("score"))
    try:
        assert vx.supports("score-copy") and "score-copy" in vx.supported()
        for param in ("loc", "scale"):
            got, plain = _var("score-copy", "cos", 2.0, param), _var("score", "cos", 2.0, param)
            assert got == plain
    finally:
        del registry._REGISTRY["score-copy"]
    assert "no exact variance" in _refusal("score-copy")
    assert "no exact variance" in _refusal("enumerate")  # registered, no hook


def _refusal(name):
    with pytest.raises(gradest.GradestError) as err:
        _var(name, "cos", 2.0, "loc")
    return str(err.value)
