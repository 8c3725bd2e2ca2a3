"""Wall-clock time of the whole variance sweep (`gradest sweep`), from an empty folder.

Two configurations over the survey's grid (costs square, exp, cos; k = 0.1 … 10; x ~ N(1, 1);
10⁵ samples per cell):

* ``issue``: the command of the issue, estimators pathwise, score, mvd;
* ``default``: `gradest sweep` without --estimator: pathwise, score, score-delta, mvd, mvd-uncoupled.

Each is split into measuring the cells (estimator calls), the exact variances of the CSV rows
and curves (numerical integration), and rendering the figure and report.

Usage: .venv/bin/python benchmarks/bench_sweep.py [--samples N] [--only issue|default]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import gradest.lab.sweep as sw


def run(name: str, config: sw.SweepConfig) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        result = sw.run_sweep(config, Path(tmp))
        total = time.perf_counter() - start
        measuring = sum(r.seconds_per_sample * r.samples for r in result.rows) / 2  # 2 rows per call
        t0 = time.perf_counter()
        sw.exact_curves(config)
        curves = time.perf_counter() - t0
    cells = len(config.cells())
    print(f"{name:8s} {cells:4d} cells  total {total:7.1f} s  estimator calls {measuring:6.1f} s  "
          f"exact curves {curves:5.1f} s  ({total / cells:.2f} s per cell)")
    return {"total": total, "calls": measuring, "curves": curves}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--only", choices=("issue", "default"))
    args = parser.parse_args()
    configs = {
        "issue": sw.SweepConfig(estimators=("pathwise", "score", "mvd"), samples=args.samples),
        "default": sw.SweepConfig(samples=args.samples),
    }
    for name, config in configs.items():
        if args.only in (None, name):
            run(name, config)


if __name__ == "__main__":
    main()
