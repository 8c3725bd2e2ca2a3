r"""Variational autoencoders trained with the gradient estimator of your choice.

    −ELBO(x) = −E_{q_φ(z|x)}[log p_θ(x|z)] + KL(q_φ(z|x) ‖ p(z)),   IWAE_K = E[log (1/K) Σ_k w_k]

Reuse it with your own networks::

    import gradest
    from gradest.vae import VAE, TrainConfig, train_vae

    model = VAE(my_encoder, my_decoder, latent=20)      # encoder(x) -> (μ, σ); decoder(z) -> logits
    result = train_vae(TrainConfig(estimator="iwae-dreg", k=5, epochs=10), "runs/dreg", model=model)

``train_vae`` is :func:`gradest.vae.train.train`, named so that the module ``gradest.vae.train`` stays
reachable as ``gradest.vae.train``.

or one step at a time: ``OBJECTIVES["vimco"].fn(model, x, k, generator, None).loss.backward()``.
"""

from gradest.vae.catalog import get_objective
from gradest.vae.config import TrainConfig
from gradest.vae.data import ImageData, load_images, read_idx
from gradest.vae.evaluate import Evaluation, evaluate
from gradest.vae.files import load_run, read_metrics
from gradest.vae.model import VAE, BernoulliDecoder, GaussianEncoder
from gradest.vae.objectives import OBJECTIVES, Estimate, Objective
from gradest.vae.train import NonFiniteLoss, TrainResult
from gradest.vae.train import train as train_vae  # not `train`: that name is the module gradest.vae.train
from gradest.vae.variance import GradientVariance, encoder_gradient_variance, repeat_gradients

__all__ = [
    "OBJECTIVES",
    "VAE",
    "BernoulliDecoder",
    "Estimate",
    "Evaluation",
    "GaussianEncoder",
    "GradientVariance",
    "ImageData",
    "NonFiniteLoss",
    "Objective",
    "TrainConfig",
    "TrainResult",
    "encoder_gradient_variance",
    "evaluate",
    "get_objective",
    "load_images",
    "load_run",
    "read_idx",
    "read_metrics",
    "repeat_gradients",
    "train_vae",
]
