r"""The encoder gradient's variance, tracked as a training metric.

With ĝ_1..ĝ_R, R independent estimates of ∇_φ (the encoder's gradient, flattened to P numbers)
on one fixed batch at the current parameters:

    grad_var = tr Ĉov(ĝ) = Σ_p Σ_r (ĝ_{r,p} − ḡ_p)² / (R − 1)
    grad_snr = ‖ḡ‖₂ / √grad_var

grad_var is the expected squared distance of one batch gradient from the mean one (in the
loss's units: nats per image). The estimates come from the caller's generator and a copy of the
baseline state, so tracking never changes the training run itself.
"""

from __future__ import annotations

import copy
import math
from typing import NamedTuple

import torch

from gradest.estimators.baselines import MovingAverage
from gradest.vae.model import VAE
from gradest.vae.objectives import Objective


class GradientVariance(NamedTuple):
    trace: float
    snr: float


def encoder_gradient_variance(
    model: VAE,
    objective: Objective,
    x: torch.Tensor,
    k: int,
    repeats: int,
    generator: torch.Generator,
    baseline: MovingAverage | None = None,
) -> GradientVariance:
    """Trace of the covariance and SNR of ``repeats`` ≥ 2 encoder-gradient estimates on batch x."""
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    flat = []
    for _ in range(repeats):
        # A fresh copy each time: every repeat sees the same baseline value b as training would.
        est = objective.fn(model, x, k, generator, copy.deepcopy(baseline))
        grads = torch.autograd.grad(est.loss, params)
        flat.append(torch.cat([g.reshape(-1) for g in grads]))
    g = torch.stack(flat)
    trace = float(g.var(0, correction=1).sum())
    norm = float(g.mean(0).norm())
    snr = norm / math.sqrt(trace) if trace > 0 else math.inf
    return GradientVariance(trace, snr)
