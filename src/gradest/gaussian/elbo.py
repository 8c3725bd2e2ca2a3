r"""Variational inference for x_i ~ N(m, s²): the VAE setting, where a Gaussian's μ and σ are learnt.

Model, with ℓ = log s and weak priors in the data's own units r = |x̄| + √v and √v:

    m ~ N(0, τ_m²),  τ_m = 10 r;     ℓ ~ N(log √v, τ_ℓ²),  τ_ℓ = 2;     x_i | m, ℓ ~ N(m, e^{2ℓ}).

(ℓ's prior sits at the data's spread, not at r: for data far from 0 relative to their spread, such as
10⁹ ± 10⁻³, a prior at log r would lie many τ_ℓ from the likelihood and stop being weak.)

Variational family q(m, ℓ) = N(μ_m, σ_m²) N(μ_ℓ, σ_ℓ²); the stochastic node is z = (m, ℓ) ~ q and

    −ELBO(q) = E_q[f(z)] − H(q),    f(z) = −log p(x, m, ℓ),    H(q) = log σ_m + log σ_ℓ + log 2πe.

E_q f is estimated through the sampler (pathwise or score function); H is exact. In closed form,

    E_q f = nμ_ℓ + (n/2) log 2π + (n/2)(v + (x̄ − μ_m)² + σ_m²) e^{−2μ_ℓ + 2σ_ℓ²}
            + (μ_m² + σ_m²)/(2τ_m²) + ((μ_ℓ − log √v)² + σ_ℓ²)/(2τ_ℓ²) + ½ log(2πτ_m²) + ½ log(2πτ_ℓ²),

whose minimiser is the best Gaussian q. The fitted (μ, σ) of the data are the posterior summaries
E_q[m] = μ_m and exp(E_q[ℓ]) = e^{μ_ℓ}; their targets, E[m | x] and exp(E[ℓ | x]), come from the exact
posterior: m given ℓ is conjugate (Normal), and ℓ is integrated on a fine 1-D grid.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from scipy import optimize, special
from torch.distributions import Independent, Normal

from gradest.gaussian.closed_form import Pair
from gradest.gaussian.data import Dataset

LOG_2PI = math.log(2.0 * math.pi)
GRID_POINTS = 40_001


class Prior(NamedTuple):
    """m ~ N(0, m_sd²), log s ~ N(log_s_mean, log_s_sd²)."""

    m_sd: float
    log_s_mean: float
    log_s_sd: float


def weak_prior(data: Dataset) -> Prior:
    """Priors wide in the data's own units (r = |x̄| + √v for m, √v for s), weak whatever the unit."""
    r = abs(data.mean) + data.sd
    return Prior(10.0 * r, math.log(data.sd), 2.0)


def q_builder(loc: torch.Tensor, log_scale: torch.Tensor) -> Independent:
    """q(m, ℓ): a diagonal Normal over the two coordinates, samples ``[..., 2]``."""
    return Independent(Normal(loc, log_scale.exp()), 1)


def neg_log_joint(data: Dataset, prior: Prior):
    """f(z) = −log p(x, m, ℓ) on samples z = (m, ℓ) ``[N, 2]`` -> ``[N]``."""
    n = data.n

    def f(z: torch.Tensor) -> torch.Tensor:
        m, ell = z[:, 0], z[:, 1]
        sq = data.sum_squares(m)
        nll = n * ell + 0.5 * n * LOG_2PI + 0.5 * sq * torch.exp(-2.0 * ell)
        prior_m = 0.5 * (m / prior.m_sd) ** 2 + 0.5 * LOG_2PI + math.log(prior.m_sd)
        prior_l = 0.5 * ((ell - prior.log_s_mean) / prior.log_s_sd) ** 2 + 0.5 * LOG_2PI + math.log(
            prior.log_s_sd
        )
        return nll + prior_m + prior_l

    return f


def entropy(log_scale: torch.Tensor) -> torch.Tensor:
    """H(q) of a diagonal Normal: Σ log σ_j + (D/2) log 2πe."""
    return log_scale.sum() + 0.5 * log_scale.numel() * (1.0 + LOG_2PI)


