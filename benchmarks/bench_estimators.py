"""Seconds per 10⁶ single-sample gradients, every estimator × every sampler, on the sweep problems.

Problems (Mohamed et al., JMLR 2020, Fig. 2): x ~ N(μ = 1, σ = 1), costs (x − k)², exp(−k x²) and
cos(k x) with k = 1; each call returns the single-sample gradients for both μ and σ
(``per_sample``, float64). Each cell times TOTAL single-sample gradients drawn in calls of BATCH
samples, best of REPEATS, scaled to 10⁶ gradients (the per-sample cost is flat in the number of
calls; the best of several short runs resists other load on the machine). Samplers: none (the
family's sampler), ``+antithetic`` and ``+qmc`` (10 scrambled Sobol randomizations per call).

Run: .venv/bin/python benchmarks/bench_estimators.py [--batch 100000] [--total 200000] [--repeats 5]
     [--threads 1]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.distributions import Normal

from gradest import get_estimator, make_generator, named_cost

ESTIMATORS = (
    "pathwise",
    "pathwise-delta",
    "score",
    "score-const=1",
    "score-ema",
    "score-loo",
    "score-optb",
    "score-delta=1",
    "score-delta",
    "mvd",
    "mvd-uncoupled",
    "mvd-delta",
)
SAMPLERS = ("", "+antithetic", "+qmc")
COSTS = ("square", "exp", "cos")


def seconds_per_million(spec: str, cost: str, batch: int, total: int, repeats: int) -> float:
    f = named_cost(cost, 1.0)
    params = {"loc": torch.tensor(1.0, dtype=torch.float64), "scale": torch.tensor(1.0, dtype=torch.float64)}
    est = get_estimator(spec)
    est.per_sample(f, Normal, params, 1000, make_generator(0))  # warm-up: first-call overheads
    calls = max(1, total // batch)
    best = float("inf")
    for repeat in range(repeats):
        gen = make_generator(repeat)
        start = time.perf_counter()
        for _ in range(calls):
            est.per_sample(f, Normal, params, batch, gen)
        best = min(best, time.perf_counter() - start)
    return best * 1e6 / (calls * batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100_000, help="samples per call")
    parser.add_argument("--total", type=int, default=200_000, help="gradients timed per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1: stable figures on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.batch:,} samples per call, "
          f"{args.total:,} per repeat, best of {args.repeats}; "
          "seconds per 10⁶ single-sample gradients (μ and σ)")
    header = f"{'estimator':28s}" + "".join(f"{c:>10s}" for c in COSTS)
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for name in ESTIMATORS:
        for sampler in SAMPLERS:
            spec = name + sampler
            cells = [seconds_per_million(spec, c, args.batch, args.total, args.repeats) for c in COSTS]
            print(f"{spec:28s}" + "".join(f"{s:10.3f}" for s in cells), flush=True)
    print(f"total wall time {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
