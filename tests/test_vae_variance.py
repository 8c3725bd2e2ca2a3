"""The batched gradient estimates (encoder and decoder) equal R separate backward passes on the same noise."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from gradest import rng
from gradest.estimators.baselines import MovingAverage
from gradest.rng import make_generator
from gradest.vae.model import VAE
from gradest.vae.objectives import OBJECTIVES
from gradest.vae.variance import encoder_gradient_variance, encoder_gradients, repeat_gradients

B, D, L, R = 5, 12, 3, 3


def loop_gradients(model, objective, x, k, repeats, generator, baseline=None, params=None) -> torch.Tensor:
    """The previous implementation: one objective call and one backward pass per repeat, [R, P]."""
    params = [p for p in model.encoder.parameters() if p.requires_grad] if params is None else params
    flat = []
    for _ in range(repeats):
        est = objective.fn(model, x, k, generator, copy.deepcopy(baseline))
        grads = torch.autograd.grad(est.loss, params)
        flat.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(flat)


@pytest.mark.parametrize(
    ("name", "k"),
    [("pathwise", 2), ("stl", 2), ("score", 2), ("score-loo", 3), ("iwae", 3), ("iwae-dreg", 3),
     ("vimco", 3)],
)
def test_batched_gradients_equal_the_loop_of_backward_passes(name: str, k: int, monkeypatch) -> None:
    """Same ε: the batched call draws ε [K, R, B, L] at once; the loop is fed its slices ε[:, r]."""
    model = VAE.mlp(D, (8,), L, make_generator(0)).double()
    x = torch.rand(B, D, generator=make_generator(1), dtype=torch.float64)
    objective = OBJECTIVES[name]
    baseline = None
    if objective.uses_baseline:
        baseline = MovingAverage(0.9)
        baseline(torch.tensor([-30.0, -50.0], dtype=torch.float64))  # b ≠ 0: every repeat sees it
    draws = []
    real = rng.normal

    def recorded(shape, generator, like):
        draws.append(real(shape, generator, like))
        return draws[-1]

    monkeypatch.setattr(rng, "normal", recorded)
    batched = encoder_gradients(model, objective, x, k, R, make_generator(2), baseline)
    assert [tuple(e.shape) for e in draws] == [(k, R, B, L)]
    slices = [draws[0][:, r] for r in range(R)]
    monkeypatch.setattr(rng, "normal", lambda shape, generator, like: slices.pop(0))
    looped = loop_gradients(model, objective, x, k, R, make_generator(2), baseline)
    assert not slices
    assert batched.shape == looped.shape == (R, sum(p.numel() for p in model.encoder.parameters()))
    assert torch.allclose(batched, looped, rtol=1e-12, atol=1e-12 * float(looped.abs().max()))
    assert not torch.equal(batched[0], batched[1])  # the repeats are independent draws, not copies

    # every parameter, the decoder's too (one batched draw again, the loop fed its slices)
    draws.clear()
    monkeypatch.setattr(rng, "normal", recorded)
    every = repeat_gradients(model, objective, x, k, R, make_generator(2), baseline)
    assert list(every) == [n for n, _ in model.named_parameters()]
    slices = [draws[0][:, r] for r in range(R)]
    monkeypatch.setattr(rng, "normal", lambda shape, generator, like: slices.pop(0))
    looped = loop_gradients(model, objective, x, k, R, make_generator(2), baseline, list(model.parameters()))
    flat = torch.cat([g.reshape(R, -1) for g in every.values()], 1)
    assert torch.allclose(flat, looped, rtol=1e-12, atol=1e-12 * float(looped.abs().max()))
    assert torch.equal(torch.cat([every[n].reshape(R, -1) for n, _ in model.encoder.named_parameters(
        prefix="encoder")], 1), batched)  # the encoder's part is encoder_gradients' bit for bit


def test_variance_leaves_the_callers_baseline_and_graph_alone() -> None:
    model = VAE.mlp(D, (8,), L, make_generator(0))
    x = torch.rand(B, D, generator=make_generator(1))
    baseline = MovingAverage(0.9)
    baseline(torch.tensor([-3.0]))
    before = copy.deepcopy(baseline)
    gv = encoder_gradient_variance(model, OBJECTIVES["score"], x, 2, 4, make_generator(3), baseline)
    assert baseline == before
    assert all(p.grad is None for p in model.parameters())
    assert gv.trace > 0 and math.isfinite(gv.snr)
    repeat_gradients(model, OBJECTIVES["score"], x, 2, 4, make_generator(3), baseline)
    assert baseline == before and all(p.grad is None for p in model.parameters())
    assert model.decoder.__class__.__name__ == "BernoulliDecoder"  # the wrapper was the probe's alone
