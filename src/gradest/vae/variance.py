r"""R independent gradient estimates of a VAE objective on one batch, for the gradient monitor.

``gradest vae train`` measures its gradient variance with :class:`gradest.monitor.GradientMonitor`
(``estimates_fn``: this module's :func:`repeat_gradients`); with ĝ_1..ĝ_R the R estimates of a
parameter group (the encoder's, the decoder's or all gradients, flattened to P numbers) on one fixed
batch at the current parameters the monitor records

    variance = tr Ĉov(ĝ) = Σ_p Σ_r (ĝ_{r,p} − ḡ_p)² / (R − 1)
    snr      = ‖ḡ‖₂ / √variance

and the training metrics ``grad_var``, ``grad_snr`` are the encoder group's (in the loss's units:
nats per image). The estimates come from the caller's generator and a copy of the baseline state,
so measuring never changes the training run itself.

The R estimates are computed batched, not by R backward passes: the batch is encoded once,
(μ, σ) ``[B, L]`` are replaced by detached leaves expanded to ``[R, B, L]`` (the repeats as an extra
batch axis, so the noise is ``[K, R, B, L]``), one backward pass of the objective's surrogate
(``Objective.from_encoding``) gives each repeat's gradient in (μ, σ) and in the decoder's outputs,
one batched vector–Jacobian product through the encoder (``is_grads_batched``) turns the former into
``[R, *shape]`` per encoder parameter, and one vector–Jacobian product per repeat through the decoder
(re-run on that repeat's z ``[K, B, L]``) the latter into the decoder's. Every repeat sees the same
baseline value b, as training would. The decoder's part assumes that the decoder maps each z to its
logits independently of the other rows and without randomness (an MLP does; batch normalization
in training mode or dropout would not).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from torch import nn

from gradest.errors import GradestError
from gradest.estimators.baselines import MovingAverage
from gradest.monitor import gradient_statistics
from gradest.vae.model import VAE
from gradest.vae.objectives import Objective


class GradientVariance(NamedTuple):
    trace: float
    snr: float


class _Recorder(nn.Module):
    """Wraps the decoder for one measurement: keeps each call's input (detached) and output."""

    def __init__(self, decoder: nn.Module) -> None:
        super().__init__()
        self.decoder = decoder
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        if torch.is_grad_enabled():  # not the contract probe's extra evaluations (gradest.contract)
            self.calls.append((z.detach(), out))
        return out


def _trainable(module: nn.Module) -> list[torch.Tensor]:
    return [p for p in module.parameters() if p.requires_grad]


def repeat_gradients(
    model: VAE,
    objective: Objective,
    x: torch.Tensor,
    k: int,
    repeats: int,
    generator: torch.Generator,
    baseline: MovingAverage | None = None,
    decoder: bool = True,
) -> dict[str, torch.Tensor]:
    """``repeats`` independent estimates of the loss's gradient, ``{parameter name: [R, *shape]}``.

    The names are ``model.named_parameters()``'s (trainable ones); ``decoder=False`` leaves the
    decoder's parameters out (and skips their per-repeat passes).
    """
    enc_params = _trainable(model.encoder)
    dec_params = _trainable(model.decoder) if decoder else []
    probe = copy.copy(model)  # the user's model with the decoder wrapped, the model itself untouched
    probe._modules = dict(model._modules)
    probe.decoder = recorder = _Recorder(model.decoder)
    with torch.enable_grad():
        loc, scale = model.encode(x)
        leaves = [t.detach().expand(repeats, *t.shape).requires_grad_(True) for t in (loc, scale)]
        est = objective.from_encoding(probe, x, *leaves, k, generator, copy.deepcopy(baseline))
        outputs = [out for _, out in recorder.calls] if dec_params else []
        # The loss is the mean over repeats and images: × R gives each repeat its own loss's gradient.
        g_loc, g_scale, *g_outputs = torch.autograd.grad(
            est.loss * repeats, [*leaves, *outputs], allow_unused=True, materialize_grads=True
        )
        enc = torch.autograd.grad(
            (loc, scale), enc_params, grad_outputs=(g_loc, g_scale), is_grads_batched=True, allow_unused=True,
            materialize_grads=True,
        )
        dec = [p.new_zeros(repeats, *p.shape) for p in dec_params]
        for (z, _), g_out in zip(recorder.calls if dec_params else [], g_outputs, strict=True):
            if z.dim() < 3 or z.shape[-3] != repeats:
                raise GradestError(f"the objective called the decoder on z of shape {list(z.shape)}; the "
                                   f"gradient monitor needs z [K, R = {repeats}, B, L]")
            for r in range(repeats):
                rows = torch.autograd.grad(model.decoder(z.select(-3, r)), dec_params,
                                           grad_outputs=g_out.select(-3, r), allow_unused=True,
                                           materialize_grads=True)
                for total, row in zip(dec, rows, strict=True):
                    total[r] += row
    by_id: dict[int, torch.Tensor] = {}
    for p, g in zip([*enc_params, *dec_params], [*enc, *dec], strict=True):
        g = g.reshape(repeats, *p.shape)
        by_id[id(p)] = by_id[id(p)] + g if id(p) in by_id else g  # a tied parameter gets both parts
    return {name: by_id[id(p)] for name, p in model.named_parameters() if id(p) in by_id}


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
    grads = repeat_gradients(model, objective, x, k, repeats, generator, baseline, decoder=False)
    return torch.cat([g.reshape(repeats, -1) for g in grads.values()], 1)


def encoder_gradient_variance(
    model: VAE,
    objective: Objective,
    x: torch.Tensor,
    k: int,
    repeats: int,
    generator: torch.Generator,
    baseline: MovingAverage | None = None,
) -> GradientVariance:
    """Trace of the covariance and SNR of ``repeats`` ≥ 2 encoder-gradient estimates on batch x.

    The monitor's statistics (:func:`gradest.monitor.gradient_statistics`) of
    :func:`encoder_gradients`: one measurement outside a training loop.
    """
    stats = gradient_statistics(encoder_gradients(model, objective, x, k, repeats, generator, baseline))
    return GradientVariance(stats.variance, stats.snr)
