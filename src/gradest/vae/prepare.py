r"""A run's data and model, made from its config: split, binarized, initialised, checked to fit.

Everything comes from the setup generator (``seed + STREAM_SETUP``), so the same config gives the
same train/test split, fixed binarization and initial weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from gradest.device import resolve_device
from gradest.errors import GradestError
from gradest.rng import make_generator
from gradest.vae.config import STREAM_SETUP, TrainConfig, check_memory
from gradest.vae.data import ImageData, binarize, load_images
from gradest.vae.model import VAE, SigmoidBeliefVAE


class Setup(NamedTuple):
    """A run's data (on the device), fixed batches and freshly initialised model."""

    data: ImageData
    train: torch.Tensor
    test: torch.Tensor
    var_batch: torch.Tensor
    model: VAE


def setup(config: TrainConfig, model: VAE | None = None) -> Setup:
    """Load and split the data, binarize the fixed parts, build the model (all from the seed)."""
    device = resolve_device(config.device)
    gen = make_generator(config.seed + STREAM_SETUP)
    data = load_images(config.dataset, gen)
    train, test = data.train, data.test
    if config.binarize != "none":
        # The test set is binarized once even with dynamic binarization: comparable test figures.
        test = binarize(test, gen)
        train = binarize(train, gen) if config.binarize == "fixed" else train
    var_batch = train[: config.var_batch]
    if config.binarize == "dynamic":
        var_batch = binarize(var_batch, gen)
    if model is None:
        check_memory(config, data.dim)
    if model is None and config.latent_dist == "bernoulli":
        model = SigmoidBeliefVAE.build(data.dim, config.hidden, config.latent, gen)
    if model is None:
        model = VAE.mlp(data.dim, config.hidden, config.latent, gen)
    model = model.to(device)
    # Images follow the model's precision (float32 by default; a float64 model gets float64 data).
    dtype = next(model.parameters()).dtype
    _check_shapes(model, train[:2].to(device, dtype), config.dataset)
    return Setup(data, train.to(device, dtype), test.to(device, dtype), var_batch.to(device, dtype), model)



def _check_shapes(model: VAE, x: torch.Tensor, dataset: str) -> None:
    """A user's encoder/decoder that does not fit the data fails here, with the shapes it must have."""
    b, d, latent = x.shape[0], x.shape[1], model.latent
    need = (
        f"{dataset} images have D = {d} pixels: the encoder must map [B, {d}] to (μ, σ), each "
        f"[B, {latent}] (latent = {latent}), and the decoder [B, {latent}] to logits [B, {d}]"
    )
    # Eval mode: a probe must not move batch-norm statistics or draw dropout masks.
    was_training = model.training
    try:
        with torch.no_grad():
            model.eval()
            if isinstance(model, SigmoidBeliefVAE):  # one output, the logits of q(b|x)
                loc = scale = model.encode(x)
            else:
                loc, scale = model.encode(x)
            logits = model.decoder(loc)
    except (RuntimeError, ValueError, TypeError) as err:
        raise GradestError(f"the model does not fit the data ({str(err).splitlines()[0]}); {need}") from None
    finally:
        model.train(was_training)
    got = [tuple(loc.shape), tuple(scale.shape), tuple(logits.shape)]
    if got != [(b, latent), (b, latent), (b, d)]:
        raise GradestError(f"the model gives μ, σ, logits of shapes {got}; {need}")
