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

The VAE part (``--part vae``): one epoch of ``gradest vae train`` (pathwise, the default 784-400-20
MLP, batch 128, monitor off) in one process with 1 and with 2 intra-op threads, and data-parallel
in 2 processes of 1 thread each (``torchrun --nproc-per-node 2``, gloo). Reported: the epoch's
training time (``seconds`` in metrics.jsonl: the Adam steps, without start-up or evaluation), the
command's wall time, and the speed-up of 2 processes over 1; each data-parallel run's −ELBO is
checked against the one-process run's (equal up to float32 reduction order).

Usage: .venv/bin/python benchmarks/bench_scale.py [--ks 70] [--samples 2000] [--workers 2] [--repeats 2]
       .venv/bin/python benchmarks/bench_scale.py --part vae [--dataset mnist5k] [--epochs 2]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import gradest.lab.sweep as sw
from gradest.parallel import DaskMap, cell_map, serial_map


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


def _vae_run(launcher: list[str], threads: int, dataset: str, epochs: int) -> tuple[float, float, float]:
    """(mean epoch seconds, wall seconds, last train −ELBO) of one `gradest vae train` command."""
    out = Path(tempfile.mkdtemp(prefix="bench-ddp-")) / "run"
    cmd = [*launcher, "-m", "gradest", "vae", "train", "--dataset", dataset, "--epochs", str(epochs),
           "--monitor-repeats", "0", "--iwae-k", "1", "--out", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    wall = time.perf_counter() - start
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return sum(m["seconds"] for m in metrics) / len(metrics), wall, metrics[-1]["train_neg_elbo"]


def vae_part(dataset: str, epochs: int, repeats: int) -> None:
    python = [sys.executable]
    modes = {
        "1 process, 1 thread": (python, 1),
        "1 process, 2 threads": (python, 2),
        "2 processes × 1 thread (gloo)": ([*python, "-m", "torch.distributed.run", "--nproc-per-node=2"], 1),
    }
    print(f"VAE epoch: {dataset}, pathwise, D-400-20 MLP, batch 128, {epochs} epochs per run; "
          f"machine: {os.cpu_count()} CPUs ({os.uname().machine})")
    results: dict[str, list[tuple[float, float, float]]] = {m: [] for m in modes}
    for _ in range(repeats):  # alternating: every mode sees the same machine
        for mode, (launcher, threads) in modes.items():
            results[mode].append(_vae_run(launcher, threads, dataset, epochs))
    reference = results["1 process, 1 thread"][0][2]
    base = min(r[0] for r in results["1 process, 1 thread"])
    for mode, runs in results.items():
        epoch, wall = min(r[0] for r in runs), min(r[1] for r in runs)
        drift = max(abs(r[2] - reference) / abs(reference) for r in runs)
        print(f"{mode:30s} epoch {epoch:6.2f} s  speed-up {base / epoch:4.2f}×  command {wall:6.1f} s  "
              f"train −ELBO rel. difference {drift:.1e}")
    print(f"runs (best of {repeats}); epoch = Adam steps only (start-up, evaluation excluded)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("sweep", "vae", "all"), default="sweep")
    parser.add_argument("--ks", type=int, default=70, help="k values (cells = 3 × KS × 5)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dataset", default="mnist5k", help="the VAE part's data set (digits: quicker)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per VAE run (their mean epoch time)")
    args = parser.parse_args()
    if args.part in ("vae", "all"):
        vae_part(args.dataset, args.epochs, args.repeats)
    if args.part == "vae":
        return
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
