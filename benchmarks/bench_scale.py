"""A sweep of ≥ 1,000 small cells, serial vs a local Dask cluster, measured side by side in one run.

The grid: costs square, exp, cos × K values of k (log-spaced, 0.1 … 10) × the five default
estimators, a few thousand samples per cell, x ~ N(1, 1). ``measure`` only (the CSV; no figure),
from an empty folder each time, alternating serial and Dask runs so that both see the same machine.

Three modes: serial; Dask with cells grouped into tasks (the default of ``--workers``: about 8
tasks per worker); Dask with one cell per task. Reported per mode: wall time of the cells and
cells per second; for Dask also the speed-up over serial and the overhead per task,
(workers × T_dask − T_serial) / tasks: the worker-seconds each task costs beyond its computation
(scheduling, pickling, the client's CSV writes while workers wait); the cluster's start-up is
reported separately (paid once per command). The overhead can come out below zero: in the
serial run the client's CSV writes add to the cells' time, on Dask they overlap the workers'.
On a machine with as many cores as workers the client and scheduler compete with the workers for
them, so the speed-up there is a floor, not what separate machines give. Every run checks that
the Dask CSV equals the serial one (all columns but seconds_per_sample).

Usage: .venv/bin/python benchmarks/bench_scale.py [--ks 70] [--samples 2000] [--workers 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np

import gradest.lab.sweep as sw
from gradest.lab.parallel import DaskMap, cell_map, serial_map


def _untimed(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.reader(handle))
    drop = rows[0].index("seconds_per_sample")
    return [r[:drop] + r[drop + 1:] for r in rows]


def _timed(config: sw.SweepConfig, cells) -> tuple[float, Path]:
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    start = time.perf_counter()
    sw.measure(config, tmp, cell_map=cells)
    return time.perf_counter() - start, tmp / sw.CSV_NAME


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, default=70, help="k values (cells = 3 × KS × 5)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    config = sw.SweepConfig(ks=tuple(float(k) for k in np.geomspace(0.1, 10.0, args.ks)),
                            samples=args.samples)
    n = len(config.cells())
    print(f"{n} cells of {args.samples} samples; machine: {os.cpu_count()} CPUs ({os.uname().machine}); "
          f"{args.workers} local worker processes, 1 thread each")
    start = time.perf_counter()
    with cell_map(workers=args.workers) as grouped:
        startup = time.perf_counter() - start
        single = DaskMap(grouped.client, cells_per_task=1)
        times: dict[str, list[float]] = {"serial": [], "grouped": [], "single": []}
        for _ in range(args.repeats):
            t, serial_csv = _timed(config, serial_map)
            times["serial"].append(t)
            for mode, cells in (("grouped", grouped), ("single", single)):
                t, csv_path = _timed(config, cells)
                assert _untimed(csv_path) == _untimed(serial_csv), f"the Dask CSV ({mode}) differs"
                times[mode].append(t)
        group = grouped._group_size(n)
    best = {mode: min(ts) for mode, ts in times.items()}
    t_serial = best["serial"]
    print(f"serial                    {t_serial:6.2f} s  {n / t_serial:6.1f} cells/s  "
          f"({1e3 * t_serial / n:.2f} ms per cell)")
    for mode, label, tasks in (("grouped", f"{group} cells per task", -(-n // group)),
                               ("single", "1 cell per task", n)):
        t = best[mode]
        overhead = (args.workers * t - t_serial) / tasks
        print(f"dask ×{args.workers}, {label:17s} {t:6.2f} s  {n / t:6.1f} cells/s  speed-up "
              f"{t_serial / t:.2f}×  overhead {1e3 * overhead:.2f} ms per task ({tasks} tasks)")
    print(f"cluster start-up {startup:.1f} s (once per command, not in the times above)")
    print(f"runs (best of {args.repeats}): " + "; ".join(
        f"{mode} {', '.join(f'{t:.2f}' for t in ts)} s" for mode, ts in times.items())
        + "; every Dask CSV equal to the serial one but for seconds_per_sample")

if __name__ == "__main__":
    main()
