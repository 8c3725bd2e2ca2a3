"""Watch the gradient variance of your own model while it trains: a VAE written from scratch.

A variational autoencoder on scikit-learn's 8 × 8 digits (binarized, 1797 images), trained twice —
with the pathwise (reparameterization) estimator and with the score function with a leave-one-out
baseline — while :class:`gradest.monitor.GradientMonitor` measures, every ``--every`` steps, R
independent gradient estimates on one fixed batch: the variance (trace of the covariance) and SNR of
the encoder's, the decoder's and all gradients. The monitor leaves both training runs exactly as
they would be without it.

    Loss = −ELBO = E_{q(z|x)}[−log p(x|z)] + KL(q(z|x) ‖ N(0, I)), averaged over the images,

with q(z|x) = N(μ(x), diag σ(x)²), p(x|z) Bernoulli, the expectation and its gradient from
``estimator.surrogate`` (K samples of z per image), the KL term analytic.

    python examples/monitor_vae.py OUT [--epochs 2] [--every 20] [--repeats 16]

Writes OUT/monitor.jsonl (one JSON line per measurement and parameter group; replaced on each run),
OUT/monitor.png (variance and SNR against the step, both estimators) and OUT/summary.json (the last
measurement per estimator and group, and the monitor's share of the training time).
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import torch
from torch import nn
from torch.distributions import Independent, Normal

import gradest
from gradest.monitor import GradientMonitor, plot, read_jsonl

ESTIMATORS = ("pathwise", "score-loo")


def mlp(sizes: list[int], generator: torch.Generator) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        linear = nn.Linear(a, b)
        with torch.no_grad():  # initialised from the run's generator, not the global RNG
            linear.weight.copy_(torch.randn(b, a, generator=generator) / math.sqrt(a))
            linear.bias.zero_()
        layers += [linear, nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class VAE(nn.Module):
    def __init__(self, dim: int, hidden: int, latent: int, generator: torch.Generator) -> None:
        super().__init__()
        self.encoder = mlp([dim, hidden, 2 * latent], generator)
        self.decoder = mlp([latent, hidden, dim], generator)

    def negative_elbo(self, x: torch.Tensor, estimator: gradest.Estimator, k: int,
                      generator: torch.Generator) -> torch.Tensor:
        """−ELBO per image, averaged; its gradient in the encoder comes from ``estimator``."""
        loc, log_scale = self.encoder(x).chunk(2, -1)

        def reconstruction(z: torch.Tensor) -> torch.Tensor:  # z [K, B, L] -> −log p(x|z), [K, B]
            logits = self.decoder(z)
            return nn.functional.binary_cross_entropy_with_logits(
                logits, x.expand_as(logits), reduction="none").sum(-1)

        def q(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
            return Independent(Normal(loc, scale), 1)

        nll = estimator.surrogate(reconstruction, q, {"loc": loc, "scale": log_scale.exp()}, k, generator,
                                  reduction="mean")
        kl = 0.5 * (torch.exp(2 * log_scale) + loc**2 - 1.0 - 2.0 * log_scale).sum(-1)
        return nll + kl.mean()


def load_digits_binary() -> torch.Tensor:
    from sklearn.datasets import load_digits

    return torch.tensor(load_digits().data / 16.0 > 0.5, dtype=torch.get_default_dtype())


def train(name: str, images: torch.Tensor, args: argparse.Namespace, jsonl: Path) -> dict:
    """One training run with the monitor; returns its last records and the monitor's overhead."""
    gen = gradest.make_generator(args.seed)
    model = VAE(images.shape[1], args.hidden, args.latent, gen)
    est = gradest.get_estimator(name)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    probe = images[torch.randperm(len(images), generator=gradest.make_generator(args.seed + 1))[: args.batch]]

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return model.negative_elbo(batch, est, args.k, generator)

    tensorboard = None if args.tensorboard is None else Path(args.tensorboard) / name
    monitor = GradientMonitor(model, loss_fn, every=args.every, repeats=args.repeats, batch=probe,
                              state=[est], seed=args.seed + 2, jsonl=jsonl, tags={"estimator": name},
                              tensorboard=tensorboard)
    step, start = 0, time.perf_counter()
    with monitor:
        for _ in range(args.epochs):
            order = torch.randperm(len(images), generator=gen)
            for i in range(0, len(images), args.batch):
                batch = images[order[i: i + args.batch]]
                monitor.step(step, batch)  # measures every --every steps on the fixed probe batch
                opt.zero_grad()
                loss = loss_fn(batch, gen)
                loss.backward()
                opt.step()
                step += 1
        monitor.step(step)  # a last measurement (if due) and the end of the timed span
    overhead = monitor.overhead()
    last = {r.group: r.to_json() for r in monitor.records if r.step == monitor.records[-1].step}
    return {"steps": step, "final_loss": float(loss.detach()), "seconds": time.perf_counter() - start,
            "monitor_seconds": overhead.monitor_seconds, "monitor_share": overhead.share, "last": last}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="output folder")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--latent", type=int, default=8)
    parser.add_argument("--k", type=int, default=4, help="samples of z per image (score-loo needs ≥ 2)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--every", type=int, default=20, help="measure every this many steps")
    parser.add_argument("--repeats", type=int, default=16, help="gradient estimates per measurement")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    parser.add_argument("--tensorboard", type=Path, default=None, help="also write TensorBoard scalars here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    images = load_digits_binary()[: args.limit]
    args.out.mkdir(parents=True, exist_ok=True)
    jsonl = args.out / "monitor.jsonl"
    jsonl.unlink(missing_ok=True)  # the monitor appends; start this run's file afresh
    summary = {name: train(name, images, args, jsonl) for name in ESTIMATORS}
    plot(read_jsonl(jsonl), args.out / "monitor.png", series=("estimator",),
         title=f"VAE on digits: gradient variance while training (R = {args.repeats})")
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")

    print(f"{'estimator':10s} {'group':8s} {'variance':>11s} {'± s.e.':>10s} {'SNR':>7s}   monitor share")
    for name, run in summary.items():
        for group, r in run["last"].items():
            print(f"{name:10s} {group:8s} {r['variance']:11.4g} {r['variance_stderr']:10.2g} "
                  f"{r['snr']:7.3f}   {run['monitor_share']:.0%} of {run['seconds']:.1f} s")
    print(f"wrote {jsonl}, {args.out / 'monitor.png'}, {args.out / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
