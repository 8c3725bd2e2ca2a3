"""Snapshot restores training state into the same objects; the global RNGs come back as they were."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np
import torch

import gradest
from gradest.rng import make_generator
from gradest.snapshot import Snapshot, global_rngs_forked


@dataclass(frozen=True)
class Frozen:
    values: list = field(default_factory=list)


def test_values_come_back_into_the_same_objects():
    est = gradest.get_estimator("score-ema")
    baseline = est.baseline  # a reference the training code might hold
    est.baseline(torch.tensor([1.0, 3.0]))
    weight = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([weight], lr=0.1)
    weight.sum().backward()
    opt.step()
    gen = make_generator(0)
    frozen = Frozen([1, torch.zeros(2)])
    snap = Snapshot([est, weight, opt, gen, frozen])
    before = (vars(baseline).copy(), weight.detach().clone(), torch.randn(2, generator=make_generator(0)))

    est.baseline(torch.tensor([10.0]))
    with torch.no_grad():
        weight.add_(1.0)
    weight.sum().backward()
    opt.step()
    torch.randn(5, generator=gen)
    frozen.values.append("new")
    frozen.values[1].add_(1.0)
    snap.restore()

    assert est.baseline is baseline and vars(baseline) == before[0]
    assert torch.equal(weight, before[1])
    assert torch.equal(torch.randn(2, generator=gen), before[2])
    assert len(frozen.values) == 2 and torch.equal(frozen.values[1], torch.zeros(2))
    assert opt.state_dict()["state"][0]["step"] == 1


def test_global_rngs_are_restored_and_seeded_inside():
    state = torch.get_rng_state()
    py, legacy = random.getstate(), np.random.get_state()  # noqa: NPY002
    with global_rngs_forked(5):
        inside = torch.rand(3)
        random.random()
        np.random.rand()  # noqa: NPY002
    with global_rngs_forked(5):
        assert torch.equal(torch.rand(3), inside)
    assert torch.equal(torch.get_rng_state(), state)
    assert random.getstate() == py
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), legacy, strict=True))  # noqa: NPY002
