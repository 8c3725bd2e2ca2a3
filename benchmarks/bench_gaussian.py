"""Wall-clock time of the default `gradest gaussian` run (target: under 30 s on the 2-core machine).

Two figures:

* end to end: ``gradest gaussian --out TMP`` in a fresh Python process (imports, checks, fits,
  plots, report, files), best of REPEATS;
* the parts: data loading, the gradient/variance checks, each SGD fit and the report, from one
  in-process run (``gradest.gaussian.run`` with the same default settings).

Run: .venv/bin/python benchmarks/bench_gaussian.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

REPEATS = 2
TARGET_SECONDS = 30.0


def end_to_end() -> float:
    times = []
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "gradest", "gaussian", "--out", out], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times.append(time.perf_counter() - start)
    return min(times)


def parts() -> None:
    from gradest.gaussian import Settings, default_dataset, run, write_outputs

    start = time.perf_counter()
    data = default_dataset()
    loaded = time.perf_counter()
    marks: dict[str, float] = {}
    results = run(data, Settings(), lambda label, done, total: marks.setdefault(label, time.perf_counter()))
    ran = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        write_outputs(results, out)
    written = time.perf_counter()
    first_fit = min(v for k, v in marks.items() if k.startswith("fit"))
    print(f"  load data            {loaded - start:7.2f} s")
    print(f"  checks and variances {first_fit - loaded:7.2f} s")
    for fit in results.fits:
        print(f"  fit {fit.objective:8s} {fit.estimator:9s} {fit.seconds:7.2f} s")
    print(f"  report and files     {written - ran:7.2f} s")


def main() -> None:
    seconds = end_to_end()
    verdict = "OK" if seconds < TARGET_SECONDS else "TOO SLOW"
    print(f"gradest gaussian (default run, end to end, best of {REPEATS}): {seconds:.2f} s "
          f"[target < {TARGET_SECONDS:g} s: {verdict}]")
    parts()


if __name__ == "__main__":
    main()
