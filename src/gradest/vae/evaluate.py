r"""Test-set figures of a trained VAE, in nats per image.

    −ELBO   = E_x[ −E_q log p_θ(x|z) + KL(q_φ(z|x) ‖ p(z)) ]        KL in closed form
    NLL_K   = E_x[ −log (1/K) Σ_k p_θ(x, z_k) / q_φ(z_k|x) ],  z_k ~ q     (IWAE_K; ↓ −log p(x) as K grows)
    KL      = E_x KL(q_φ(z|x) ‖ p(z))
    active units  = #{u : Var_x(E_q[z_u]) > 0.01}                   (Burda et al., 2016)

For binary latents (:class:`~gradest.vae.model.SigmoidBeliefVAE`) the same figures with
q_φ(b|x) = Π Bernoulli(σ(ℓ_φ(x))), b drawn as 1[u < σ(ℓ)], the KL to the learned Bernoulli prior in
closed form, and a unit active when Var_x(E_q[b_u]) = Var_x σ(ℓ_u) > 0.01.

Images are processed in batches and the K importance samples in chunks whose log-weights are
combined by logsumexp, so memory stays bounded for K = 1000 on the whole test set.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from gradest.vae.model import VAE, SigmoidBeliefVAE, bernoulli_log_prob, gaussian_kl

ACTIVE_THRESHOLD = 0.01
#: z per image of the final −ELBO (its Monte Carlo error is then ≈ 0.02 nats on 1,000 images).
ELBO_SAMPLES = 100


class Evaluation(NamedTuple):
    neg_elbo: float
    nll_iwae: float
    iwae_k: int
    kl: float
    active_units: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "test_neg_elbo": self.neg_elbo,
            "test_nll_iwae": self.nll_iwae,
            "iwae_k": self.iwae_k,
            "kl": self.kl,
            "active_units": self.active_units,
        }


def _noise(k: int, b: int, latent: int, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return torch.randn(k, b, latent, generator=generator, device=like.device, dtype=like.dtype)


def _binary(k: int, logits: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """b ~ Π Bernoulli(σ(ℓ)) ``[K, B, L]``: 1[u < σ(ℓ)], u from the generator."""
    u = torch.rand(k, *logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
    return (u < torch.sigmoid(logits)).to(logits.dtype)


@torch.no_grad()
def neg_elbo(
    model: VAE | SigmoidBeliefVAE,
    x: torch.Tensor,
    generator: torch.Generator,
    samples: int = 1,
    cells: int = 100_000,
) -> tuple[float, float]:
    """(−ELBO, KL) averaged over the images x [N, D], with ``samples`` z per image.

    One z per image suffices to follow training epoch by epoch; the final figures use more, so
    that two evaluations of one model agree to a few hundredths of a nat. ``cells`` bounds the
    images × samples decoded at once.
    """
    total = kl_total = 0.0
    for xb in x.split(max(1, cells // samples)):
        if isinstance(model, SigmoidBeliefVAE):
            logits = model.encode(xb)
            kl = model.kl(logits)
            b = _binary(samples, logits, generator)
            total += float((kl - bernoulli_log_prob(xb, model.decoder(b)).mean(0)).sum())
            kl_total += float(kl.sum())
            continue
        loc, scale = model.encode(xb)
        z = loc + scale * _noise(samples, xb.shape[0], model.latent, xb, generator)
        kl = gaussian_kl(loc, scale)
        total += float((kl - bernoulli_log_prob(xb, model.decoder(z)).mean(0)).sum())
        kl_total += float(kl.sum())
    return total / x.shape[0], kl_total / x.shape[0]


@torch.no_grad()
def iwae_nll(
    model: VAE,
    x: torch.Tensor,
    k: int,
    generator: torch.Generator,
    batch_size: int = 100,
    chunk: int = 200,
) -> float:
    """−IWAE_K bound averaged over the images x [N, D]."""
    total = 0.0
    binary = isinstance(model, SigmoidBeliefVAE)
    for xb in x.split(batch_size):
        encoding = (model.encode(xb),) if binary else model.encode(xb)
        parts = []
        for start in range(0, k, chunk):
            c = min(chunk, k - start)
            if binary:
                z = _binary(c, encoding[0], generator)
            else:
                loc, scale = encoding
                z = loc + scale * _noise(c, xb.shape[0], model.latent, xb, generator)
            parts.append(torch.logsumexp(model.log_weights(xb, z, *encoding), 0))
        log_mean_w = torch.logsumexp(torch.stack(parts), 0) - math.log(k)
        total -= float(log_mean_w.sum())
    return total / x.shape[0]


@torch.no_grad()
def active_units(model: VAE, x: torch.Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """Latent coordinates whose posterior mean varies across images by more than ``threshold``."""
    if isinstance(model, SigmoidBeliefVAE):  # the posterior means E_q[b] = σ(ℓ)
        loc = torch.cat([torch.sigmoid(model.encode(xb)) for xb in x.split(1000)])
    else:
        loc = torch.cat([model.encode(xb)[0] for xb in x.split(1000)])
    return int((loc.var(0, correction=1) > threshold).sum())


def final_neg_elbo(model: VAE | SigmoidBeliefVAE, x: torch.Tensor,
                   generator: torch.Generator) -> tuple[float, float]:
    """(−ELBO, KL) as the final evaluation computes them: :data:`ELBO_SAMPLES` z per image, the first
    draws of ``generator`` (which :func:`evaluate` then continues with)."""
    was_training = model.training
    model.eval()
    try:
        return neg_elbo(model, x, generator, samples=ELBO_SAMPLES)
    finally:
        model.train(was_training)


def evaluate(model: VAE, x: torch.Tensor, iwae_k: int, generator: torch.Generator,
             elbo: tuple[float, float] | None = None) -> Evaluation:
    """All test-set figures of the module docstring.

    ``elbo``: (−ELBO, KL) already computed by :func:`final_neg_elbo` from ``generator``, which has
    advanced past those draws: the figures are then the ones a full call with the fresh generator gives,
    and the run's last epoch record and its summary share one −ELBO.
    """
    was_training = model.training
    model.eval()
    try:
        elbo, kl = neg_elbo(model, x, generator, samples=ELBO_SAMPLES) if elbo is None else elbo
        nll = iwae_nll(model, x, iwae_k, generator)
        units = active_units(model, x)
    finally:
        model.train(was_training)
    return Evaluation(elbo, nll, iwae_k, kl, units)
