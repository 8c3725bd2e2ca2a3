"""Start-up cost of `import gradest` and `gradest --help`, side by side with `import torch`.

Every command runs in a fresh interpreter (``sys.executable``), round-robin so that the three share
the machine's state, and the best of ``--repeats`` runs counts (the least disturbed one). torch is
the floor: gradest needs it, so the ratios to ``import torch`` are what gradest itself adds.
Also lists the heavy optional modules (scipy, matplotlib, …) that ``import gradest`` loads: none is
the goal, they belong to the commands that use them.

Usage: .venv/bin/python benchmarks/bench_imports.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

HEAVY = ("scipy", "matplotlib", "sklearn", "mlxtend", "rich", "typer")

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "import gradest": [sys.executable, "-c", "import gradest"],
    "gradest --help": [sys.executable, "-m", "gradest", "--help"],
}


def wall(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def heavy_modules() -> list[str]:
    code = ("import gradest, json, sys; "
            f"print(json.dumps(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r})))")
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    for argv in COMMANDS.values():  # warm the file cache and the .pyc files, untimed
        wall(argv)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeats):
        for name, argv in COMMANDS.items():
            times[name].append(wall(argv))
    best = {name: min(t) for name, t in times.items()}
    floor = best["import torch"]
    print(f"best of {args.repeats} fresh interpreters ({sys.executable})")
    for name, seconds in best.items():
        print(f"  {name:16s} {seconds:6.3f} s  {seconds / floor:5.2f}× import torch  "
              f"(+{1e3 * (seconds - floor):5.0f} ms)")
    print(f"heavy modules loaded by `import gradest`: {', '.join(heavy_modules()) or 'none'}")


if __name__ == "__main__":
    main()
