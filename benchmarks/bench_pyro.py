"""gradest.pyro.ELBO beside Pyro's own ELBOs, measured side by side in one run (one thread).

    PYTHONPATH=src .venv/bin/python benchmarks/bench_pyro.py            # both parts
    PYTHONPATH=src .venv/bin/python benchmarks/bench_pyro.py --quick    # small settings

(a) Speed on a model whose sites are all reparameterized (Bayesian linear regression, 10 weights, a
    data plate of 500): seconds per SVI step of gradest.pyro.ELBO (pathwise by default) over
    Trace_ELBO's, both with K vectorized particles; goal ≤ 1.1×. Blocks of steps alternate between
    the two, and the ratio is that of the median block times.
(b) A sigmoid belief network on mnist5k (binary latents b ∈ {0, 1}^H per image, q(b|x) =
    Bernoulli(σ(E x + e)), p(x|b) = Bernoulli(σ(W b + c)), a learned prior): TraceGraph_ELBO (with
    Pyro's decaying-average baseline) against gradest.pyro.ELBO with score-loo, disarm and relax at
    site "b", all at K particles: the variance of the encoder's gradient (tr Cov over R calls on
    one batch, at the common initial point and at each run's end), −ELBO per image after a fixed
    number of Adam steps (train batch and held-out batch, 64 particles), seconds per step and its
    ratio to TraceGraph_ELBO's, and model evaluations per step (one batched run of the model each:
    TraceGraph and score-loo 1, disarm 1 + 2, relax 1 + 3; every run covers all K particles).
"""

from __future__ import annotations

import argparse
import statistics
import time

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam

import gradest.pyro as gp
from gradest import make_generator
from gradest.vae.data import binarize, load_images

# ── (a) all-reparameterized ─────────────────────────────────────────────────────────────────────


def regression(n: int, d: int, seed: int):
    g = make_generator(seed)
    x = torch.randn(n, d, generator=g)
    y = x @ torch.randn(d, generator=g) + 0.5 * torch.randn(n, generator=g)

    def model():
        w = pyro.sample("w", dist.Normal(torch.zeros(d), 1.0).to_event(1))
        s = pyro.sample("s", dist.LogNormal(torch.tensor(0.0), 1.0))
        with pyro.plate("data", n):
            pyro.sample("y", dist.Normal((x * w).sum(-1), s), obs=y)  # w: [K, 1, d]

    def guide():
        loc = pyro.param("loc", torch.zeros(d))
        scale = pyro.param("scale", torch.ones(d), constraint=dist.constraints.positive)
        pyro.sample("w", dist.Normal(loc, scale).to_event(1))
        pyro.sample(
            "s",
            dist.LogNormal(
                pyro.param("sl", torch.tensor(0.0)),
                pyro.param("ss", torch.tensor(1.0), constraint=dist.constraints.positive),
            ),
        )

    return model, guide


def part_a(k: int, blocks: int, steps: int) -> None:
    model, guide = regression(500, 10, 0)
    elbos = {
        "Trace_ELBO": lambda: Trace_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1),
        "gradest.pyro.ELBO": lambda: gp.ELBO(num_particles=k, max_plate_nesting=1, seed=0),
    }
    svis, times = {}, {name: [] for name in elbos}
    for name, make in elbos.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        svis[name] = (SVI(model, guide, Adam({"lr": 0.01}), make()), dict(pyro.get_param_store().get_state()))
    for _ in range(blocks):
        for name, (svi, _) in svis.items():
            start = time.perf_counter()
            for _ in range(steps):
                svi.step()
            times[name].append((time.perf_counter() - start) / steps)
    base = statistics.median(times["Trace_ELBO"])
    print(
        f"\n(a) all-reparameterized model, K = {k}, one thread: median seconds per SVI step over "
        f"{blocks} alternating blocks of {steps}"
    )
    print("| ELBO | s/step | ratio to Trace_ELBO |\n|---|---|---|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts):.5f} | {statistics.median(ts) / base:.3f} |")


# ── (b) sigmoid belief network ──────────────────────────────────────────────────────────────────


