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

pathwise, stl, score and score-loo are the core estimators of :mod:`gradest.estimators` applied to
the stochastic node q = Independent(Normal(μ, σ), 1) (batch: the images, event: the latent) with a
per-image cost f(z) = log p_θ(x|z) ``[K, B]`` that closes over the decoder (stl: f(z, μ, σ) = log w
with log q evaluated at detached μ, σ, so that only the path through z reaches φ). The core
estimators give each image its own learning signal and the decoder ∇_θ E f. iwae, iwae-dreg and
vimco need the K samples of an image together and stay written out here; all seven draw z from the
generator the same way (:func:`gradest.rng.sample`: ε ``[K, *batch, L]``, z = μ + σ ε).

Every gradient is unbiased for the gradient of its bound (ELBO for pathwise, stl, score, score-loo;
IWAE_K for iwae, iwae-dreg, vimco), in encoder and decoder parameters alike. The loss is the mean
over the batch of the negative surrogate (nats per image); its *value* is the negative bound's
estimate except for iwae-dreg and vimco, so every objective also returns the detached per-image
ELBO and bound.

Each objective comes in two forms: ``fn(model, x, k, generator, baseline)`` encodes x and calls
``from_encoding(model, x, loc, scale, k, generator, baseline)``, which takes the encoder's outputs
(μ, σ) ``[*batch, L]``. The batch may have leading axes beyond the images' (``[R, B, L]`` against
x ``[B, D]``: R independent repeats, see :mod:`gradest.vae.variance`); the loss is then the mean
over all of them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch.distributions import Independent, Normal

from gradest import rng
from gradest.errors import GradestError
from gradest.estimators.baselines import LeaveOneOut, MovingAverage
from gradest.estimators.pathwise import Pathwise
from gradest.estimators.score import ScoreFunction
from gradest.vae.model import VAE, bernoulli_log_prob, gaussian_kl, normal_log_prob


class Estimate(NamedTuple):
    """loss: scalar to minimise; elbo, bound: detached per-image estimates [B] (nats)."""

    loss: torch.Tensor
    elbo: torch.Tensor
    bound: torch.Tensor


ObjectiveFn = Callable[[VAE, torch.Tensor, int, torch.Generator, "MovingAverage | None"], Estimate]
#: (model, x [B, D], loc [*batch, L], scale [*batch, L], k, generator, baseline) -> Estimate
FromEncodingFn = Callable[
    [VAE, torch.Tensor, torch.Tensor, torch.Tensor, int, torch.Generator, "MovingAverage | None"], Estimate
]


class Objective(NamedTuple):
    fn: ObjectiveFn  # encode x, then from_encoding
    from_encoding: FromEncodingFn  # the objective given the encoder's outputs (μ, σ; binary latents: ℓ)
    bound: str  # "elbo" or "iwae": the bound whose gradient the estimator is unbiased for
    min_k: int
    uses_baseline: bool
    summary: str
    #: the run's estimator state, made once per run and passed where the baseline goes (binary latents,
    #: :mod:`gradest.vae.bernoulli`); None: the moving-average baseline or nothing
    make_state: Callable[[], Any] | None = None


