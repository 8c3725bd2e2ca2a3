r"""The continuous ranked probability score of N(μ, σ²), a proper scoring rule that recovers σ.

For a forecast distribution P and an observation x (Gneiting & Raftery, 2007):

    CRPS(P, x) = E|y − x| − ½ E|y − y'|,        y, y' ~ P independent.

Averaged over the data, and estimated through the sampler with one pair (y, y') per sample:

    f(y, y') = (1/n) Σ_i ½ (|y − x_i| + |y' − x_i|) − ½ |y − y'|,       E f = (1/n) Σ_i CRPS(P, x_i).

For P = N(μ, σ²) the score has the closed form, with z = (x − μ)/σ,

    CRPS = σ [ z (2Φ(z) − 1) + 2φ(z) − 1/√π ],
    ∂CRPS/∂μ = −(2Φ(z) − 1),       ∂CRPS/∂σ = 2φ(z) − 1/√π.

Its data average is convex in (μ, σ); the minimiser solves mean(2Φ(z_i) − 1) = 0 and
mean(2φ(z_i)) = 1/√π. Unlike Σ (y − x_i)², whose σ-gradient 2nσ only shrinks σ, the −½E|y − y'|
term rewards spread, so the optimum has σ > 0 (close to, not equal to, the MLE √v).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import optimize, special
from torch.distributions import Independent, Normal

from gradest.gaussian.closed_form import Pair

_INV_SQRT_PI = 1.0 / math.sqrt(math.pi)


def crps_normal(x: np.ndarray, mu: float, sigma: float) -> float:
    """(1/n) Σ_i CRPS(N(μ, σ²), x_i), closed form."""
    z = (np.asarray(x) - mu) / sigma
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    cdf = special.ndtr(z)
    return float(np.mean(sigma * (z * (2.0 * cdf - 1.0) + 2.0 * pdf - _INV_SQRT_PI)))


def crps_normal_grad(x: np.ndarray, mu: float, sigma: float) -> Pair:
    """Gradient of the data-averaged closed-form CRPS in (μ, σ)."""
    z = (np.asarray(x) - mu) / sigma
    pdf = np.exp(-0.5 * z**2) / math.sqrt(2.0 * math.pi)
    return Pair(float(-np.mean(2.0 * special.ndtr(z) - 1.0)), float(np.mean(2.0 * pdf) - _INV_SQRT_PI))


def crps_minimiser(x: np.ndarray) -> Pair:
    """argmin over (μ, σ > 0) of the data-averaged CRPS, by quasi-Newton search on its gradient.

    The CRPS is location-scale equivariant, CRPS(N(a + bμ, bσ), a + bu) = b CRPS(N(μ, σ), u), so the
    search runs on the standardised data u = (x − x̄)/√v and maps back: the tolerances then hold in
    the data's units whatever their offset and scale.
    """
    x = np.asarray(x, dtype=np.float64)
    centre, spread = float(x.mean()), float(x.std())
    u = (x - centre) / spread
    # Optimise over log σ so the search never leaves σ > 0; the problem is convex and smooth.
    result = optimize.minimize(
        lambda p: crps_normal(u, p[0], math.exp(p[1])),
        np.array([0.0, 0.0]),
        jac=lambda p: np.array(_log_grad(u, p)),
        method="BFGS",
        options={"gtol": 1e-13, "maxiter": 500},
    )
    return Pair(centre + spread * float(result.x[0]), spread * float(math.exp(result.x[1])))


def _log_grad(x, p):
    g = crps_normal_grad(x, p[0], math.exp(p[1]))
    return g.mu, g.sigma * math.exp(p[1])


def pair_builder(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    """Two independent draws (y, y') of N(loc, scale²) per sample: samples ``[..., 2]``."""
    shape = (*loc.shape, 2)
    return Independent(Normal(loc.unsqueeze(-1).expand(shape), scale.unsqueeze(-1).expand(shape)), 1)


def mean_abs_deviation(data: torch.Tensor):
    """y -> (1/n) Σ_i |y − x_i| elementwise, in O(log n) per y: no [N, n] table for large data.

    With the data sorted and centred (x_(1) ≤ … ≤ x_(n), prefix sums S_k) and k = #{x_i < y},
    Σ_i |y − x_i| = y (2k − n) + S_n − 2 S_k; its y-derivative 2k − n is the sum of the signs.
    Centring on x̄ keeps the prefix sums at the data's spread, so no precision is lost to large offsets.
    """
    centre = float(data.mean())
    xs = torch.sort(data - centre).values
    prefix = torch.cat([xs.new_zeros(1), torch.cumsum(xs, 0)])
    n = xs.shape[0]

    def g(y: torch.Tensor) -> torch.Tensor:
        yc = y - centre
        k = torch.searchsorted(xs, yc.detach())
        return (yc * (2 * k - n) + prefix[n] - 2 * prefix[k]) / n

    return g


def crps_cost(data: torch.Tensor):
    """f(y, y') on samples ``[N, 2]`` -> ``[N]``, an unbiased estimate of the data-averaged CRPS."""
    to_data = mean_abs_deviation(data)  # (1/n) Σ_i |y − x_i|

    def f(pairs: torch.Tensor) -> torch.Tensor:
        return to_data(pairs).mean(-1) - 0.5 * (pairs[:, 0] - pairs[:, 1]).abs()

    return f