def neg_elbo_closed_form(data: Dataset, prior: Prior, q: np.ndarray) -> float:
    """−ELBO at q = (μ_m, μ_ℓ, log σ_m, log σ_ℓ), from the closed form in the module docstring."""
    n, xbar, v = data.n, data.mean, data.var_mle
    mu_m, mu_l, ls_m, ls_l = (float(t) for t in q)
    s_m2, s_l2 = math.exp(2 * ls_m), math.exp(2 * ls_l)
    ef = (n * mu_l + 0.5 * n * LOG_2PI
          + 0.5 * n * (v + (xbar - mu_m) ** 2 + s_m2) * math.exp(-2.0 * mu_l + 2.0 * s_l2)
          + (mu_m**2 + s_m2) / (2 * prior.m_sd**2) + 0.5 * LOG_2PI + math.log(prior.m_sd)
          + ((mu_l - prior.log_s_mean) ** 2 + s_l2) / (2 * prior.log_s_sd**2) + 0.5 * LOG_2PI
          + math.log(prior.log_s_sd))
    return ef - (ls_m + ls_l + (1.0 + LOG_2PI))


def best_gaussian_q(data: Dataset, prior: Prior) -> np.ndarray:
    """The exact optimum of the variational problem: (μ_m, μ_ℓ, log σ_m, log σ_ℓ).

    Searched in offsets from the start in the data's units, μ_m = x̄ + √v a and the rest additive, so the
    simplex is sized by the data's spread and not by |x̄| (10⁹ ± 10⁻³ would otherwise need a simplex
    that shrinks through twelve orders of magnitude).
    """
    start = np.array([data.mean, math.log(data.sd), math.log(data.sd / math.sqrt(data.n)),
                      -0.5 * math.log(2.0 * data.n)])
    unit = np.array([data.sd, 1.0, 1.0, 1.0])
    simplex = np.vstack([np.zeros(4), 0.1 * np.eye(4)])
    result = optimize.minimize(lambda u: neg_elbo_closed_form(data, prior, start + unit * u) / data.n,
                               np.zeros(4), method="Nelder-Mead",
                               options={"xatol": 1e-11, "fatol": 1e-15, "maxiter": 20_000,
                                        "initial_simplex": simplex})
    return start + unit * result.x


class Posterior(NamedTuple):
    """Exact posterior summaries: E[m | x], E[ℓ | x] and their standard deviations."""

    mean_m: float
    mean_log_s: float
    sd_m: float
    sd_log_s: float

    def target(self) -> Pair:
        """What the fit's (μ, σ) = (μ_m, e^{μ_ℓ}) aim at: (E[m | x], exp E[ℓ | x])."""
        return Pair(self.mean_m, math.exp(self.mean_log_s))


def exact_posterior(data: Dataset, prior: Prior) -> Posterior:
    """Posterior moments: m | ℓ conjugate Normal; ℓ integrated on a grid (trapezoid, fine spacing)."""
    n, xbar, v = data.n, data.mean, data.var_mle
    centre = math.log(data.sd)
    half = 30.0 / math.sqrt(2.0 * n) + 1.0
    ell = np.linspace(centre - half, centre + half, GRID_POINTS)
    s2 = np.exp(2.0 * ell)
    # p(x | ℓ) after integrating m against its prior: Σ_i (x_i − x̄)² splits off, and
    # x̄ | ℓ ~ N(0, τ_m² + s²/n).
    tau2 = prior.m_sd**2
    log_joint = (-n * ell - 0.5 * n * LOG_2PI - 0.5 * n * v / s2 + 0.5 * np.log(2 * np.pi * s2 / n)
                 - 0.5 * xbar**2 / (tau2 + s2 / n) - 0.5 * np.log(2 * np.pi * (tau2 + s2 / n))
                 - 0.5 * ((ell - prior.log_s_mean) / prior.log_s_sd) ** 2)
    weights = np.exp(log_joint - special.logsumexp(log_joint))
    precision = 1.0 / tau2 + n / s2
    # E[m | ℓ, x] = (n x̄/s²)/precision = x̄ − x̄/(τ_m² precision): kept as x̄ plus a small shift, so
    # that weights summing to 1 only up to rounding do not blur x̄ when |x̄| ≫ √v
    shift = -xbar / (tau2 * precision)
    mean_l = float(np.sum(weights * ell))
    mean_shift = float(np.sum(weights * shift))
    mean_m = xbar + mean_shift
    # centred second moment: E[m²] − E[m]² would cancel every digit when |x̄| ≫ √v
    var_m = float(np.sum(weights * (1.0 / precision + (shift - mean_shift) ** 2)))
    var_l = float(np.sum(weights * (ell - mean_l) ** 2))
    return Posterior(mean_m, mean_l, math.sqrt(max(var_m, 0.0)), math.sqrt(max(var_l, 0.0)))
