"""Explicit randomness: every random draw in gradest comes from a caller's `torch.Generator`.

`torch.distributions` samples from the global generator and takes no `generator=` argument. To
keep families, implicit reparameterization (Gamma, Beta, Dirichlet) and user distributions
working unchanged, `draw` forks the global RNG state, seeds it from the caller's generator, runs
the sampler, and restores the global state: the caller's generator alone decides the numbers,
and the global RNG is left exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

T = TypeVar("T")

_SEED_HIGH = 2**62


def make_generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A fresh generator seeded with `seed` (the only way gradest turns a seed into randomness)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return gen


def draw(generator: torch.Generator, sampler: Callable[[], T]) -> T:
    """Run `sampler()` with the global RNG temporarily seeded from `generator`.

    Args:
        generator: the source of randomness; advanced by one draw per call.
        sampler: a zero-argument callable that samples with the global RNG.
    """
    if not isinstance(generator, torch.Generator):
        raise TypeError(
            f"expected a torch.Generator, got {type(generator).__name__}; "
            "create one with gradest.make_generator(seed)"
        )
    seed = int(torch.randint(_SEED_HIGH, (1,), generator=generator, device=generator.device))
    device = generator.device
    on_cuda = device.type == "cuda"
    devices = [device.index or 0] if on_cuda else []
    with torch.random.fork_rng(devices=devices, device_type="cuda" if on_cuda else None):
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        else:
            torch.default_generator.manual_seed(seed)
        return sampler()
