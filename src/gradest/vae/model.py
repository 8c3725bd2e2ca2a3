r"""The variational autoencoders: Gaussian q(z|x), standard normal prior, Bernoulli decoder; and
binary latents (:class:`SigmoidBeliefVAE`: Bernoulli q(b|x), learned Bernoulli prior).

    q_φ(z|x)  = N(z; μ_φ(x), diag σ_φ(x)²)          encoder(x) -> (μ, σ), each [B, L]
    p(z)      = N(z; 0, I)
    p_θ(x|z)  = Π_d Bernoulli(x_d; sigmoid(ℓ_θ(z)_d))  decoder(z) -> logits ℓ, [..., D]
    log w(x, z) = log p(z) + log p_θ(x|z) − log q_φ(z|x)   (the importance weight, in log space)

The encoder and decoder are any ``nn.Module``: pass your own to :class:`VAE` (the decoder must
accept leading sample dimensions, ``[K, B, L] -> [K, B, D]``, as an MLP does). The default is
the classic MLP, D-H-L with ReLU (784-400-20 for MNIST). Layers are initialised from an explicit
``torch.Generator`` (PyTorch's default Linear initialisation, drawn from it), never from the
global RNG.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def linear(d_in: int, d_out: int, generator: torch.Generator) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default initialisation drawn from ``generator``.

    W ~ U(±1/√fan_in) (kaiming_uniform with a = √5) and b ~ U(±1/√fan_in), as ``reset_parameters``
    does, but without touching the global RNG (the layer is built uninitialised first).
    """
    layer = torch.nn.utils.skip_init(nn.Linear, d_in, d_out)
    with torch.no_grad():
        nn.init.kaiming_uniform_(layer.weight, a=math.sqrt(5), generator=generator)
        bound = 1.0 / math.sqrt(d_in)
        nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return layer


def mlp(sizes: Sequence[int], generator: torch.Generator) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(linear(a, b, generator))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class GaussianEncoder(nn.Module):
    """x [B, D] -> (μ, σ) [B, L]: an MLP whose last layer gives μ and log σ²."""

    def __init__(self, dim: int, hidden: Sequence[int], latent: int, generator: torch.Generator):
        super().__init__()
        self.net = mlp([dim, *hidden, 2 * latent], generator)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, log_var = self.net(x).chunk(2, dim=-1)
        return loc, torch.exp(0.5 * log_var)


class BernoulliDecoder(nn.Module):
    """z [..., L] -> Bernoulli logits [..., D]: an MLP (the hidden sizes reversed)."""

    def __init__(self, latent: int, hidden: Sequence[int], dim: int, generator: torch.Generator):
        super().__init__()
        self.net = mlp([latent, *reversed(hidden), dim], generator)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def normal_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, diag σ²) summed over the last axis (written out: cheaper than Normal objects)."""
    u = (z - loc) / scale
    return (-0.5 * u.square() - scale.log() - _HALF_LOG_2PI).sum(-1)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    return (-0.5 * z.square() - _HALF_LOG_2PI).sum(-1)


def bernoulli_log_prob(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x|z) = Σ_d x_d log s_d + (1 − x_d) log(1 − s_d), s = sigmoid(logits); x may be in [0, 1]."""
    x = x.expand_as(logits)
    return -binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)