def posterior(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    """q_φ(z|x) = N(μ, diag σ²): batch shape ``loc.shape[:-1]``, event shape [L]."""
    # No argument validation: it would check σ > 0 on every step (σ = exp(·) is positive).
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


def _draw(loc, scale, k, generator, reparameterized):
    """z ~ q ``[K, *batch, L]``, the noise straight from the generator (as the core draws it)."""
    return rng.sample(posterior(loc, scale), (k,), generator, reparameterized)


def _iwae(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/K) Σ_k w_k over the sample axis 0."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def _core_elbo(estimator, model, x, loc, scale, k, generator) -> Estimate:
    """ELBO = E_q[log p_θ(x|z)] − KL(q‖p): the core estimator for the expectation, the KL in closed form."""
    seen = []

    def log_likelihood(z):
        out = bernoulli_log_prob(x, model.decoder(z))  # [K, *batch]: one cost per image
        seen.append(out.detach())
        return out

    expected = estimator.surrogate(
        log_likelihood, posterior, {"loc": loc, "scale": scale}, k, generator, reduction="mean"
    )
    kl = gaussian_kl(loc, scale)
    elbo = seen[0].mean(0) - kl.detach()
    return Estimate(kl.mean() - expected, elbo, elbo)


_PATHWISE = Pathwise()
_SCORE_LOO = ScoreFunction(LeaveOneOut(), name="score-loo")


def pathwise(model, x, loc, scale, k, generator, baseline=None) -> Estimate:
    """−ELBO with the reparameterization trick and the Gaussian KL in closed form (Kingma & Welling)."""
    return _core_elbo(_PATHWISE, model, x, loc, scale, k, generator)


def stl(model, x, loc, scale, k, generator, baseline=None) -> Estimate:
    """−ELBO, reparameterized, with log q evaluated at detached (μ, σ): sticking the landing."""
    seen = []

    def log_weight(z, loc, scale):
        # Detached μ, σ in log q: the direct term ∂f/∂φ (the score term) is zero and only the path
        # through z reaches φ.
        out = model.log_joint(x, z) - normal_log_prob(z, loc.detach(), scale.detach())
        seen.append(out.detach())
        return out

    expected = _PATHWISE.surrogate(
        log_weight, posterior, {"loc": loc, "scale": scale}, k, generator, reduction="mean"
    )
    elbo = seen[0].mean(0)
    return Estimate(-expected, elbo, elbo)


def score(model, x, loc, scale, k, generator, baseline=None) -> Estimate:
    """−ELBO by REINFORCE in the encoder with a moving-average baseline (b = 0 without one).

    The baseline reads earlier batches only, then absorbs this one: b is independent of z. It is
    the caller's state (:func:`make_baseline`), so the estimator is built around it per call.
    """
    return _core_elbo(ScoreFunction(baseline), model, x, loc, scale, k, generator)


def score_loo(model, x, loc, scale, k, generator, baseline=None) -> Estimate:
    """−ELBO by REINFORCE with the leave-one-out baseline over the K samples of each image."""
    return _core_elbo(_SCORE_LOO, model, x, loc, scale, k, generator)


def iwae(model, x, loc, scale, k, generator, baseline=None) -> Estimate:
    """−IWAE_K bound, reparameterized."""
    z = _draw(loc, scale, k, generator, True)
    log_w = model.log_weights(x, z, loc, scale)
    bound = _iwae(log_w)
    return Estimate(-bound.mean(), log_w.detach().mean(0), bound.detach())


def iwae_dreg(model, x, loc, scale, k, generator, baseline=None) -> Estimate:
    """−IWAE_K with doubly reparameterized encoder gradients."""
    z = _draw(loc, scale, k, generator, True)
    # Detached μ, σ in log q: as in STL, φ is reached only through z.
    log_w = model.log_joint(x, z) - normal_log_prob(z, loc.detach(), scale.detach())
    weights = torch.softmax(log_w.detach(), 0)  # w̃_k, constants of the estimator
    # The surrogate Σ w̃_k log w_k gives θ its IWAE gradient Σ w̃_k ∇θ log w_k; the hook multiplies
    # what flows into z by w̃_k once more, so φ receives Σ w̃_k² ∂log w_k/∂z_k ∂z_k/∂φ.
    if z.requires_grad:
        z.register_hook(lambda grad: grad * weights.unsqueeze(-1))
    surrogate = (weights * log_w).sum(0)
    return Estimate(-surrogate.mean(), log_w.detach().mean(0), _iwae(log_w.detach()))


def vimco(model, x, loc, scale, k, generator, baseline=None) -> Estimate:
    """−IWAE_K with VIMCO's per-sample leave-one-out learning signals."""
    z = _draw(loc, scale, k, generator, False)  # no path from φ through z
    log_q = normal_log_prob(z, loc, scale)
    log_w = model.log_joint(x, z) - log_q
    return vimco_estimate(log_w, log_q)


def vimco_estimate(log_w: torch.Tensor, log_q: torch.Tensor) -> Estimate:
    """VIMCO's surrogate from log w ``[K, *batch]`` and log q(z_k) (live in φ, z detached)."""
    k = log_w.shape[0]
    lw = log_w.detach()
    bound = _iwae(lw)
    # L_{-j}: w_j replaced by the geometric mean of the other weights, for all j at once [K(j), K(i), *batch].
    others = (lw.sum(0, keepdim=True) - lw) / (k - 1)
    eye = torch.eye(k, dtype=torch.bool, device=lw.device).reshape(k, k, *[1] * (lw.dim() - 1))
    loo = _iwae(torch.where(eye, others.unsqueeze(1), lw.unsqueeze(0)).transpose(0, 1))
    signal = bound - loo  # [K, *batch], constants of the estimator
    # _iwae(log_w) at the detached z gives θ Σ w̃ ∇θ log p and φ −Σ w̃ ∇φ log q (the direct term).
    surrogate = (signal * log_q).sum(0) + _iwae(log_w)
    return Estimate(-surrogate.mean(), lw.mean(0), bound)


def _encode_then(from_encoding: FromEncodingFn, model, x, k, generator, baseline=None) -> Estimate:
    loc, scale = model.encode(x)
    return from_encoding(model, x, loc, scale, k, generator, baseline)


def _objective(from_encoding: FromEncodingFn, bound: str, min_k: int, uses_baseline: bool,
               summary: str) -> Objective:
    return Objective(functools.partial(_encode_then, from_encoding), from_encoding, bound, min_k,
                     uses_baseline, summary)


OBJECTIVES: dict[str, Objective] = {
    "pathwise": _objective(pathwise, "elbo", 1, False, "reparameterized ELBO, KL in closed form"),
    "stl": _objective(stl, "elbo", 1, False, "reparameterized ELBO, sticking the landing"),
    "iwae": _objective(iwae, "iwae", 1, False, "importance-weighted bound, reparameterized"),
    "iwae-dreg": _objective(iwae_dreg, "iwae", 1, False, "IWAE with doubly reparameterized gradients"),
    "score": _objective(score, "elbo", 1, True, "REINFORCE encoder, moving-average baseline"),
    "score-loo": _objective(score_loo, "elbo", 2, False, "REINFORCE encoder, leave-one-out over K ≥ 2"),
    "vimco": _objective(vimco, "iwae", 2, False, "VIMCO for the K-sample bound (K ≥ 2)"),
}


def gaussian_objective(name: str, k: int) -> Objective:
    """The Gaussian-latent objective ``name``, checked to accept ``k`` samples per image
    (:func:`gradest.vae.catalog.get_objective` chooses between the latent families)."""
    entry = OBJECTIVES.get(name)
    base, colon, k_text = name.partition(":")
    if entry is None and colon and base in OBJECTIVES:
        raise GradestError(
            f"--estimator {name}: write --estimator {base} --k {k_text} "
            "(NAME:K is the syntax of gradest vae compare)"
        )
    if entry is None and base.partition("=")[0] in _BINARY_ONLY:
        raise GradestError(
            f"--estimator {name} is for binary latents: add --latent-dist bernoulli (Gaussian latents: "
            f"{', '.join(OBJECTIVES)})"
        )
    if entry is None:
        raise GradestError(f"unknown --estimator {name!r}; choose one of: {', '.join(OBJECTIVES)}")
    if k < entry.min_k:
        raise GradestError(f"--estimator {name} needs --k ≥ {entry.min_k} samples per image, got {k}")
    return entry


ARCHES = ("linear", "nonlinear")


def check_architecture(latent_dist: str, arch: str | None, hidden: tuple[int, ...]) -> None:
    """--arch belongs to binary latents: linear (no hidden layers) or nonlinear (tanh hidden layers)."""
    if latent_dist != "bernoulli":
        if arch is not None:
            raise GradestError(f"--arch {arch} applies to --latent-dist bernoulli; the Gaussian VAE's "
                               "architecture is set by --hidden")
        return
    if arch not in ARCHES:
        raise GradestError(
            f"--arch must be one of {', '.join(ARCHES)} with --latent-dist bernoulli, got {arch!r}"
        )
    if arch == "linear" and hidden:
        raise GradestError(f"--arch linear has no hidden layers, got --hidden {list(hidden)}; drop --hidden "
                           "or use --arch nonlinear")
    if arch == "nonlinear" and not hidden:
        raise GradestError(
            "--arch nonlinear needs hidden layers (--hidden 200 --hidden 200, as in the papers)"
        )


def architecture_defaults(latent_dist: str, arch: str | None, hidden: tuple[int, ...] | None,
                          latent: int | None) -> tuple[str | None, tuple[int, ...], int]:
    """(arch, hidden, latent) with what was not given filled in: Gaussian 400 hidden, 20 latents;
    binary latents 200 latents, linear, or nonlinear with 200-200 tanh layers (REBAR's, ARM's, DisARM's)."""
    if latent_dist != "bernoulli":
        return arch, tuple(hidden or (400,)), 20 if latent is None else latent
    arch = arch or ("nonlinear" if hidden else "linear")
    default_hidden = (200, 200) if arch == "nonlinear" else ()
    return arch, tuple(hidden or default_hidden), 200 if latent is None else latent


_BINARY_ONLY = ("gumbel-st", "rebar", "relax", "arm", "disarm")


def make_baseline(objective: Objective, decay: float) -> Any:
    """The state the objective keeps across steps: a moving-average baseline, the binary-latent
    estimator (:class:`gradest.vae.bernoulli.LatentEstimator`), or None."""
    if objective.make_state is not None:
        return objective.make_state()
    return MovingAverage(decay) if objective.uses_baseline else None
