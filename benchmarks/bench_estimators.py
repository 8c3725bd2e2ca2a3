"""Seconds per 10⁶ single-sample gradients, every estimator × every sampler, on the sweep problems.

Problems (Mohamed et al., JMLR 2020, Fig. 2): x ~ N(μ = 1, σ = 1), costs (x − k)², exp(−k x²) and
cos(k x) with k = 1; each call returns the single-sample gradients for both μ and σ
(``per_sample``, float64). Each cell is the best of REPEATS calls with SAMPLES samples, scaled to
10⁶ samples. Samplers: none (the family's sampler), ``+antithetic`` and ``+qmc`` (10 scrambled
Sobol randomizations).

Run: .venv/bin/python benchmarks/bench_estimators.py [--samples 1000000] [--repeats 3]
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


def seconds_per_million(spec: str, cost: str, samples: int, repeats: int) -> float:
    f = named_cost(cost, 1.0)
    params = {"loc": torch.tensor(1.0, dtype=torch.float64), "scale": torch.tensor(1.0, dtype=torch.float64)}
    est = get_estimator(spec)
    est.per_sample(f, Normal, params, 1000, make_generator(0))  # warm-up: first-call overheads
    best = float("inf")
    for seed in range(repeats):
        start = time.perf_counter()
        est.per_sample(f, Normal, params, samples, make_generator(seed))
        best = min(best, time.perf_counter() - start)
    return best * 1e6 / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, N = {args.samples:,}, "
          f"best of {args.repeats}; seconds per 10⁶ single-sample gradients (μ and σ)")
    header = f"{'estimator':28s}" + "".join(f"{c:>10s}" for c in COSTS)
    print(header)
    print("-" * len(header))
    total = time.perf_counter()
    for name in ESTIMATORS:
        for sampler in SAMPLERS:
            spec = name + sampler
            cells = [seconds_per_million(spec, c, args.samples, args.repeats) for c in COSTS]
            print(f"{spec:28s}" + "".join(f"{s:10.3f}" for s in cells), flush=True)
    print(f"total wall time {time.perf_counter() - total:.1f} s")


if __name__ == "__main__":
    main()
