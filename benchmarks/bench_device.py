"""Per-sample gradients and the surrogate at large N on one device, with the CPU figure beside it.

For x ~ N(μ, σ²) with f(x) = cos(2x), times (best of REPEATS, after a warm-up) the pathwise and
score-function per-sample gradients and the pathwise surrogate + backward, in float32, at N samples
on --device, and at --cpu-samples on the CPU, and prints seconds per 10⁸ samples for both and
their ratio. Also checks that the same seed gives the same numbers on the device twice.

Run: .venv/bin/python benchmarks/bench_device.py --device cuda --samples 100000000 --cpu-samples 10000000
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.distributions import Normal

import gradest

REPEATS = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device: torch.device) -> float:
    fn()
    _sync(device)
    best = float("inf")
    for _ in range(REPEATS):
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure(device: torch.device, n: int, dtype: torch.dtype) -> dict[str, float]:
    """Seconds per sample of each operation at n samples on device."""
    params = {"loc": torch.tensor(0.5, dtype=dtype, device=device),
              "scale": torch.tensor(1.2, dtype=dtype, device=device)}
    f = gradest.named_cost("cos", 2.0)
    out = {}
    for name in ("pathwise", "score"):
        est = gradest.get_estimator(name)
        def run(est=est):
            est.per_sample(f, Normal, params, n, gradest.make_generator(0, device))

        out[f"{name} per_sample"] = _time(run, device) / n
    live = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    est = gradest.get_estimator("pathwise")

    def surrogate():
        est.surrogate(f, Normal, live, n, gradest.make_generator(0, device)).backward()

    out["pathwise surrogate+backward"] = _time(surrogate, device) / n
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=100_000_000)
    parser.add_argument("--cpu-samples", type=int, default=10_000_000)
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.float32
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}), torch {torch.__version__}, float32")
    f = gradest.named_cost("cos", 2.0)
    params = {"loc": torch.tensor(0.5, dtype=dtype, device=device),
              "scale": torch.tensor(1.2, dtype=dtype, device=device)}
    a = gradest.get_estimator("score").per_sample(f, Normal, params, 1000, gradest.make_generator(7, device))
    b = gradest.get_estimator("score").per_sample(f, Normal, params, 1000, gradest.make_generator(7, device))
    same = all(torch.equal(a.grads[k], b.grads[k]) for k in a.grads)
    print(f"same seed, same numbers on {device}: {same}")
    on_device = measure(device, args.samples, dtype)
    on_cpu = measure(torch.device("cpu"), args.cpu_samples, dtype) if device.type != "cpu" else on_device
    print(f"{'operation':32s} {f'{device} s/1e8 (N={args.samples:.0e})':>26s} "
          f"{f'cpu s/1e8 (N={args.cpu_samples:.0e})':>26s} {'cpu/device':>11s}")
    for op, sec in on_device.items():
        cpu = on_cpu[op]
        print(f"{op:32s} {sec * 1e8:26.3f} {cpu * 1e8:26.3f} {cpu / sec:11.1f}")


if __name__ == "__main__":
    main()
