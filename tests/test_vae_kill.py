"""vae train killed at each write: the restart (resume, or a fresh start without a checkpoint) ends
with the files of an uninterrupted run.

A kill is simulated in-process at every write of a two-epoch run: the N-th write and all after it
never happen (a BaseException the training loop cannot catch), so the folder holds exactly what a
process killed between two writes leaves. One real SIGKILL, in a subprocess, cuts the run between
the last checkpoint and its metrics.jsonl, the case that used to lose that epoch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import gradest.vae.files as vf
import gradest.vae.train as vt
from gradest.cli import main

CONFIG = vt.TrainConfig(dataset="digits", hidden=(8,), latent=2, epochs=2, batch_size=512, var_repeats=2,
                        iwae_k=4, estimator="score")
FILES = ("metrics.jsonl", "monitor.jsonl", "summary.json", "config.json")


class _Killed(BaseException):
    pass


def _strip(value):
    """The file's numbers without the timings, which no rerun reproduces."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if "seconds" not in k and k != "monitor_share"}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _read(folder: Path) -> dict[str, object]:
    out = {}
    for name in FILES:
        text = (folder / name).read_text()
        out[name] = _strip([json.loads(line) for line in text.splitlines()] if name.endswith(".jsonl")
                           else json.loads(text))
    return out


def _restart(folder: Path) -> None:
    vt.train(CONFIG, folder, resume=(folder / vf.CHECKPOINT).exists())


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> dict[str, object]:
    folder = tmp_path_factory.mktemp("whole")
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # as conftest sets it for each test's own runs
    try:
        vt.train(CONFIG, folder)
    finally:
        torch.set_default_dtype(previous)
    return _read(folder)


def _writes() -> int:
    """Writes of an uninterrupted run: per epoch checkpoint, metrics, config, monitor; then the summary."""
    return 4 * CONFIG.epochs + 1


@pytest.mark.parametrize("kill_at", range(1, _writes() + 1))
def test_a_kill_at_each_write_then_a_restart_ends_as_the_whole_run(tmp_path, monkeypatch, whole, kill_at):
    count = [0]

    def dying(write):
        def wrapped(path, data):
            count[0] += 1
            if count[0] >= kill_at:
                raise _Killed(f"killed before write {count[0]} ({Path(path).name})")
            return write(path, data)

        return wrapped

    with monkeypatch.context() as mp:
        mp.setattr(vf, "write_atomic", dying(vf.write_atomic))
        mp.setattr(vf, "write_json", dying(vf.write_json))
        with pytest.raises(_Killed):
            vt.train(CONFIG, tmp_path)
    _restart(tmp_path)
    assert _read(tmp_path) == whole


_KILL_AFTER_LAST_CHECKPOINT = """
import os, signal, sys
import gradest.vae.files as vf
write, seen = vf.write_atomic, []
def write_then_die(path, data):
    write(path, data)
    seen.append(os.path.basename(str(path)))
    if seen.count("checkpoint.pt") == 2:  # epoch 2's checkpoint is on disk, its metrics are not
        os.kill(os.getpid(), signal.SIGKILL)
vf.write_atomic = write_then_die
from gradest.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_sigkill_between_the_last_checkpoint_and_its_metrics_loses_no_epoch(tmp_path, whole) -> None:
    args = ["vae", "train", "--dataset", "digits", "--hidden", "8", "--latent", "2", "--epochs", "2",
            "--batch-size", "512", "--monitor-repeats", "2", "--iwae-k", "4", "--estimator", "score",
            "--out", str(tmp_path)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", _KILL_AFTER_LAST_CHECKPOINT, *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1  # the record the kill cut off
    assert main(["vae", "train", "--resume", "--out", str(tmp_path)]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert json.loads((tmp_path / "summary.json").read_text())["epochs"] == 2
