"""The gradient monitor's measurement against its floor: R plain forward + backward passes.

Model: a 784-400-20 MLP VAE (Gaussian encoder, Bernoulli decoder, tanh hidden layers), −ELBO by
the pathwise estimator (one z per image), a batch of 128 binary images, R = 16 repeats.

* floor:   R calls of ``loss_fn(batch, generator)`` and R ``autograd.grad`` — what any measurement
           of R independent gradients costs when done one by one (no statistics);
* loop:    ``GradientMonitor(..., mode="loop").measure`` (R passes, then the statistics);
* batched: ``GradientMonitor(...).measure`` with the default ``mode="auto"`` (one vmapped pass over
           the R repeats, verified against the loop on its first call);
* repeats: the user's ``repeats=`` form through ``mode="batched"`` (one forward of [R] losses, one
           batched vector–Jacobian product) for reference;
* stats:   the statistics alone (every group's variance, standard error, SNR) on R estimates.

Each round times every line once, in rotating order; the median of the rounds counts (and the
spread, min–max, is printed). Goal: batched ≤ 1.0× the floor. One thread unless --threads.

Run: .venv/bin/python benchmarks/bench_monitor.py [--rounds 7] [--repeats 16] [--threads 1]
     [--dtype float32] [--hidden 400] [--latent 20] [--batch 128]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from gradest.monitor import GradientMonitor
from gradest.monitor.groups import parameter_groups
from gradest.rng import make_generator
from gradest.stats import gradient_sums, statistics_of


class VAE(nn.Module):
    def __init__(self, data: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(data, hidden), nn.Tanh(), nn.Linear(hidden, 2 * latent))
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.Tanh(), nn.Linear(hidden, data))


def vae_loss(model: VAE) -> Callable[..., torch.Tensor]:
    """−ELBO per image, pathwise; with ``repeats``: [R] losses, each repeat's noise drawn in turn."""

    def loss_fn(x: torch.Tensor, generator: torch.Generator, repeats: int | None = None) -> torch.Tensor:
        loc, log_scale = model.encoder(x).chunk(2, -1)
        scale = log_scale.exp()
        if repeats is None:
            eps = torch.randn(loc.shape, generator=generator, dtype=loc.dtype)
        else:
            eps = torch.stack([torch.randn(loc.shape, generator=generator, dtype=loc.dtype)
                               for _ in range(repeats)])
        z = loc + scale * eps
        logits = model.decoder(z)
        nll = nn.functional.binary_cross_entropy_with_logits(logits, x.expand_as(logits),
                                                             reduction="none").sum(-1)
        kl = 0.5 * (loc.square() + scale.square() - 1 - 2 * log_scale).sum(-1)
        return (nll + kl).mean(-1)

    return loss_fn


def loop_form(loss: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    return lambda x, generator: loss(x, generator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--hidden", type=int, default=400)
    parser.add_argument("--latent", type=int, default=20)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    model = VAE(784, args.hidden, args.latent).to(dtype)
    x = (torch.rand(args.batch, 784, generator=make_generator(1)) < 0.3).to(dtype)
    loss = vae_loss(model)
    params = list(model.parameters())
    R = args.repeats

    def floor() -> None:
        g = make_generator(2)
        for _ in range(R):
            torch.autograd.grad(loss(x, g), params)

    loop = GradientMonitor(model, loop_form(loss), repeats=R, seed=3, mode="loop")
    auto = GradientMonitor(model, loop_form(loss), repeats=R, seed=3)
    repeats = GradientMonitor(model, loss, repeats=R, seed=3, mode="batched")
    groups = parameter_groups(model)
    estimates = {n: torch.randn(R, *p.shape, generator=make_generator(4), dtype=dtype)
                 for n, p in groups["all"].items()}

    def stats() -> None:
        parts = {n: gradient_sums(g.reshape(R, -1), None) for n, g in estimates.items()}
        for members in groups.values():
            statistics_of([parts[n] for n in members])

    lines: dict[str, Callable[[], object]] = {
        "floor": floor,
        "loop": lambda: loop.measure(0, x),
        "batched": lambda: auto.measure(0, x),
        "repeats": lambda: repeats.measure(0, x),
        "stats": stats,
    }
    for fn in lines.values():  # warm-up; the batched line's first call verifies it against the loop
        fn()
    times: dict[str, list[float]] = {name: [] for name in lines}
    names = list(lines)
    for round_ in range(args.rounds):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            start = time.perf_counter()
            lines[name]()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"monitor: {args.hidden}-{args.latent} MLP VAE, batch {args.batch}, R = {R}, {args.dtype}, "
          f"{torch.get_num_threads()} thread(s), {args.rounds} rounds (median, min–max)")
    print(f"  path of the batched line: {auto.records[-1].path}")
    for name, t in times.items():
        ratio = median[name] / median["floor"]
        print(f"  {name:<8} {median[name] * 1e3:8.1f} ms ({min(t) * 1e3:.1f}–{max(t) * 1e3:.1f})  "
              f"{ratio:5.2f}× floor")
    print(f"  batched / loop: {median['batched'] / median['loop']:.2f}   goal: batched ≤ 1.00× floor: "
          f"{'met' if median['batched'] <= median['floor'] else 'NOT met'}")


if __name__ == "__main__":
    main()
