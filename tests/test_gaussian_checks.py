"""Monte Carlo against the closed forms, through the core estimators' per-sample view.

Tolerances are 5 standard errors (false-alarm rate ≈ 5.7e-7 per number, conftest.Z_TOL): of the mean
for gradients, and of the sample variance, √((m₄ − m₂²)/N), for variances.
"""

import math

import pytest
import torch

from conftest import Z_TOL
from gradest.diagnostics import variance_stderr
from gradest.gaussian import checks as ck
from gradest.gaussian import closed_form as cf
from gradest.gaussian.data import default_dataset

DATA = default_dataset()
SAMPLES = 20_000


@pytest.fixture(scope="module")
def point_checks():
    return [(label, ck.check_point(DATA, mu, sigma, SAMPLES, seed=k))
            for k, (label, mu, sigma) in enumerate(ck.check_points(DATA))]


def test_check_points_cover_small_sigma_and_far_from_data():
    points = ck.check_points(DATA)
    assert any(sigma <= 0.1 for _, _, sigma in points)
    assert any(abs(mu - DATA.mean) >= 5 * DATA.sd for _, mu, _ in points)


def test_exact_gradient_in_check_is_the_closed_form(point_checks):
    for _, pc in point_checks:
        assert pc.exact == cf.gradient(ck.stats_of(DATA), pc.mu, pc.sigma)


def test_monte_carlo_gradients_within_5_standard_errors(point_checks):
    for label, pc in point_checks:
        for name, per in pc.estimates.items():
            for param, e in per.items():
                exact = getattr(pc.exact, param)
                assert abs(e.mean - exact) <= Z_TOL * e.stderr, (label, name, param)
                assert e.z == pytest.approx((e.mean - exact) / e.stderr)


def test_measured_variances_within_5_standard_errors_of_closed_form(point_checks):
    for label, pc in point_checks:
        for name, per in pc.estimates.items():
            exact_var = cf.single_sample_variance(name, ck.stats_of(DATA), pc.mu, pc.sigma)
            for param, e in per.items():
                assert e.exact_variance == pytest.approx(getattr(exact_var, param))
                assert abs(e.variance - e.exact_variance) <= Z_TOL * e.variance_se, (label, name, param)


def test_variance_se_formula_on_known_distribution():
    # for N(0, 1) samples, Var(s²) = 2/N, so se ≈ √(2/N)
    g = torch.randn(40_000, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert float(variance_stderr(g)) == pytest.approx(math.sqrt(2 / 40_000), rel=0.05)


def test_score_function_uses_no_derivative_of_f():
    """The score-function estimates come from f's values only: a cost whose backward raises still works."""

    class NoBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, y):
            return y.clone()

        @staticmethod
        def backward(ctx, grad):
            raise AssertionError("the score-function estimator differentiated f")

    from torch.distributions import Normal

    from gradest.estimators import ScoreFunction
    from gradest.rng import make_generator

    f = ck.squared_loss(DATA)
    params = {"loc": torch.tensor(1.0, dtype=torch.float64), "scale": torch.tensor(2.0, dtype=torch.float64)}
    out = ScoreFunction().per_sample(lambda y: f(NoBackward.apply(y)), Normal, params, 100, make_generator(0))
    assert out.grads["loc"].shape == (100,)


def test_stderr_curve_exact_is_sqrt_variance_over_n_and_measured_shrinks():
    curve = ck.stderr_curve(DATA, DATA.mean + DATA.sd, DATA.sd, 20_000, seed=7)
    stats = ck.stats_of(DATA)
    assert curve.sizes[0] == 1
    assert curve.sizes[-1] <= 20_000 // 20
    for name in cf.ESTIMATORS:
        var = cf.single_sample_variance(name, stats, curve.mu, curve.sigma)
        for param in cf.PARAMS:
            exact = curve.exact[name][param]
            assert exact == pytest.approx([math.sqrt(getattr(var, param) / n) for n in curve.sizes])
            measured = curve.measured[name][param]
            # the measured RMS error shrinks with N (its agreement with the variance is tested above)
            assert all(m > 0 and math.isfinite(m) for m in measured)
            assert measured[-1] < 0.1 * measured[0]


def test_variance_sweep_shapes_and_exact_curves():
    sweep = ck.variance_sweep(DATA, DATA.mean, samples=200, seed=1)
    assert len(sweep.sigmas) == len(sweep.exact["pathwise"]["mu"])
    assert len(sweep.measured_at) == len(sweep.measured["score"]["sigma"])
    stats = ck.stats_of(DATA)
    for k in (0, 60, 120):
        expected = cf.score_variance(stats, sweep.mu, sweep.sigmas[k]).mu
        assert sweep.exact["score"]["mu"][k] == pytest.approx(expected)
