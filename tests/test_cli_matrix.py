"""Every command driven with a fixed matrix of bad values: exit 2, one `error:` line, nothing written.

The cases each earlier report listed, kept as regression tests; tests/test_cli_fuzz.py draws the cases
nobody listed.

The categories are those a hostile user tries: seeds and sizes beyond what the machine holds, malformed
lists and parameters, degenerate families, user costs that misbehave after the shape check, data at the
edges of float64, output paths that cannot be written, thread counts that crash torch. Each case runs
in-process (``gradest.cli.main``) in an empty working folder, which must be byte-for-byte unchanged
afterwards. `vae` cases are parse-level only (the VAE's own checks are tested in tests/test_vae_cli.py).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from gradest.cli import main
from gradest.cli.options import SEED_MAX
from gradest.compare import available_memory
from gradest.limits import THREADS_MAX, WORKERS_MAX

# every command, with the arguments that make a valid run of it cheap (a bad value must fail before
# any real work, so these only keep the cases fast should a check be missing)
COMMANDS: dict[str, list[str]] = {
    "compare": ["compare", "--samples", "100"],
    "gaussian": ["gaussian", "--steps", "1"],
    "sweep": ["sweep", "--samples", "100", "--cost", "square", "--k", "1", "--estimator", "pathwise"],
    "advise": ["advise", "--samples", "100", "--estimator", "pathwise"],
    "blr": ["blr", "--steps", "1", "--estimator", "pathwise", "--variance-samples", "10"],
    "vae train": ["vae", "train"],
    "vae eval": ["vae", "eval", "no-such-run"],
    "vae compare": ["vae", "compare"],
}
SEEDED = list(COMMANDS)
# the seed values refused everywhere: negative, one past the rule, 2^64 (torch's own limit), not integers
BAD_SEEDS = ["-1", str(SEED_MAX + 1), str(2**64), str(2**64 - 1), "1e3", "nan", "", "0x10"]
BAD_THREADS = ["-1", str(THREADS_MAX + 1), "100000", "nan"]
HUGE = str(10**12)
DEEP = "[" * 5000 + "1" + "]" * 5000

COST_PY = """
import numpy as np
import torch


def inplace(x):
    x.add_(1.0)
    return x.reshape(x.shape[0], -1).sum(1)


def complex_out(x):
    return x.reshape(x.shape[0], -1).sum(1).to(torch.complex128)


def meta_out(x):
    return torch.empty(x.shape[0], device="meta")


def int_out(x):
    return torch.ones(x.shape[0], dtype=torch.int64)


def numpy_out(x):
    return np.cos(x.detach().numpy()).reshape(x.shape[0], -1).sum(1)


def nan_out(x):
    return x.reshape(x.shape[0], -1).sum(1) * float("nan")


def exits(x):
    raise SystemExit(0)
