r"""The question's loss in closed form: expectation, exact gradient, single-sample variances.

Data x_1..x_n with mean x̄ and maximum-likelihood variance v; a stochastic node y ~ N(μ, σ²); the loss

    f(y) = Σ_i (y − x_i)² = n (y − x̄)² + n v.

With d = μ − x̄ and y = μ + σε, ε ~ N(0, 1):

    E f = n (d² + σ²) + n v,      ∂E f/∂μ = 2 n d,      ∂E f/∂σ = 2 n σ.

The σ-gradient 2nσ vanishes only at σ = 0: this loss cannot recover σ² (its minimiser is a point
mass at x̄), whichever estimator is used.

Single-sample estimates and their variances (moments E ε^2k = (2k − 1)!!: 1, 3, 15, 105):

* pathwise, ĝ = ∇θ f(μ + σε) = 2n (d + σε) · (1, ε):

      Var ĝ_μ = 4 n² σ²,          Var ĝ_σ = 4 n² (d² + 2σ²).

* score function with a constant baseline b, ĝ = (f(y) − b) ∇θ log p(y) = (f − b) · (ε/σ, (ε² − 1)/σ).
  Writing f − b = c + Bε + Cε² with c = n (d² + v) − b, B = 2ndσ, C = nσ²:

      Var ĝ_μ = (c² + 6cC + 2B² + 15C²) / σ²,
      Var ĝ_σ = (2c² + 20cC + 10B² + 74C²) / σ².

  b = 0 is plain REINFORCE; c enters squared and divided by σ², which is why its variance explodes
  for small σ or data far from 0. The variance-optimal constant b* = E[f s²]/E[s²] (s the score)
  gives c* = −3C for μ and c* = −5C for σ:

      Var* ĝ_μ = 8 n² d² + 6 n² σ²,    Var* ĝ_σ = 40 n² d² + 24 n² σ².

So even with its best constant baseline the score-function estimator is worse: by 1.5× (μ) and 3×
(σ) at d = 0, and by a factor growing like d²/σ² away from the data, where the pathwise variance
of ĝ_μ does not depend on d at all.
"""

from __future__ import annotations

from typing import NamedTuple

from gradest.costs import COST_FORMS

ESTIMATORS = ("pathwise", "score", "score-baseline")
PARAMS = ("mu", "sigma")
#: f(y) = n (y − x̄)² + n v is the named cost square, (y − k)² with k = x̄: its forms come from the one table
SQUARE = COST_FORMS["square"]


class Stats(NamedTuple):
    """Sufficient statistics of the data for the squared loss."""

    n: int
    mean: float
    var_mle: float


class Pair(NamedTuple):
    """One number per parameter."""

    mu: float
    sigma: float


def expectation(stats: Stats, mu, sigma):
    """E f = n (d² + σ²) + n v: n times the named cost ``square`` with k = x̄, plus n v."""
    return stats.n * SQUARE.normal_mean(mu, sigma, stats.mean) + stats.n * stats.var_mle


def gradient(stats: Stats, mu, sigma) -> Pair:
    """(∂E f/∂μ, ∂E f/∂σ) = (2 n d, 2 n σ): n times the gradient of E (y − x̄)² from the cost table."""
    d_mu, d_sigma = SQUARE.normal_grad(mu, sigma, stats.mean)
    return Pair(stats.n * d_mu, stats.n * d_sigma)


def best_baseline(stats: Stats, mu, sigma) -> Pair:
    """Variance-optimal constant b* per parameter: n(d² + v) + 3nσ² for μ, n(d² + v) + 5nσ² for σ."""
    n, d2 = stats.n, (mu - stats.mean) ** 2
    base = n * (d2 + stats.var_mle)
    return Pair(base + 3.0 * n * sigma**2, base + 5.0 * n * sigma**2)


def pathwise_variance(stats: Stats, mu, sigma) -> Pair:
    """Var ĝ_μ = 4n²σ², Var ĝ_σ = 4n²(d² + 2σ²)."""
    n2, d2 = stats.n**2, (mu - stats.mean) ** 2
    return Pair(4.0 * n2 * sigma**2, 4.0 * n2 * (d2 + 2.0 * sigma**2))


def score_variance(stats: Stats, mu, sigma, baseline=0.0) -> Pair:
    """Single-sample variances of (f − b) ∇ log p with a constant baseline b (see the module docstring)."""
    n, d = stats.n, mu - stats.mean
    c = n * (d**2 + stats.var_mle) - baseline
    b1, c2 = 2.0 * n * d * sigma, n * sigma**2
    var_mu = (c**2 + 6.0 * c * c2 + 2.0 * b1**2 + 15.0 * c2**2) / sigma**2
    var_sigma = (2.0 * c**2 + 20.0 * c * c2 + 10.0 * b1**2 + 74.0 * c2**2) / sigma**2
    return Pair(var_mu, var_sigma)


def best_score_variance(stats: Stats, mu, sigma) -> Pair:
    """With each parameter's optimal constant: 8n²d² + 6n²σ² (μ), 40n²d² + 24n²σ² (σ)."""
    n2, d2 = stats.n**2, (mu - stats.mean) ** 2
    return Pair(8.0 * n2 * d2 + 6.0 * n2 * sigma**2, 40.0 * n2 * d2 + 24.0 * n2 * sigma**2)


def single_sample_variance(estimator: str, stats: Stats, mu, sigma) -> Pair:
    """Exact Var of one estimate for ``estimator`` in :data:`ESTIMATORS`."""
    if estimator == "pathwise":
        return pathwise_variance(stats, mu, sigma)
    if estimator == "score":
        return score_variance(stats, mu, sigma, 0.0)
    if estimator == "score-baseline":
        return best_score_variance(stats, mu, sigma)
    raise ValueError(f"unknown estimator {estimator!r}; choose one of {', '.join(ESTIMATORS)}")
