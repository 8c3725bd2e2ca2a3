r"""One surrogate loss per estimator: ``loss.backward()`` leaves the estimator's gradient in .grad.

With z_1..z_K ~ q_φ(z|x) (z = μ + σ ε, ε ~ N(0, I) from the caller's generator) and
log w_k = log p(z_k) + log p_θ(x|z_k) − log q_φ(z_k|x), w̃_k = w_k / Σ_j w_j:

    bound   ELBO = E_q[log w]                         IWAE_K = E[log (1/K) Σ_k w_k]
    pathwise   ∇ of (1/K) Σ_k log p_θ(x|z_k) − KL(q‖p)          (reparameterized, KL in closed form)
    stl        ∇ of (1/K) Σ_k log w_k with log q's parameters held fixed: the score term
               −∇_φ log q_φ(z)|_z, zero in expectation, is dropped (Roeder et al., 2017)
    iwae       ∇ of log (1/K) Σ_k w_k, reparameterized (Burda et al., 2016)
    iwae-dreg  decoder Σ_k w̃_k ∇_θ log w_k; encoder Σ_k w̃_k² ∂log w_k/∂z_k · ∂z_k/∂φ with log q's
               parameters held fixed (Tucker et al., 2019)
    score      decoder ∇_θ log p_θ(x|z_k); encoder (log p_θ(x|z_k) − b) ∇_φ log q_φ(z_k|x) − ∇_φ KL(q‖p),
               z not reparameterized, KL in closed form (as for pathwise, so that the two differ only
               in how ∇_φ E_q log p(x|z) is estimated), b a moving average of log p(x|z) over earlier
               batches (REINFORCE)
    score-loo  as score with b_k = the mean of the other K − 1 samples' log p(x|z) (K ≥ 2)
    vimco      decoder Σ_k w̃_k ∇_θ log w_k; encoder Σ_k (L − L_{−k}) ∇_φ log q(z_k) − Σ_k w̃_k ∇_φ log q(z_k),
               L = log (1/K) Σ w_j and L_{−k} the same with w_k replaced by the geometric mean of the
               others (Mnih & Rezende, 2016)

Every gradient is unbiased for the gradient of its bound (ELBO for pathwise, stl, score, score-loo;
IWAE_K for iwae, iwae-dreg, vimco), in encoder and decoder parameters alike. The loss is the mean
over the batch of the negative surrogate (nats per image); its *value* is meaningful only for
pathwise, stl and iwae, so every objective also returns the detached per-image ELBO and bound.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from gradest.errors import GradestError
from gradest.estimators.baselines import MovingAverage
from gradest.vae.model import VAE, bernoulli_log_prob, gaussian_kl, normal_log_prob


class Estimate(NamedTuple):
    """loss: scalar to minimise; elbo, bound: detached per-image estimates [B] (nats)."""

    loss: torch.Tensor
    elbo: torch.Tensor
    bound: torch.Tensor


ObjectiveFn = Callable[[VAE, torch.Tensor, int, torch.Generator, "MovingAverage | None"], Estimate]


class Objective(NamedTuple):
    fn: ObjectiveFn
    bound: str  # "elbo" or "iwae": the bound whose gradient the estimator is unbiased for
    min_k: int
    uses_baseline: bool
    summary: str


def _noise(x: torch.Tensor, k: int, latent: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(k, x.shape[0], latent, generator=generator, device=x.device, dtype=x.dtype)


def _iwae(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/K) Σ_k w_k over the sample axis 0."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def pathwise(model, x, k, generator, baseline=None) -> Estimate:
    """−ELBO with the reparameterization trick and the Gaussian KL in closed form (Kingma & Welling)."""
    loc, scale = model.encode(x)
    z = loc + scale * _noise(x, k, model.latent, generator)
    elbo = bernoulli_log_prob(x, model.decoder(z)).mean(0) - gaussian_kl(loc, scale)
    value = elbo.detach()
    return Estimate(-elbo.mean(), value, value)


def stl(model, x, k, generator, baseline=None) -> Estimate:
    """−ELBO, reparameterized, with log q evaluated at detached (μ, σ): sticking the landing."""
    loc, scale = model.encode(x)
    z = loc + scale * _noise(x, k, model.latent, generator)
    # Detached μ, σ in log q: only the path through z reaches φ; the score term is the one dropped.
    log_w = model.log_joint(x, z) - normal_log_prob(z, loc.detach(), scale.detach())
    elbo = log_w.detach().mean(0)
    return Estimate(-log_w.mean(0).mean(), elbo, elbo)


def iwae(model, x, k, generator, baseline=None) -> Estimate:
    """−IWAE_K bound, reparameterized."""
    loc, scale = model.encode(x)
    z = loc + scale * _noise(x, k, model.latent, generator)
    log_w = model.log_weights(x, z, loc, scale)
    bound = _iwae(log_w)
    return Estimate(-bound.mean(), log_w.detach().mean(0), bound.detach())


def iwae_dreg(model, x, k, generator, baseline=None) -> Estimate:
    """−IWAE_K with doubly reparameterized encoder gradients."""
    loc, scale = model.encode(x)
    z = loc + scale * _noise(x, k, model.latent, generator)
    # Detached μ, σ in log q: as in STL, φ is reached only through z.
    log_w = model.log_joint(x, z) - normal_log_prob(z, loc.detach(), scale.detach())
    weights = torch.softmax(log_w.detach(), 0)  # w̃_k, constants of the estimator
    # The surrogate Σ w̃_k log w_k gives θ its IWAE gradient Σ w̃_k ∇θ log w_k; the hook multiplies
    # what flows into z by w̃_k once more, so φ receives Σ w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ.
    if z.requires_grad:
        z.register_hook(lambda grad: grad * weights.unsqueeze(-1))
    surrogate = (weights * log_w).sum(0)
    return Estimate(-surrogate.mean(), log_w.detach().mean(0), _iwae(log_w.detach()))


def _sample_detached(model, x, k, generator):
    """(μ, σ) and z ~ q drawn without a path from φ: the score function never differentiates z."""
    loc, scale = model.encode(x)
    return loc, scale, (loc + scale * _noise(x, k, model.latent, generator)).detach()


def _reinforce(model, x, k, generator, baseline_fn) -> Estimate:
    """ELBO = E_q[log p_θ(x|z)] − KL(q‖p): REINFORCE for the expectation, the KL in closed form."""
    loc, scale, z = _sample_detached(model, x, k, generator)
    log_lik = bernoulli_log_prob(x, model.decoder(z))  # [K, B], θ's path
    log_q = normal_log_prob(z, loc, scale)  # [K, B], φ's score
    kl = gaussian_kl(loc, scale)
    signal = log_lik.detach()
    # Gradient: ∇θ log p(x|z) for the decoder, (log p(x|z) − b) ∇φ log q − ∇φ KL for the encoder;
    # the learning signal (log p(x|z) − b) is a constant of the math.
    surrogate = (log_lik + (signal - baseline_fn(signal)) * log_q).mean(0) - kl
    elbo = signal.mean(0) - kl.detach()
    return Estimate(-surrogate.mean(), elbo, elbo)


def score(model, x, k, generator, baseline=None) -> Estimate:
    """−ELBO by REINFORCE in the encoder with a moving-average baseline (b = 0 without one)."""

    def moving_average(signal):
        # The baseline reads earlier batches only, then absorbs this one: b is independent of z.
        return baseline(signal.reshape(-1)).reshape(signal.shape) if baseline is not None else 0.0

    return _reinforce(model, x, k, generator, moving_average)


def score_loo(model, x, k, generator, baseline=None) -> Estimate:
    """−ELBO by REINFORCE with the leave-one-out baseline over the K samples of each image."""
    return _reinforce(model, x, k, generator, lambda s: (s.sum(0, keepdim=True) - s) / (k - 1))


def vimco(model, x, k, generator, baseline=None) -> Estimate:
    """−IWAE_K with VIMCO's per-sample leave-one-out learning signals."""
    loc, scale, z = _sample_detached(model, x, k, generator)
    log_q = normal_log_prob(z, loc, scale)
    log_w = model.log_joint(x, z) - log_q
    lw = log_w.detach()
    bound = _iwae(lw)
    # L_{-j}: w_j replaced by the geometric mean of the other weights, for all j at once [K(j), K(i), B].
    others = (lw.sum(0, keepdim=True) - lw) / (k - 1)
    eye = torch.eye(k, dtype=torch.bool, device=lw.device).unsqueeze(-1)
    loo = _iwae(torch.where(eye, others.unsqueeze(1), lw.unsqueeze(0)).transpose(0, 1))
    signal = bound - loo  # [K, B], constants of the estimator
    # _iwae(log_w) at the detached z gives θ Σ w̃ ∇θ log p and φ −Σ w̃ ∇φ log q (the direct term).
    surrogate = (signal * log_q).sum(0) + _iwae(log_w)
    return Estimate(-surrogate.mean(), lw.mean(0), bound)


