"""`gradest sweep` killed at each write step (SIGKILL mid-write): nothing half-written, the rerun resumes
to the same CSV and cleans the temporary file the killed run left behind.

The kill is injected from outside the package: a wrapper around ``write_atomic`` that, at its i-th call,
leaves half the bytes in a temporary file named as write_atomic names them and SIGKILLs its process,
as a power cut or the OOM killer would between the write and the rename.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys

import pytest

from gradest.cli import main
from gradest.io import TEMP_PATTERN

SWEEP = ["sweep", "--samples", "200", "--cost", "square", "--k", "1,2", "--estimator", "pathwise"]
#: write_atomic calls of that sweep: the CSV after each of its 2 cells, the figure, the report
WRITES = 4

KILLER = """
import os, signal, sys, tempfile
from pathlib import Path

import gradest.io
import gradest.lab.sweep

at, calls, original = int(os.environ["KILL_AT_WRITE"]), [0], gradest.io.write_atomic


def write_atomic(path, data):
    calls[0] += 1
    if calls[0] == at:
        path = Path(path)
        payload = data.encode() if isinstance(data, str) else data
        fd, _ = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.write(fd, payload[: len(payload) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path, data)


gradest.io.write_atomic = gradest.lab.sweep.write_atomic = write_atomic
from gradest.cli import main

sys.exit(main(sys.argv[1:]))
"""


def _rows(path) -> list[dict]:
    """The CSV's rows without the timing column (seconds per sample differ from run to run)."""
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    for row in rows:
        row.pop("seconds_per_sample")
    return rows


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "sweep"
    assert main([*SWEEP, "--out", str(out)]) == 0
    return _rows(out / "sweep.csv")


@pytest.fixture(scope="module")
def killed(tmp_path_factory):
    """write step -> the folder of a sweep SIGKILLed at it and its return code (run side by side)."""
    root = tmp_path_factory.mktemp("killed")
    runs = {at: subprocess.Popen([sys.executable, "-c", KILLER, *SWEEP, "--out", str(root / str(at))],
                                 env={**os.environ, "KILL_AT_WRITE": str(at)}, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.PIPE)
            for at in range(1, WRITES + 1)}
    done = {}
    for at, run in runs.items():
        _, stderr = run.communicate(timeout=300)
        done[at] = (root / str(at), run.returncode, stderr.decode()[-2000:])
    return done


@pytest.mark.parametrize("at", range(1, WRITES + 1))
def test_sweep_killed_at_each_write_resumes_to_the_same_csv(capsys, reference, killed, at):
    out, code, stderr = killed[at]
    assert code == -signal.SIGKILL, stderr
    temps = [p.name for p in out.iterdir() if TEMP_PATTERN.match(p.name)]
    assert len(temps) == 1  # the half-written temporary the kill left
    if (out / "sweep.csv").exists():  # complete rows only: a prefix of the full sweep
        done = _rows(out / "sweep.csv")
        assert done == reference[: len(done)] and len(done) % 2 == 0
    assert main([*SWEEP, "--out", str(out)]) == 0
    capsys.readouterr()
    assert _rows(out / "sweep.csv") == reference
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "sweep.csv", "sweep.png"]
