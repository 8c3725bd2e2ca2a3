"""The VAE objectives by name, for either latent family: ``get_objective(name, k, latent_dist)``.

Gaussian latents (:mod:`gradest.vae.objectives`: pathwise, stl, score, score-loo, iwae, iwae-dreg,
vimco) and binary ones (:mod:`gradest.vae.bernoulli`: score-loo, vimco, gumbel-st, rebar, relax,
arm, disarm); the binary module builds on the Gaussian one, and this room, above both, chooses.
"""

from __future__ import annotations

from gradest.errors import GradestError
from gradest.vae.bernoulli import binary_objective
from gradest.vae.objectives import Objective, gaussian_objective

LATENT_DISTS = ("gaussian", "bernoulli")


def get_objective(name: str, k: int, latent_dist: str = "gaussian") -> Objective:
    """The objective ``name`` for the latents ``latent_dist``, checked to accept ``k`` samples per image."""
    if latent_dist not in LATENT_DISTS:
        raise GradestError(f"--latent-dist must be one of {', '.join(LATENT_DISTS)}, got {latent_dist!r}")
    if latent_dist == "bernoulli":
        return binary_objective(name, k)
    return gaussian_objective(name, k)
