"""`--device` of `gradest compare`, `sweep` and `gaussian`: cpu is today's numbers, a missing GPU is
one line and exit 2, and compare runs on a GPU where there is one."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from gradest.cli import main

COMPARE = ["compare", "--param", "loc=1", "--param", "scale=1", "--cost", "cos", "--k", "2",
           "--estimator", "pathwise", "--estimator", "score", "--estimator", "score-loo",
           "--samples", "5000", "--seed", "3"]
SWEEP = ["sweep", "--cost", "cos", "--k", "0.5,2", "--estimator", "pathwise", "--estimator", "mvd",
         "--samples", "1000"]
GAUSSIAN = ["gaussian", "--steps", "5", "--samples-per-step", "2", "--seed", "1"]

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")


def without_timings(value):
    """The JSON with every time taken out: the rest must match bit for bit."""
    if isinstance(value, dict):
        return {k: without_timings(v) for k, v in value.items() if k not in ("seconds", "seconds_per_sample")}
    if isinstance(value, list):
        return [without_timings(v) for v in value]
    return value


def test_compare_on_cpu_is_the_default(tmp_path, capsys):
    a, b = tmp_path / "default.json", tmp_path / "cpu.json"
    assert main([*COMPARE, "--json", str(a)]) == 0
    assert main([*COMPARE, "--json", str(b), "--device", "cpu"]) == 0
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    assert first["config"]["device"] == second["config"]["device"] == "cpu"
    assert without_timings(first) == without_timings(second)


def test_sweep_on_cpu_is_the_default(tmp_path, capsys):
    assert main([*SWEEP, "--out", str(tmp_path / "default")]) == 0
    assert main([*SWEEP, "--out", str(tmp_path / "cpu"), "--device", "cpu"]) == 0

    def rows(folder):
        with (tmp_path / folder / "sweep.csv").open(newline="") as fh:
            return [{k: v for k, v in r.items() if k != "seconds_per_sample"} for r in csv.DictReader(fh)]

    assert rows("default") == rows("cpu") and len(rows("cpu")) == 2 * 2 * 2


def test_gaussian_on_cpu_is_the_default(tmp_path, capsys):
    assert main([*GAUSSIAN, "--out", str(tmp_path / "default")]) == 0
    assert main([*GAUSSIAN, "--out", str(tmp_path / "cpu"), "--device", "cpu"]) == 0
    first, second = (json.loads((tmp_path / f / "results.json").read_text()) for f in ("default", "cpu"))
    assert first["settings"]["device"] == "cpu"
    assert without_timings(first) == without_timings(second)


@no_cuda
@pytest.mark.parametrize("command", [COMPARE, SWEEP, GAUSSIAN], ids=["compare", "sweep", "gaussian"])
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line_and_exit_2(tmp_path, capsys, command, device):
    out = tmp_path / "out"
    where = ["--json", str(out / "r.json")] if command is COMPARE else ["--out", str(out)]
    assert main([*command, *where, "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --device {device}: CUDA is not available")
    assert "use --device cpu" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()  # refused before any work


@pytest.mark.parametrize("command", [COMPARE, SWEEP, GAUSSIAN], ids=["compare", "sweep", "gaussian"])
def test_a_device_that_is_not_one_is_refused(tmp_path, capsys, command):
    where = ["--json", str(tmp_path / "r.json")] if command is COMPARE else ["--out", str(tmp_path / "o")]
    assert main([*command, *where, "--device", "gpu0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --device 'gpu0' is not a device") and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_compare_on_cuda(tmp_path, capsys):
    path = tmp_path / "cuda.json"
    assert main([*COMPARE, "--json", str(path), "--device", "cuda"]) == 0
    result = json.loads(path.read_text())
    assert result["config"]["device"] == "cuda"
    for name, est in result["estimators"].items():
        for param in ("loc", "scale"):
            stats = est[param]
            # unbiased on the GPU too: within 5 standard errors of the exact gradient
            assert abs(stats["z"]) < 5, (name, param, stats)
            assert stats["stderr"] == pytest.approx((stats["variance"] / 5000) ** 0.5)
