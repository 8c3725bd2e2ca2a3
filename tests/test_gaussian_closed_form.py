"""The closed forms of gradest.gaussian.closed_form against quadrature and the core's exact gradient.

Every single-sample estimate is a polynomial of degree ≤ 4 in ε (its square ≤ 8), so Gauss–Hermite
quadrature with 40 nodes integrates it exactly: the checks are to rounding (rtol 1e-9), and they do
not share a line of algebra with the derivation they check.
"""

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from gradest import exact_grad
from gradest.gaussian import closed_form as cf

X = np.array([4.1, 5.7, 6.3, 2.2, 5.0, 7.9, 3.3])
STATS = cf.Stats(X.size, float(X.mean()), float(X.var()))
# at the mean, off it, small σ (≤ 0.1), far from the data, wide σ
POINTS = [(STATS.mean, 1.5), (STATS.mean + 1.0, 0.7), (STATS.mean + 0.5, 0.05), (STATS.mean + 25.0, 1.0),
          (-3.0, 6.0)]
NODES, WEIGHTS = np.polynomial.hermite.hermgauss(40)
EPS, W = np.sqrt(2.0) * NODES, WEIGHTS / np.sqrt(np.pi)


def f_numpy(y):
    return ((y[:, None] - X) ** 2).sum(1)


def moments(g):
    """(E g, Var g) under ε ~ N(0, 1) by Gauss–Hermite quadrature."""
    mean = float(W @ g)
    return mean, float(W @ g**2) - mean**2


def single_sample(estimator, mu, sigma, baseline=0.0):
    """Single-sample estimates (ĝ_μ, ĝ_σ) as functions of the quadrature nodes ε, from their definitions."""
    y = mu + sigma * EPS
    if estimator == "pathwise":
        fprime = 2.0 * (y[:, None] - X).sum(1)
        return fprime, fprime * EPS
    weight = f_numpy(y) - baseline
    return weight * EPS / sigma, weight * (EPS**2 - 1.0) / sigma


@pytest.mark.parametrize(("mu", "sigma"), POINTS)
def test_gradient_matches_core_exact_grad(mu, sigma):
    x = torch.tensor(X)
    f = lambda y: ((y.unsqueeze(-1) - x) ** 2).sum(-1)  # noqa: E731
    params = {"loc": torch.tensor(mu, dtype=torch.float64), "scale": torch.tensor(sigma, dtype=torch.float64)}
    exact = exact_grad(f, Normal, params, method="quadrature")
    mine = cf.gradient(STATS, mu, sigma)
    assert float(exact.grads["loc"]) == pytest.approx(mine.mu, rel=1e-9, abs=1e-9)
    assert float(exact.grads["scale"]) == pytest.approx(mine.sigma, rel=1e-9)
    assert float(exact.value) == pytest.approx(cf.expectation(STATS, mu, sigma), rel=1e-9)


@pytest.mark.parametrize(("mu", "sigma"), POINTS)
def test_every_estimator_is_unbiased_by_quadrature(mu, sigma):
    exact = cf.gradient(STATS, mu, sigma)
    for estimator, baseline in (("pathwise", 0.0), ("score", 0.0), ("score", 123.4)):
        g_mu, g_sigma = single_sample(estimator, mu, sigma, baseline)
        assert moments(g_mu)[0] == pytest.approx(exact.mu, rel=1e-9, abs=1e-6)
        assert moments(g_sigma)[0] == pytest.approx(exact.sigma, rel=1e-9)


@pytest.mark.parametrize(("mu", "sigma"), POINTS)
def test_pathwise_variance_matches_quadrature(mu, sigma):
    g_mu, g_sigma = single_sample("pathwise", mu, sigma)
    var = cf.pathwise_variance(STATS, mu, sigma)
    assert moments(g_mu)[1] == pytest.approx(var.mu, rel=1e-9)
    assert moments(g_sigma)[1] == pytest.approx(var.sigma, rel=1e-9)


@pytest.mark.parametrize(("mu", "sigma"), POINTS)
@pytest.mark.parametrize("baseline", [0.0, 57.0, -300.0])
def test_score_variance_with_any_constant_baseline_matches_quadrature(mu, sigma, baseline):
    g_mu, g_sigma = single_sample("score", mu, sigma, baseline)
    var = cf.score_variance(STATS, mu, sigma, baseline)
    assert moments(g_mu)[1] == pytest.approx(var.mu, rel=1e-8)
    assert moments(g_sigma)[1] == pytest.approx(var.sigma, rel=1e-8)


@pytest.mark.parametrize(("mu", "sigma"), POINTS)
def test_best_baseline_minimises_the_variance(mu, sigma):
    best = cf.best_baseline(STATS, mu, sigma)
    best_var = cf.best_score_variance(STATS, mu, sigma)
    # b* = E[f s²] / E[s²] with the score s, computed by quadrature
    y = mu + sigma * EPS
    for param, score in (("mu", EPS / sigma), ("sigma", (EPS**2 - 1.0) / sigma)):
        b_quad = float(W @ (f_numpy(y) * score**2)) / float(W @ score**2)
        assert getattr(best, param) == pytest.approx(b_quad, rel=1e-9)
        at_best = getattr(cf.score_variance(STATS, mu, sigma, getattr(best, param)), param)
        assert at_best == pytest.approx(getattr(best_var, param), rel=1e-9)
        for shift in (-1.0, 1.0):
            other = getattr(cf.score_variance(STATS, mu, sigma, getattr(best, param) + shift), param)
            assert other > at_best


def test_single_sample_variance_dispatches_and_rejects_unknown():
    mu, sigma = POINTS[1]
    assert cf.single_sample_variance("pathwise", STATS, mu, sigma) == cf.pathwise_variance(STATS, mu, sigma)
    assert cf.single_sample_variance("score", STATS, mu, sigma) == cf.score_variance(STATS, mu, sigma)
    assert cf.single_sample_variance("score-baseline", STATS, mu, sigma) == cf.best_score_variance(
        STATS, mu, sigma)
    with pytest.raises(ValueError, match="unknown estimator"):
        cf.single_sample_variance("mvd", STATS, mu, sigma)


def test_score_function_is_noisier_even_with_its_best_baseline():
    for mu, sigma in POINTS:
        pw, best = cf.pathwise_variance(STATS, mu, sigma), cf.best_score_variance(STATS, mu, sigma)
        assert best.mu >= 1.5 * pw.mu * (1 - 1e-12)
        assert best.sigma >= 3.0 * pw.sigma * (1 - 1e-12)
