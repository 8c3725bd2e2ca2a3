"""Epoch time of `gradest.vae.train` against a plain hand-written PyTorch VAE loop, same model, same run.

    python benchmarks/bench_vae.py                 # timing: mnist5k, 784-400-20, batch 128, Adam 1e-3
    python benchmarks/bench_vae.py --quality 30    # also: both trained 30 epochs on the same random numbers

The plain loop is the classic PyTorch example (BCE on the Bernoulli logits, Gaussian KL in closed
form, summed over the batch), initialised from a generator. The two run side by side in one
process: gradest's real training loop (`gradest.vae.train`, the pathwise estimator of the core)
calls back after every epoch, and the callback trains the plain model one epoch, so plain and
gradest epochs alternate one to one and a busy machine slows both alike. Medians (and minima)
over all epochs are reported:

* train pass: gradest's `seconds` metric (the Adam steps of one epoch) against the plain loop's
  training pass: the ratio to keep ≤ 1.1 (also as the median of the per-epoch ratios of each
  gradest epoch to the plain epoch right after it, the figure least affected by other load);
* full epoch: gradest's wall time from the end of one epoch's callback to the next epoch's end
  (train pass, test −ELBO, metrics, atomic checkpoint) against the plain loop's train pass plus
  its test pass (the classic example's test(epoch)), with variance tracking off and on (R = 10
  encoder-gradient estimates, 128 images).

`--quality N` trains both N epochs from the same initial weights on the same random numbers
(shuffles and z) and evaluates both the same way: the figures differ only by float rounding.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits

from gradest.rng import make_generator
from gradest.vae.config import STREAM_DATA, STREAM_EVAL, STREAM_NOISE, TrainConfig
from gradest.vae.evaluate import evaluate
from gradest.vae.model import VAE, linear
from gradest.vae.prepare import setup
from gradest.vae.train import train


class PlainVAE(nn.Module):
    def __init__(self, gen: torch.Generator):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = linear(784, 400, gen), linear(400, 20, gen), linear(400, 20, gen)
        self.fc3, self.fc4 = linear(20, 400, gen), linear(400, 784, gen)

    def forward(self, x, gen):
        h = torch.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=gen)
        return self.fc4(torch.relu(self.fc3(z))), mu, logvar


def plain_epoch(model, opt, data, shuffle: torch.Generator, noise: torch.Generator) -> float:
    start = time.perf_counter()
    for idx in torch.randperm(data.shape[0], generator=shuffle).split(128):
        x = data[idx]
        logits, mu, logvar = model(x, noise)
        bce = binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        loss = bce + kld
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - start


@torch.no_grad()
def plain_test(model, test, noise: torch.Generator) -> float:
    """The classic example's test(epoch): the loss on the test set after every epoch."""
    start = time.perf_counter()
    model.eval()
    total = 0.0
    for x in test.split(1000):
        logits, mu, logvar = model(x, noise)
        bce = binary_cross_entropy_with_logits(logits, x, reduction="sum")
        total += float(bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp()))
    model.train()
    return time.perf_counter() - start


def copy_into_plain(model: VAE, plain: PlainVAE) -> PlainVAE:
    """gradest's VAE weights in the plain layout (encoder head [μ; log σ²] split in fc21, fc22)."""
    enc, dec = model.encoder.net, model.decoder.net
    with torch.no_grad():
        plain.fc1.load_state_dict(enc[0].state_dict())
        plain.fc21.weight.copy_(enc[2].weight[:20])
        plain.fc21.bias.copy_(enc[2].bias[:20])
        plain.fc22.weight.copy_(enc[2].weight[20:])
        plain.fc22.bias.copy_(enc[2].bias[20:])
        plain.fc3.load_state_dict(dec[0].state_dict())
        plain.fc4.load_state_dict(dec[2].state_dict())
    return plain


def as_gradest_vae(plain: PlainVAE) -> VAE:
    """The plain model's weights in gradest's VAE layout (encoder head = [μ; log σ²])."""
    model = VAE.mlp(784, (400,), 20, make_generator(0))
    with torch.no_grad():
        enc, dec = model.encoder.net, model.decoder.net
        enc[0].load_state_dict(plain.fc1.state_dict())
        enc[2].weight.copy_(torch.cat([plain.fc21.weight, plain.fc22.weight]))
        enc[2].bias.copy_(torch.cat([plain.fc21.bias, plain.fc22.bias]))
        dec[0].load_state_dict(plain.fc3.state_dict())
        dec[2].load_state_dict(plain.fc4.state_dict())
    return model


