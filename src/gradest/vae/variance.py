r"""The encoder gradient's variance, tracked as a training metric.

With ĝ_1..ĝ_R, R independent estimates of ∇_φ (the encoder's gradient, flattened to P numbers)
on one fixed batch at the current parameters:

    grad_var = tr Ĉov(ĝ) = Σ_p Σ_r (ĝ_{r,p} − ḡ_p)² / (R − 1)
    grad_snr = ‖ḡ‖₂ / √grad_var

grad_var is the expected squared distance of one batch gradient from the mean one (in the
loss's units: nats per image). The estimates come from the caller's generator and a copy of the
baseline state, so tracking never changes the training run itself.

The R estimates are computed batched, not by R backward passes: the batch is encoded once,
(μ, σ) ``[B, L]`` are replaced by detached leaves expanded to ``[R, B, L]`` (the repeats as an extra
batch axis, so the noise is ``[K, R, B, L]``), one backward pass of the objective's surrogate
(``Objective.from_encoding``) gives each repeat's gradient in (μ, σ), and one batched vector–Jacobian
product through the encoder (``is_grads_batched``) turns them into ``[R, *shape]`` per encoder
parameter. Every repeat sees the same baseline value b, as training would.
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


def encoder_gradients(
    model: VAE,
    objective: Objective,
    x: torch.Tensor,
    k: int,
    repeats: int,
    generator: torch.Generator,
    baseline: MovingAverage | None = None,
) -> torch.Tensor:
    """``repeats`` independent estimates of the loss's gradient in the encoder's parameters, ``[R, P]``."""
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    with torch.enable_grad():
        loc, scale = model.encode(x)
        leaves = [t.detach().expand(repeats, *t.shape).requires_grad_(True) for t in (loc, scale)]
        est = objective.from_encoding(model, x, *leaves, k, generator, copy.deepcopy(baseline))
        # The loss is the mean over repeats and images: × R gives each repeat its own loss's gradient.
        g_loc, g_scale = torch.autograd.grad(est.loss * repeats, leaves)
        grads = torch.autograd.grad(
            (loc, scale), params, grad_outputs=(g_loc, g_scale), is_grads_batched=True, allow_unused=True,
            materialize_grads=True,
        )
    return torch.cat([g.reshape(repeats, -1) for g in grads], 1)


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
    g = encoder_gradients(model, objective, x, k, repeats, generator, baseline)
    trace = float(g.var(0, correction=1).sum())
    norm = float(g.mean(0).norm())
    snr = norm / math.sqrt(trace) if trace > 0 else math.inf
    return GradientVariance(trace, snr)
