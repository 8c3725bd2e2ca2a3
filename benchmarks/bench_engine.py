"""Per-sample gradients: the batched engine vs a Python loop vs a forward-only evaluation.

For x ~ N(μ, σ²) and f(x) = cos(2x), measured side by side in one run (best of REPEATS):

* engine:  ``Pathwise().per_sample`` / ``ScoreFunction().per_sample`` — N single-sample gradients,
  one batched backward pass;
* loop:    one ``rsample`` + one backward pass per sample (what per-sample gradients cost without
  batching); run up to ``LOOP_MAX`` samples, beyond that its per-sample time is extrapolated;
* forward: the Monte Carlo estimate of L itself — draw N samples and evaluate f, no gradient
  (the cheap-gradient principle compares a gradient with this); and f alone on pre-drawn samples.

Targets (issue "gradest core"): engine ≥ 100× faster than the loop at 10⁴ samples; engine ≤ 4× the
forward evaluation at 10⁶ samples.

Run: .venv/bin/python benchmarks/bench_engine.py
"""

from __future__ import annotations

import time

import torch
from torch.distributions import Normal

from gradest import Pathwise, ScoreFunction, make_generator, named_cost
from gradest.rng import draw

REPEATS = 5
LOOP_MAX = 10_000
SIZES = (1_000, 10_000, 100_000, 1_000_000)


def best_time(fn, repeats=REPEATS):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    loc, scale = torch.tensor(1.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    params = {"loc": loc, "scale": scale}
    f = named_cost("cos", 2.0)
    gen = make_generator(0)

    def loop(n):
        leaves = [loc.clone().requires_grad_(), scale.clone().requires_grad_()]
        out = torch.empty(n, 2, dtype=torch.float64)
        for i in range(n):
            x = draw(gen, Normal(*leaves).rsample).reshape(1)
            g = torch.autograd.grad(f(x).sum(), leaves)
            out[i, 0], out[i, 1] = g
        return out

    Pathwise().per_sample(f, Normal, params, 100, gen)  # warm-up: first-call overheads
    ScoreFunction().per_sample(f, Normal, params, 100, gen)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float64, f(x) = cos(2x)")
    header = (f"{'N':>9} {'engine s':>10} {'score s':>10} {'loop s':>10} {'forward s':>10} "
              f"{'f-only s':>10} {'loop/engine':>12} {'engine/fwd':>11} {'engine/f':>9}")
    print(header)
    loop_per_sample = None
    for n in SIZES:
        engine = best_time(lambda n=n: Pathwise().per_sample(f, Normal, params, n, gen))
        score = best_time(lambda n=n: ScoreFunction().per_sample(f, Normal, params, n, gen))
        dist = Normal(loc.expand(n), scale.expand(n))

        def forward(dist=dist):
            with torch.no_grad():
                return f(draw(gen, dist.sample)).mean()

        fwd = best_time(forward)
        x = draw(gen, dist.sample)
        f_only = best_time(lambda x=x: f(x))
        if n <= LOOP_MAX:
            loop_s = best_time(lambda n=n: loop(n), repeats=1 if n >= 10_000 else 3)
            loop_per_sample = loop_s / n
            loop_txt = f"{loop_s:10.4f}"
        else:
            loop_s = loop_per_sample * n
            loop_txt = f"~{loop_s:9.2f}"
        print(f"{n:9d} {engine:10.5f} {score:10.5f} {loop_txt} {fwd:10.5f} {f_only:10.5f} "
              f"{loop_s / engine:12.0f} {engine / fwd:11.2f} {engine / f_only:9.2f}")
    print("(~ = loop extrapolated from its per-sample time at the largest measured N)")


if __name__ == "__main__":
    main()
