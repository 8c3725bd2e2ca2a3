"""What the contract probe and the sample-health checks cost in steady state, side by side in one run.

per_sample of the score function and the pathwise estimator on bench_engine's problems (f(x) = cos 2x;
scalar N = 10⁶, batched [100] N = 10⁴; float64 and float32), with gradest.health.check as it is and
replaced by a no-op, alternating the order over ROUNDS rounds; the best round of each side counts.
The cost's probe runs on the first call only (its verdict is cached per cost), which the warm-up
pays. The pathwise rows are a noise floor: a Normal has no edge, so its check returns at once.

Run: .venv/bin/python benchmarks/bench_checks.py
"""

from __future__ import annotations

import time

import torch
from torch.distributions import Independent, Normal

import gradest
from gradest import health

ROUNDS = 7


def cos2(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(2 * x)


def cos2_summed(x: torch.Tensor) -> torch.Tensor:
    return torch.cos(2 * x).sum(-1)


def independent(loc: torch.Tensor, scale: torch.Tensor) -> Independent:
    return Independent(Normal(loc, scale), 1)


def _skip(*args, **kwargs) -> None:
    return None


def best_times(est, cost, builder, params, n) -> dict[str, float]:
    real = health.check
    est.per_sample(cost, builder, params, n, gradest.make_generator(0))  # warm-up; pays the probe
    best = {"checked": float("inf"), "unchecked": float("inf")}
    try:
        for r in range(ROUNDS):
            for mode in ("checked", "unchecked") if r % 2 else ("unchecked", "checked"):
                health.check = real if mode == "checked" else _skip
                start = time.perf_counter()
                est.per_sample(cost, builder, params, n, gradest.make_generator(r))
                best[mode] = min(best[mode], time.perf_counter() - start)
    finally:
        health.check = real
    return best


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, best of {ROUNDS} rounds")
    for dtype in (torch.float64, torch.float32):
        cases = [
            ("scalar", cos2, Normal, {"loc": torch.tensor(1.0, dtype=dtype),
                                      "scale": torch.tensor(1.0, dtype=dtype)}, 10**6),
            ("batched", cos2_summed, independent, {"loc": torch.zeros(100, dtype=dtype),
                                                   "scale": torch.ones(100, dtype=dtype)}, 10**4),
        ]
        for label, cost, builder, params, n in cases:
            for name in ("score", "pathwise"):
                best = best_times(gradest.get_estimator(name), cost, builder, params, n)
                ratio = best["checked"] / best["unchecked"]
                print(f"{name:8s} {label:7s} {str(dtype).removeprefix('torch.'):7s} N={n:>7}  "
                      f"checked / unchecked = {ratio:.3f}  ({best['checked'] * 1e3:.1f} ms vs "
                      f"{best['unchecked'] * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
