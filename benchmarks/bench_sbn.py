"""The binary-latent VAE (sigmoid belief network) trained with seven estimators at equal evaluations.

    .venv/bin/python benchmarks/bench_sbn.py                       # mnist5k, linear and nonlinear
    .venv/bin/python benchmarks/bench_sbn.py --arch linear --epochs 5 --out /tmp/sbn   # quick look

Every estimator gets the same number of evaluations of f = log p(x, b) − log q(b|x) (one decoder
pass each) per image and step, ``--budget`` E (default 6): K = E / (evaluations per sample) samples,
with 1 evaluation per sample for score-loo, gumbel-st and vimco, 2 for arm and disarm (the
antithetic pair), 3 for rebar and relax (f at b and at the two relaxed points z, z̃). Each run is
``gradest vae train --latent-dist bernoulli`` (gradest.vae.train) with one seed, statically
binarized images (sampled once), Adam, and the gradient monitor every ``--monitor-epochs`` epochs
(R estimates of the training gradient on a fixed batch: its encoder variance, tr Cov, in
(nats per image)² per step). After the runs of an architecture, every estimator's variance is also
measured at one common point: the model trained with disarm, each estimator with the state its own
run ended with (REBAR's η, λ, RELAX's network).

Prints one markdown table per architecture; the runs stay in ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from gradest.monitor import GradientMonitor
from gradest.vae.bernoulli import EVALUATIONS, LatentEstimator, monitor_loss
from gradest.vae.catalog import get_objective
from gradest.vae.config import TrainConfig
from gradest.vae.files import load_checkpoint, load_run
from gradest.vae.prepare import setup
from gradest.vae.train import train

SPECS = ["score-loo", "vimco", "gumbel-st=0.5", "arm", "disarm", "rebar", "relax"]
HIDDEN = {"linear": (), "nonlinear": (200, 200)}


def encoder_variances(folder: Path) -> list[float]:
    records = [json.loads(line) for line in (folder / "monitor.jsonl").read_text().splitlines()]
    return [r["variance"] for r in records if r["group"] == "encoder" and r["variance"] is not None]


def common_point(runs: dict[str, Path], reference: str, repeats: int, seed: int) -> dict[str, float]:
    """Each estimator's encoder-gradient variance at the model ``reference`` ended with."""
    _, run = load_run(runs[reference])
    out = {}
    for spec, folder in runs.items():
        own = TrainConfig.from_dict(load_checkpoint(folder)["config"])
        objective = get_objective(spec, own.k, "bernoulli")
        state = LatentEstimator(spec)
        state.load_state_dict(load_checkpoint(folder)["baseline"])
        monitor = GradientMonitor(run.model, monitor_loss(run.model, objective, own.k, state),
                                  repeats=repeats, batch=run.var_batch, state=[state], seed=seed)
        out[spec] = next(r.variance for r in monitor.measure(0) if r.group == "encoder")
    return out


def table(arch: str, rows: list[dict], common: dict[str, float], args) -> str:
    lines = [
        f"### {args.dataset}, {arch} SBN (200 latents{', 200-200 tanh' if arch == 'nonlinear' else ''}), "
        f"{rows[0]['epochs']} epochs × {rows[0]['steps']} steps, batch {args.batch_size}, Adam lr {args.lr}, "
        f"E = {args.budget} evaluations of f per image and step, seed {args.seed}",
        "",
        f"| estimator | K | evals | test −ELBO | test −IWAE_{args.iwae_k} | train −ELBO (last epoch) "
        "| enc. grad var, median over run | enc. grad var at the disarm model | s / epoch |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['spec']} | {r['k']} | {r['k'] * EVALUATIONS[r['spec'].partition('=')[0]]} | "
            f"{r['neg_elbo']:.2f} | {r['nll']:.2f} | {r['train']:.2f} | {r['var']:.3g} | "
            f"{common.get(r['spec'], float('nan')):.3g} | {r['seconds']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist5k")
    parser.add_argument("--arch", nargs="+", default=["linear", "nonlinear"], choices=list(HIDDEN))
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the linear runs")
    parser.add_argument("--nonlinear-epochs", type=int, default=15)
    parser.add_argument("--budget", type=int, default=6, help="evaluations of f per image and step")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--monitor-epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=16, help="R of the monitor during training")
    parser.add_argument("--common-repeats", type=int, default=64, help="R at the common point")
    parser.add_argument("--iwae-k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("gradest-out/bench-sbn"))
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    tables = []
    images = setup(TrainConfig(dataset=args.dataset)).train.shape[0]
    steps = -(-images // args.batch_size)  # Adam steps per epoch
    for arch in args.arch:
        epochs = args.epochs if arch == "linear" else args.nonlinear_epochs
        rows, runs = [], {}
        for spec in SPECS:
            per_sample = EVALUATIONS[spec.partition("=")[0]]
            k = args.budget // per_sample
            if k * per_sample != args.budget:
                raise SystemExit(f"--budget {args.budget} is not a multiple of {spec}'s {per_sample} "
                                 "evaluations per sample")
            folder = args.out / arch / spec
            config = TrainConfig(
                dataset=args.dataset, binarize="fixed", hidden=HIDDEN[arch], latent=200, estimator=spec, k=k,
                epochs=epochs, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                var_repeats=args.repeats, monitor_every=steps * args.monitor_epochs,
                var_batch=args.batch_size, iwae_k=args.iwae_k, latent_dist="bernoulli", arch=arch,
            )
            tick = time.perf_counter()
            result = train(config, folder, resume=(folder / "checkpoint.pt").exists())
            ev = result.evaluation
            variances = encoder_variances(folder)
            rows.append({
                "spec": spec, "k": k, "neg_elbo": ev.neg_elbo, "nll": ev.nll_iwae,
                "train": result.metrics[-1]["train_neg_elbo"], "var": statistics.median(variances),
                "seconds": statistics.mean(m["seconds"] for m in result.metrics), "epochs": epochs,
                "steps": steps,
            })
            runs[spec] = folder
            seconds = time.perf_counter() - tick
            print(f"{arch} {spec}: test −ELBO {ev.neg_elbo:.2f} ({seconds:.0f} s)", flush=True)
        common = common_point(runs, "disarm", args.common_repeats, args.seed + 7)
        tables.append(table(arch, rows, common, args))
        print(tables[-1], flush=True)
    print(f"\ntotal {time.perf_counter() - start:.0f} s\n")
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