def sbn(hidden: int, dim: int, seed: int):
    g = make_generator(seed)
    init = {
        "W": 0.01 * torch.randn(hidden, dim, generator=g),
        "E": 0.01 * torch.randn(dim, hidden, generator=g),
    }

    def model(x):
        prior = pyro.param("prior", torch.zeros(hidden))
        w = pyro.param("W", init["W"].clone())
        c = pyro.param("c", torch.zeros(dim))
        with pyro.plate("data", x.shape[0]):
            b = pyro.sample("b", dist.Bernoulli(logits=prior).expand([x.shape[0], hidden]).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=b @ w + c).to_event(1), obs=x)

    def guide(x):
        e = pyro.param("E", init["E"].clone())
        bias = pyro.param("e", torch.zeros(hidden))
        with pyro.plate("data", x.shape[0]):
            pyro.sample(
                "b",
                dist.Bernoulli(logits=x @ e + bias).to_event(1),
                infer={"baseline": {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}},
            )

    return model, guide


def encoder_variance(backward, repeats: int) -> float:
    """tr Cov of the encoder's gradient over ``repeats`` calls of ``backward`` (which fills .grad)."""
    store = pyro.get_param_store()
    params = [store._params["E"], store._params["e"]]
    rows = []
    for _ in range(repeats):
        for p in params:
            p.grad = None
        backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in params]))
    for p in store._params.values():
        p.grad = None
    return float(torch.stack(rows).var(0).sum())


def part_b(k: int, steps: int, batch: int, hidden: int, repeats: int, lr: float = 0.01) -> None:
    data = load_images("mnist5k", make_generator(0))
    g = make_generator(1)
    train, held = binarize(data.train[:batch], g), binarize(data.test[:batch], g)
    model, guide = sbn(hidden, data.dim, 0)
    evaluations = {"TraceGraph_ELBO": 1, "score-loo": 1, "disarm": 3, "relax": 4}
    rows = []
    for name in evaluations:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        if name == "TraceGraph_ELBO":
            elbo = TraceGraph_ELBO(num_particles=k, vectorize_particles=True, max_plate_nesting=1)

        else:
            elbo = gp.ELBO(num_particles=k, max_plate_nesting=1, estimators={"b": name}, seed=0)

        def loss_fn(elbo=elbo):
            elbo.loss_and_grads(model, guide, train)  # a training step's gradient (state advances)

        guide(train)
        model(train)
        start_var = encoder_variance(loss_fn, repeats)
        svi = SVI(model, guide, Adam({"lr": lr}), elbo)
        start = time.perf_counter()
        for _ in range(steps):
            svi.step(train)
        seconds = (time.perf_counter() - start) / steps
        end_var = encoder_variance(loss_fn, repeats)
        pyro.set_rng_seed(1)
        judge = Trace_ELBO(num_particles=64, vectorize_particles=True, max_plate_nesting=1)
        with torch.no_grad():
            final = judge.loss(model, guide, train) / batch
            test = judge.loss(model, guide, held) / batch
        rows.append((name, start_var, end_var, final, test, seconds, evaluations[name]))
    base = rows[0][5]
    print(
        f"\n(b) sigmoid belief network on mnist5k: {batch} images, H = {hidden}, K = {k} particles, "
        f"{steps} Adam "
        f"steps (lr {lr}); encoder gradient variance tr Cov over {repeats} calls"
    )
    print(
        "| ELBO at site b | var at start | var at end | −ELBO/image train | −ELBO/image held-out | s/step "
        "| ratio to TraceGraph | model runs/step |\n|---|---|---|---|---|---|---|---|"
    )
    for name, v0, v1, final, test, sec, ev in rows:
        print(
            f"| {name} | {v0:.4g} | {v1:.4g} | {final:.2f} | {test:.2f} | {sec:.4f} | {sec / base:.2f} "
            f"| {ev} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small settings (a smoke run)")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam's learning rate in part (b)")
    parser.add_argument("--part", choices=["a", "b", "both"], default="both", help="which part to run")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float32)
    a, b = args.part in ("a", "both"), args.part in ("b", "both")
    if a:
        part_a(k=8, blocks=3, steps=10) if args.quick else part_a(k=8, blocks=15, steps=40)
    if b and args.quick:
        part_b(k=4, steps=20, batch=20, hidden=8, repeats=8, lr=args.lr)
    elif b:
        part_b(k=4, steps=300, batch=100, hidden=20, repeats=40, lr=args.lr)


if __name__ == "__main__":
    main()