"""
BAD_COSTS = [":f", ".mod:f", "costs.py:", "costs:", "no_such_file.py:f", "costs.py:missing",
             "costs.py:inplace", "costs.py:complex_out", "costs.py:meta_out", "costs.py:int_out",
             "costs.py:numpy_out", "costs.py:nan_out", "costs.py:exits", "nosuchcost"]

# CSV files (name -> text) for gaussian's --data: a cell over the csv module's 128 KiB limit, data
# whose squares overflow or whose spread underflows float64, NaN, one value, constant values
CSVS = {
    "huge_cell.csv": "x\n" + "1" * 200_000 + "\n2\n",
    "e200.csv": "x\n1e200\n2e200\n3e200\n",
    "e308.csv": "x\n1e308\n-1.5e308\n3e307\n",
    "em300.csv": "x\n1e-300\n2e-300\n3e-300\n",
    "nan.csv": "x\n1\nnan\n3\n",
    "one.csv": "x\n1\n",
    "constant.csv": "x\n2\n2\n2\n",
    "semicolon.csv": "a;b\n1;2\n3;4\n",
    "binary.csv": "x\n1\x00\n2\n",
}


def _cases() -> list[tuple[str, list[str]]]:
    cases: list[tuple[str, list[str]]] = []
    for command, seed in itertools.product(SEEDED, BAD_SEEDS):
        cases.append((command, ["--seed", seed]))
    for command, threads in itertools.product(COMMANDS, BAD_THREADS):  # every command that computes
        cases.append((command, ["--threads", threads]))
    bad_workers = ("0", str(WORKERS_MAX + 1), "100000")
    for command, workers in itertools.product(("sweep", "advise", "blr"), bad_workers):
        cases.append((command, ["--workers", workers]))
    for command in COMMANDS:
        cases.append((command, ["--no-such-option"]))
    # sizes beyond what the machine holds: refused with a memory estimate, not an allocator error
    cases += [("compare", ["--samples", HUGE]), ("sweep", ["--samples", HUGE]),
              ("advise", ["--samples", HUGE]), ("blr", ["--samples", HUGE]),
              ("blr", ["--variance-samples", HUGE]), ("gaussian", ["--samples-per-step", HUGE]),
              ("blr", ["--steps", HUGE]), ("gaussian", ["--steps", HUGE])]
    for command in ("compare", "sweep", "advise", "blr", "gaussian"):
        option = {"gaussian": "--steps", "blr": "--steps"}.get(command, "--samples")
        cases += [(command, [option, bad]) for bad in ("0", "nan", "1.5", "-3")]
    # lists: an empty entry is an error, never skipped
    cases += [("sweep", ["--k", bad]) for bad in ("", "1,,2", "1,", ",", "nan", "inf", "1,x")]
    cases += [(command, ["--k", bad]) for command in ("compare", "advise") for bad in ("nan", "inf", "x")]
    # parameters: malformed, non-finite, nested too deep, degenerate families
    bad_params = [["--param", f"loc={DEEP}"], ["--param", "loc=nan", "--param", "scale=1"],
                  ["--param", "loc=1", "--param", "scale=0"], ["--param", "loc=[1,2"],
                  ["--param", "loc=true", "--param", "scale=1"], ["--param", "=1"],
                  ["--param", "loc=[]", "--param", "scale=1"]]
    cases += [(command, p) for command in ("compare", "advise", "sweep") for p in bad_params]
    degenerate = [["--dist", "dirichlet", "--param", "concentration=[1]"],
                  ["--dist", "dirichlet", "--param", "concentration=2"],
                  ["--dist", "dirichlet", "--param", "concentration=[[1],[2]]"],
                  ["--dist", "categorical", "--param", "logits=[0]"],
                  ["--dist", "categorical", "--param", "probs=0.5"],
                  ["--dist", "poisson", "--param", "rate=0"],
                  ["--dist", "poisson", "--param", "rate=[1,0]"]]
    cases += [(command, [*d, "--cost", "square", "--estimator", "score"]) for command in ("compare", "advise")
              for d in degenerate]
    # user costs that fail, exit, or misbehave after the shape check
    cases += [(command, ["--cost", cost]) for command in ("compare", "advise") for cost in BAD_COSTS]
    cases += [("compare", ["--cost", "costs.py:numpy_out", "--estimator", e])
              for e in ("score-delta", "pathwise-delta", "mvd-delta")]
    cases += [("sweep", ["--cost", "costs.py:inplace"])]
    # data at the edges of float64, malformed CSVs
    cases += [("gaussian", ["--data", name]) for name in CSVS]
    cases += [("gaussian", ["--data", "huge_cell.csv", "--column", "x"]),
              ("gaussian", ["--data", "missing.csv"]), ("gaussian", ["--column", "x"])]
    # blr: values that reach the strict JSON writer or exceed the data
    cases += [("blr", ["--lr", bad]) for bad in ("inf", "nan", "-1", "0")]
    cases += [("blr", ["--batch", "100000"]), ("blr", ["--estimator", "nope"]),
              ("blr", ["--estimator", "pathwise", "--estimator", "pathwise"])]
    # output paths that cannot be written: a file where the folder goes, a folder where a file goes
    for command in ("sweep", "blr", "gaussian"):
        cases += [(command, ["--out", "a_file"]), (command, ["--out", "a_file/sub"])]
    cases += [("sweep", ["--out", "blocked"]), ("blr", ["--out", "blocked"]),
              ("gaussian", ["--out", "blocked"])]
    cases += [(command, ["--json", "a_folder"]) for command in ("compare", "advise")]
    # vae: parse-level bad values only
    for command in ("vae train", "vae compare"):
        cases += [(command, [opt, bad]) for opt in ("--epochs", "--batch-size", "--latent", "--hidden")
                  for bad in ("0", "-1", "x")]
        cases += [(command, ["--lr", bad]) for bad in ("x", "")]
    return cases


CASES = _cases()


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under ``root`` with its kind, size and modification time (Python's own bytecode
    cache of the cost file aside)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    (tmp_path / "costs.py").write_text(COST_PY)
    for name, text in CSVS.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "a_file").write_text("not a folder\n")
    (tmp_path / "a_folder").mkdir()
    # an output folder holding a folder where the command writes a file
    for name in ("report.html", "metrics.csv"):
        (tmp_path / "blocked" / name).mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _id(case) -> str:
    command, extra = case
    text = " ".join(a if len(a) < 24 else a[:20] + "…" for a in extra)
    return f"{command}: {text}"


@pytest.mark.parametrize("case", CASES, ids=[_id(c) for c in CASES])
def test_bad_value_is_one_error_line_exit_2_and_writes_nothing(workdir, capsys, case):
    command, extra = case
    if HUGE in extra and available_memory() is None:
        pytest.skip("free memory cannot be read here (no /proc/meminfo): sizes are not checked against it")
    before = _tree(workdir)
    code = main([*COMMANDS[command], *extra])
    err = capsys.readouterr().err
    assert code == 2, (code, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert _tree(workdir) == before, "the command created or changed a file"


def test_the_matrix_covers_every_command():
    assert {command for command, _ in CASES} == set(COMMANDS)
    assert len(CASES) > 200