def gaussian_kl(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, 1)) = ½ Σ (μ² + σ² − 1 − log σ²), per data point."""
    return 0.5 * (loc.square() + scale.square() - 1.0 - 2.0 * scale.log()).sum(-1)


class VAE(nn.Module):
    """An encoder q_φ(z|x) and a decoder p_θ(x|z) with the standard normal prior p(z)."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: int):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent = int(latent)

    @classmethod
    def mlp(cls, dim: int, hidden: Sequence[int], latent: int, generator: torch.Generator) -> VAE:
        """The classic MLP VAE, D-H…-L encoder and L-…H-D decoder, initialised from ``generator``."""
        return cls(
            GaussianEncoder(dim, hidden, latent, generator),
            BernoulliDecoder(latent, hidden, dim, generator),
            latent,
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(z) + log p_θ(x|z) for z [K, B, L] and x [B, D]: [K, B]."""
        return standard_normal_log_prob(z) + bernoulli_log_prob(x, self.decoder(z))

    def log_weights(
        self, x: torch.Tensor, z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor
    ) -> torch.Tensor:
        """log w = log p(z) + log p_θ(x|z) − log q(z; μ, σ): [K, B]."""
        return self.log_joint(x, z) - normal_log_prob(z, loc, scale)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Bernoulli means of p(x|z = μ_φ(x))."""
        loc, _ = self.encode(x)
        return torch.sigmoid(self.decoder(loc))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Bernoulli means of p(x|z) for n draws z ~ p(z)."""
        p = next(self.decoder.parameters())
        z = torch.randn(n, self.latent, generator=generator, device=p.device, dtype=p.dtype)
        return torch.sigmoid(self.decoder(z))


# ── binary latents: the sigmoid belief network VAE ─────────────────────────────────────────


def tanh_mlp(sizes: Sequence[int], generator: torch.Generator) -> nn.Sequential:
    """Linear layers with tanh between them (none after the last): one Linear for two sizes."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(linear(a, b, generator))
        if i < len(sizes) - 2:
            layers.append(nn.Tanh())
    return nn.Sequential(*layers)


def bernoulli_latent_log_prob(b: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log Π_l Bernoulli(b_l; σ(a_l)) = Σ_l b_l a_l − softplus(a_l); b may be relaxed, in [0, 1]."""
    return (b * logits - torch.nn.functional.softplus(logits)).sum(-1)


def bernoulli_kl(logits: torch.Tensor, prior_logits: torch.Tensor) -> torch.Tensor:
    """KL(Π Bernoulli(σ(ℓ)) ‖ Π Bernoulli(σ(a))) = Σ_l q_l (ℓ_l − a_l) + softplus(a_l) − softplus(ℓ_l),
    q = σ(ℓ): per data point."""
    softplus = torch.nn.functional.softplus
    q = torch.sigmoid(logits)
    return (q * (logits - prior_logits) + softplus(prior_logits) - softplus(logits)).sum(-1)


class SigmoidBeliefVAE(nn.Module):
    r"""A VAE with binary latents (one stochastic layer: a sigmoid belief network).

        q_φ(b|x) = Π_l Bernoulli(b_l; σ(ℓ_φ(x)_l))        encoder(x) -> logits ℓ [B, L]
        p_a(b)   = Π_l Bernoulli(b_l; σ(a_l))              a = ``prior_logits`` [L], learned
        p_θ(x|b) = Π_d Bernoulli(x_d; σ(decoder(b)_d))      decoder(b) -> logits [..., D]
        log w(x, b) = log p_a(b) + log p_θ(x|b) − log q_φ(b|x)

    The prior's logits are learned, as the bias of the top layer of the SBNs of Tucker et al.
    (2017, REBAR) and the works that follow them (RELAX, ARM, DisARM); they start at 0 (p = ½).
    ``build`` gives their two architectures: ``linear`` (encoder and decoder one affine map each,
    D-L and L-D) and ``nonlinear`` (two deterministic tanh layers between, D-200-200-L and
    L-200-200-D). The decoder must accept leading sample dimensions ``[K, B, L] -> [K, B, D]``
    and relaxed inputs in [0, 1]^L (REBAR, RELAX and Gumbel straight-through evaluate it there).
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent = int(latent)
        self.prior_logits = nn.Parameter(torch.zeros(self.latent))

    @classmethod
    def build(cls, dim: int, hidden: Sequence[int], latent: int, generator: torch.Generator
              ) -> SigmoidBeliefVAE:
        """Linear maps (``hidden`` empty) or tanh MLPs D-H…-L and L-…H-D, initialised from ``generator``."""
        return cls(tanh_mlp([dim, *hidden, latent], generator),
                   tanh_mlp([latent, *reversed(hidden), dim], generator), latent)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The logits ℓ_φ(x) of q(b|x), [B, L]."""
        return self.encoder(x)

    def log_prior(self, b: torch.Tensor) -> torch.Tensor:
        return bernoulli_latent_log_prob(b, self.prior_logits)

    def log_joint(self, x: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """log p_a(b) + log p_θ(x|b) for b [K, B, L] and x [B, D]: [K, B]."""
        return self.log_prior(b) + bernoulli_log_prob(x, self.decoder(b))

    def log_weights(self, x: torch.Tensor, b: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """log w = log p(b) + log p_θ(x|b) − log q(b; ℓ): [K, B]."""
        return self.log_joint(x, b) - bernoulli_latent_log_prob(b, logits)

    def kl(self, logits: torch.Tensor) -> torch.Tensor:
        """KL(q_φ(b|x) ‖ p_a(b)) in closed form, per data point."""
        return bernoulli_kl(logits, self.prior_logits)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Bernoulli means of p(x|b) at the posterior's mode b = 1[σ(ℓ_φ(x)) > ½]."""
        return torch.sigmoid(self.decoder((self.encode(x) > 0).to(x.dtype)))

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Bernoulli means of p(x|b) for n draws b ~ p(b)."""
        a = self.prior_logits
        u = torch.rand(n, self.latent, generator=generator, device=a.device, dtype=a.dtype)
        return torch.sigmoid(self.decoder((u < torch.sigmoid(a)).to(a.dtype)))
