r"""The four objectives fitted by SGD, each a recipe: parameters, loss, step-size scale, read-out, target.

=========  ==========================================  =====================  ========================
name       loss (per data point)                        stochastic node        target (μ*, σ*)
=========  ==========================================  =====================  ========================
squared    (1/n) E Σ_i (y − x_i)²                       y ~ N(μ, σ²)           (x̄, 0)
crps       E|y − x| − ½ E|y − y'|, averaged over data   (y, y') ~ N(μ, σ²)²    argmin of closed form
elbo       −ELBO / n                                    (m, log s) ~ q         (E[m|x], exp E[log s|x])
nll        −(1/n) Σ_i log N(x_i; μ, σ²)                 none (exact gradient)  (x̄, √v), the MLE
=========  ==========================================  =====================  ========================

Step sizes are η times a fixed per-parameter scale equal to the inverse curvature of the loss at
its target, in the data's unit (a diagonal preconditioner), so one η suits data in any unit and
the comparison between estimators is at equal, sensible step sizes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.distributions import Normal

from gradest.estimators import Estimator
from gradest.gaussian import crps as crps_mod
from gradest.gaussian import elbo as elbo_mod
from gradest.gaussian.closed_form import Pair
from gradest.gaussian.data import Dataset

#: where an objective's parameters live: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a torch.device
Device = str | torch.device

#: σ is kept ≥ this fraction of the data's spread (projected SGD), far below the 1% tolerance
SIGMA_FLOOR = 1e-4
#: step-size scale of both parameters of ``squared``: the inverse of the curvature 2 of E f / n, so
#: one step multiplies σ by 1 − 2η·SQUARED_STEP_SCALE = 1 − η in expectation (at d = 0)
SQUARED_STEP_SCALE = 0.5


@dataclass(frozen=True)
class Objective:
    """One fitting problem.

    init: fresh leaf parameters (float64, requires_grad).
    loss: (params, estimator or None, samples, generator) -> scalar whose gradient is the update.
    scales: per-parameter step-size multipliers (inverse curvature at the target).
    project: in-place projection after each step (keeps σ > 0), or None.
    readout: params -> (μ, σ) in the data's terms.
    target: the exact (μ*, σ*) the fit should reach.
    stochastic: whether the loss goes through a sampler (False: exact gradients, no estimator).
    family_optimum: where an exact optimiser of the loss lands when it differs from the target (the
        best Gaussian q for the ELBO: the variational family's own bias), or None.
    """

    name: str
    init: Callable[[], dict[str, torch.Tensor]]
    loss: Callable[..., torch.Tensor]
    scales: dict[str, torch.Tensor]
    project: Callable[[dict[str, torch.Tensor]], None] | None
    readout: Callable[[dict[str, torch.Tensor]], tuple[float, float]]
    target: Pair
    stochastic: bool = True
    family_optimum: Pair | None = None


def _start(data: Dataset) -> tuple[float, float]:
    """Every fit starts 2 data standard deviations off in μ, with σ twice too wide."""
    return data.mean + 2.0 * data.sd, 2.0 * data.sd


def _location_scale_init(data: Dataset, device: Device):
    mu0, sigma0 = _start(data)

    def init():
        return {"loc": torch.tensor(mu0, dtype=torch.float64, device=device, requires_grad=True),
                "scale": torch.tensor(sigma0, dtype=torch.float64, device=device, requires_grad=True)}

    return init


def _floor_sigma(data: Dataset):
    floor = SIGMA_FLOOR * data.sd

    def project(params):
        params["scale"].clamp_(min=floor)

    return project


def _readout_loc_scale(params) -> tuple[float, float]:
    return float(params["loc"].detach()), float(params["scale"].detach())


def _scalar(value: float, device: Device) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, device=device)


def squared(data: Dataset, device: Device = "cpu") -> Objective:
    """The question's loss; the σ-gradient 2σ (per point) drives σ to 0 geometrically."""

    def loss(params, estimator: Estimator, samples, generator):
        return estimator.surrogate(data.sum_squares, Normal, params, samples, generator) / data.n

    return Objective("squared", _location_scale_init(data, device), loss,
                     {"loc": _scalar(SQUARED_STEP_SCALE, device),
                      "scale": _scalar(SQUARED_STEP_SCALE, device)},
                     _floor_sigma(data),
                     _readout_loc_scale, Pair(data.mean, 0.0))


def crps(data: Dataset, device: Device = "cpu") -> Objective:
    """CRPS through the sampler with pairs (y, y'); target is the closed-form CRPS minimiser."""
    f = crps_mod.crps_cost(data.values.to(device))

    def loss(params, estimator: Estimator, samples, generator):
        return estimator.surrogate(f, crps_mod.pair_builder, params, samples, generator)

    # Curvatures at the optimum (Normal data): 1/(√π σ) in μ, 1/(2√π σ) in σ.
    sd = data.sd
    scales = {"loc": _scalar(math.sqrt(math.pi) * sd, device),
              "scale": _scalar(2.0 * math.sqrt(math.pi) * sd, device)}
    return Objective("crps", _location_scale_init(data, device), loss, scales, _floor_sigma(data),
                     _readout_loc_scale, crps_mod.crps_minimiser(data.values.numpy()))


def elbo(data: Dataset, device: Device = "cpu") -> Objective:
    """VI with q over (m, log s); the fit's (μ, σ) are (μ_m, e^{μ_ℓ})."""
    prior = elbo_mod.weak_prior(data)
    f = elbo_mod.neg_log_joint(data, prior)
    mu0, sigma0 = _start(data)
    n = data.n

    # q's scales start at the posterior's order, s/√n for m and 1/√(2n) for log s, where the fixed
    # step scales below (curvatures at the optimum ∝ 1/n) are right for any n; starting much wider
    # makes the first steps on the log-scales O(n) and diverges on large data.
    def init():
        return {"loc": torch.tensor([mu0, math.log(sigma0)], dtype=torch.float64, device=device,
                                    requires_grad=True),
                "log_scale": torch.tensor([math.log(data.sd / math.sqrt(n)), -0.5 * math.log(2.0 * n)],
                                          dtype=torch.float64, device=device, requires_grad=True)}

    def loss(params, estimator: Estimator, samples, generator):
        expected = estimator.surrogate(f, elbo_mod.q_builder, params, samples, generator)
        return (expected - elbo_mod.entropy(params["log_scale"])) / n

    def readout(params):
        loc = params["loc"].detach()
        return float(loc[0]), math.exp(min(float(loc[1]), 700.0))

    # Curvatures of −ELBO/n: 1/s² (μ_m), 2 (μ_ℓ), and ≈ 2/n for both log-scales (stepped at a fifth
    # of the inverse curvature: score-function noise on them otherwise throws q's scales out of range).
    scales = {"loc": torch.tensor([data.var_mle, 0.5], dtype=torch.float64, device=device),
              "log_scale": torch.tensor([0.1 * n, 0.1 * n], dtype=torch.float64, device=device)}
    best_q = elbo_mod.best_gaussian_q(data, prior)
    return Objective("elbo", init, loss, scales, None, readout,
                     elbo_mod.exact_posterior(data, prior).target(),
                     family_optimum=Pair(float(best_q[0]), math.exp(float(best_q[1]))))


def nll(data: Dataset, device: Device = "cpu") -> Objective:
    """Maximum likelihood with exact gradients: the reference answer, σ̂² = mean(x²) − x̄²."""
    xbar, v = data.mean, data.var_mle

    # −(1/n) Σ log N(x_i; μ, σ²) = log σ + ½ log 2π + (v + (x̄ − μ)²)/(2σ²): the same function through
    # the sufficient statistics, O(1) per step for any n
    def loss(params, estimator, samples, generator):
        mu, sigma = params["loc"], params["scale"]
        return torch.log(sigma) + 0.5 * math.log(2.0 * math.pi) + (v + (xbar - mu) ** 2) / (2.0 * sigma**2)

    # Curvatures at the MLE: 1/v (μ) and 2/v (σ).
    scales = {"loc": _scalar(data.var_mle, device), "scale": _scalar(0.5 * data.var_mle, device)}
    return Objective("nll", _location_scale_init(data, device), loss, scales, _floor_sigma(data),
                     _readout_loc_scale, Pair(data.mean, data.sd), stochastic=False)


#: name -> builder(data, device="cpu"): the objective with its parameters and step scales on ``device``
OBJECTIVES: dict[str, Callable[..., Objective]] = {
    "squared": squared,
    "crps": crps,
    "elbo": elbo,
    "nll": nll,
}