OBJECTIVES: dict[str, Objective] = {
    "pathwise": Objective(pathwise, "elbo", 1, False, "reparameterized ELBO, KL in closed form"),
    "stl": Objective(stl, "elbo", 1, False, "reparameterized ELBO, sticking the landing"),
    "iwae": Objective(iwae, "iwae", 1, False, "importance-weighted bound, reparameterized"),
    "iwae-dreg": Objective(iwae_dreg, "iwae", 1, False, "IWAE with doubly reparameterized gradients"),
    "score": Objective(score, "elbo", 1, True, "REINFORCE encoder, moving-average baseline"),
    "score-loo": Objective(score_loo, "elbo", 2, False, "REINFORCE encoder, leave-one-out over K ≥ 2"),
    "vimco": Objective(vimco, "iwae", 2, False, "VIMCO for the K-sample bound (K ≥ 2)"),
}


def get_objective(name: str, k: int) -> Objective:
    """The objective ``name``, checked to accept ``k`` samples per image."""
    entry = OBJECTIVES.get(name)
    base, colon, k_text = name.partition(":")
    if entry is None and colon and base in OBJECTIVES:
        raise GradestError(
            f"--estimator {name}: write --estimator {base} --k {k_text} "
            "(NAME:K is the syntax of gradest vae compare)"
        )
    if entry is None:
        raise GradestError(f"unknown --estimator {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    if k < entry.min_k:
        raise GradestError(f"--estimator {name} needs --k ≥ {entry.min_k} samples per image, got {k}")
    return entry


def make_baseline(objective: Objective, decay: float) -> MovingAverage | None:
    """The moving-average baseline state the objective needs (None if it needs none)."""
    return MovingAverage(decay) if objective.uses_baseline else None