def side_by_side(config: TrainConfig, epochs: int, seed: int, data: torch.Tensor, test: torch.Tensor
                 ) -> dict[str, list[float]]:
    """One fresh gradest run and one fresh plain model, their epochs alternating (see the docstring).

    Returns the per-epoch seconds: ``train_pass`` (gradest's metric), ``wall`` (gradest, from the end
    of one callback to the next epoch's end: every epoch but the first), ``plain`` and
    ``plain_full`` (plain train pass, and with its test pass).
    """
    gen = make_generator(seed)
    plain = PlainVAE(gen)
    opt = torch.optim.Adam(plain.parameters(), lr=1e-3)
    out: dict[str, list[float]] = {"wall": [], "plain": [], "plain_full": []}
    resumed: list[float] = []

    def plain_epoch_between(record: dict) -> None:
        if resumed:
            out["wall"].append(time.perf_counter() - resumed[-1])
        seconds = plain_epoch(plain, opt, data, gen, gen)
        out["plain"].append(seconds)
        out["plain_full"].append(seconds + plain_test(plain, test, gen))
        resumed.append(time.perf_counter())

    with tempfile.TemporaryDirectory() as tmp:
        result = train(dataclasses.replace(config, epochs=epochs), tmp, on_epoch=plain_epoch_between)
    out["train_pass"] = [m["seconds"] for m in result.metrics]
    return out


def paired_quality(epochs: int, seed: int = 0) -> dict:
    """Both loops from the same initial weights and the same random numbers, then the same evaluation.

    gradest draws shuffles from the seed's data stream and z from its noise stream; the plain loop
    is given the same two streams, so any difference in the results would be a difference in the
    computation itself.
    """
    config = TrainConfig(epochs=epochs, seed=seed, var_repeats=0, iwae_k=1000)
    run = setup(config)
    plain = copy_into_plain(run.model, PlainVAE(make_generator(seed)))
    opt = torch.optim.Adam(plain.parameters(), lr=config.lr)
    shuffle, noise = make_generator(seed + STREAM_DATA), make_generator(seed + STREAM_NOISE)
    for _ in range(epochs):
        plain_epoch(plain, opt, run.train, shuffle, noise)
    plain_eval = evaluate(as_gradest_vae(plain), run.test, 1000, make_generator(seed + STREAM_EVAL))
    with tempfile.TemporaryDirectory() as tmp:
        ours = train(config, tmp).evaluation
    return {
        "epochs": epochs,
        "plain": plain_eval.to_dict(),
        "gradest_pathwise": ours.to_dict(),
        "max_abs_difference": max(abs(a - b) for a, b in zip(plain_eval, ours, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round and contender")
    parser.add_argument("--quality", type=int, default=0, help="also train both this many epochs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: robust on a busy machine)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    off = TrainConfig(var_repeats=0, iwae_k=1)
    on = TrainConfig(var_repeats=10, iwae_k=1)
    data, test = setup(off)[1:3]
    times: dict[str, list[float]] = {
        "plain": [],
        "plain_full": [],
        "train_pass": [],
        "epoch_off": [],
        "epoch_on": [],
    }
    paired: list[float] = []  # each gradest train pass over the plain epoch right after it
    for r in range(args.rounds):
        run_off = side_by_side(off, args.epochs, 100 + r, data, test)
        run_on = side_by_side(on, args.epochs, 200 + r, data, test)
        times["train_pass"] += run_off["train_pass"] + run_on["train_pass"]
        times["epoch_off"] += run_off["wall"]
        times["epoch_on"] += run_on["wall"]
        for run in (run_off, run_on):
            times["plain"] += run["plain"]
            times["plain_full"] += run["plain_full"]
            paired += [a / b for a, b in zip(run["train_pass"], run["plain"], strict=True)]
        print(
            f"round {r + 1}: fastest epochs: plain {min(times['plain']):.3f} s, "
            f"gradest {min(times['train_pass']):.3f} s"
        )

    result: dict = {
        "threads": torch.get_num_threads(),
        "epochs_per_contender": len(times["plain"]),
        "paired_ratio_train_pass_median": statistics.median(paired),
    }
    # Median: the typical epoch; min: the least disturbed one (other work on the machine only adds time).
    for stat, fn in (("median", statistics.median), ("min", min)):
        t = {k: fn(v) for k, v in times.items()}
        result[stat] = {
            "plain_epoch_s": t["plain"],
            "gradest_train_pass_s": t["train_pass"],
            "ratio_train_pass": t["train_pass"] / t["plain"],
            "plain_epoch_with_test_s": t["plain_full"],
            "gradest_epoch_var_off_s": t["epoch_off"],
            "ratio_epoch_var_off": t["epoch_off"] / t["plain_full"],
            "gradest_epoch_var_on_s": t["epoch_on"],
            "ratio_epoch_var_on": t["epoch_on"] / t["plain_full"],
            "variance_tracking_overhead_s": t["epoch_on"] - t["epoch_off"],
        }
    if args.quality:
        result["quality"] = paired_quality(args.quality)
    print(json.dumps(result, indent=2))
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
