"""SGD fits on tiny settings: each objective reaches its target with each estimator."""

import math

import numpy as np
import pytest

from gradest.gaussian.closed_form import Pair
from gradest.gaussian.data import default_dataset
from gradest.gaussian.fits import FitSettings, fit, steps_to_tolerance, suffix_average, tail_stderr
from gradest.gaussian.objectives import OBJECTIVES, SIGMA_FLOOR

DATA = default_dataset()
SD = DATA.sd

# (objective, estimator, steps, samples per step): the fewest that reach 1% of √v for every seed tried
STRICT = [
    ("squared", "pathwise", 150, 4),
    ("squared", "score-loo", 150, 4),
    ("crps", "pathwise", 1000, 128),
    ("elbo", "pathwise", 300, 16),
    ("elbo", "score-loo", 300, 16),
    ("nll", "exact", 300, 2),
]


@pytest.mark.parametrize(("objective", "estimator", "steps", "samples"), STRICT)
def test_fit_reaches_its_target_within_1pct(objective, estimator, steps, samples):
    result = fit(OBJECTIVES[objective](DATA), estimator, FitSettings(steps, samples, 0.1, seed=0), SD)
    assert result.diverged_at is None
    assert result.steps_to_1pct is not None and result.steps_to_1pct <= steps
    assert abs(result.mu - result.target.mu) <= 0.01 * SD
    assert abs(result.sigma - result.target.sigma) <= 0.01 * SD
    assert result.mu_path.shape == (steps + 1,)
    assert result.estimator == estimator


def test_score_function_crps_fit_reaches_its_target_within_its_noise():
    """At equal tiny settings the score-function fit is noisier; it must still be unbiased:
    within 1% of √v or within 5 standard errors (batch means) of its own averaged iterate."""
    result = fit(OBJECTIVES["crps"](DATA), "score-loo", FitSettings(1000, 64, 0.1, seed=0), SD)
    assert result.diverged_at is None
    for got, target, se in ((result.mu, result.target.mu, result.mu_se),
                            (result.sigma, result.target.sigma, result.sigma_se)):
        assert abs(got - target) <= max(0.01 * SD, 5 * se)


def test_squared_collapses_sigma_geometrically():
    result = fit(OBJECTIVES["squared"](DATA), "pathwise", FitSettings(60, 8, 0.1, seed=1), SD)
    assert result.target == Pair(DATA.mean, 0.0)
    # in expectation σ_{t+1} = σ_t (1 − η) at d ≈ 0; after 60 steps of factor 0.9, σ ≈ 0.0018 σ_0,
    # and at worst sampling noise leaves it within a factor 10 of that
    assert result.sigma_path[-1] < 0.02 * result.sigma_path[0]
    assert result.sigma_path[-1] >= SIGMA_FLOOR * SD


def test_nll_target_is_the_mle_and_is_reached_exactly():
    result = fit(OBJECTIVES["nll"](DATA), "exact", FitSettings(400, 2, 0.1, seed=0), SD)
    assert result.target == Pair(DATA.mean, math.sqrt(DATA.var_mle))
    assert result.mu == pytest.approx(DATA.mean, abs=1e-6 * SD)
    assert result.sigma == pytest.approx(SD, rel=1e-6)


def test_same_seed_same_fit():
    a = fit(OBJECTIVES["crps"](DATA), "score-loo", FitSettings(50, 8, 0.1, seed=3), SD)
    b = fit(OBJECTIVES["crps"](DATA), "score-loo", FitSettings(50, 8, 0.1, seed=3), SD)
    assert np.array_equal(a.mu_path, b.mu_path) and np.array_equal(a.sigma_path, b.sigma_path)


def test_divergence_is_reported_not_raised():
    # a step size 100 times too large throws the ELBO fit's log-scales out of the float range
    result = fit(OBJECTIVES["elbo"](DATA), "pathwise", FitSettings(200, 4, 10.0, seed=0), SD)
    assert result.diverged_at is not None
    assert result.steps_to_1pct is None
    assert math.isnan(result.mu) and result.error(SD) == math.inf


def test_steps_to_tolerance_and_averaging():
    target = Pair(0.0, 1.0)
    mu = np.array([5.0, 0.5, 0.0, 0.2, 0.0, 0.0])
    sigma = np.ones(6)
    assert steps_to_tolerance(mu, sigma, target, 0.1) == 4
    assert steps_to_tolerance(mu, sigma, target, 1.0) == 1
    assert steps_to_tolerance(mu[:4], sigma[:4], target, 0.1) is None
    assert suffix_average(np.array([4.0, 2.0, 3.0, 5.0])) == pytest.approx([4.0, 3.0, 2.5, 10 / 3])
    assert math.isnan(tail_stderr(np.arange(10.0)))  # too short for 10 batches
    assert tail_stderr(np.ones(100)) == 0.0


def test_suffix_average_keeps_the_digits_of_a_large_offset():
    # iterates 1e9 + 1e-3·(−1)^t: the latter-half mean is 1e9 up to 1e-3/t; cumsums of the raw
    # values (~3e12) would round it by ~5e-4
    t = np.arange(3001)
    path = 1e9 + 1e-3 * (-1.0) ** t
    got = suffix_average(path)
    assert abs(got[-1] - 1e9) <= 1e-3 / 1500 + 1e-6


def test_a_fit_beyond_the_stated_bound_has_diverged_and_is_reported_so(monkeypatch):
    """squared with the score function and no baseline runs away: it is stopped at the first iterate more
    than DIVERGENCE_BOUND √v from the target, still finite there (without the bound the same run goes on
    with finite iterates that far out), and the report's row names it diverged with no final values."""
    import gradest.gaussian.fits as fits
    from gradest.gaussian.report import _fit_row

    settings = FitSettings(300, 8, 0.1, seed=0)
    result = fit(OBJECTIVES["squared"](DATA), "score", settings, SD)
    t = result.diverged_at
    assert t is not None
    assert np.isfinite(result.mu_path[:t]).all() and np.isfinite(result.sigma_path[:t]).all()
    assert math.isnan(result.mu) and result.error(SD) == math.inf
    monkeypatch.setattr(fits, "DIVERGENCE_BOUND", math.inf)
    unbounded = fit(OBJECTIVES["squared"](DATA), "score", settings, SD)
    assert np.array_equal(unbounded.mu_path[:t], result.mu_path[:t])
    far = max(abs(unbounded.mu_path[t] - result.target.mu),
              abs(unbounded.sigma_path[t] - result.target.sigma))
    assert math.isfinite(far) and far > 1e3 * SD  # the stated bound, in √v
    row = _fit_row(result, SD)
    assert row[2] == f"diverged at step {t}" and "nan" not in " ".join(map(str, row)).lower()
    assert "inf" not in " ".join(map(str, row)).lower()
