"""Estimators from installed packages: found through the entry-point group ``gradest.estimators`` by
the library and the command line, loaded on first use; a broken plugin is skipped with one line.

The packages live in tests/plugins; each test "installs" them with a temporary dist-info directory on
the subprocess's path (importlib.metadata reads entry points from there), no pip involved.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

PLUGINS = Path(__file__).parent / "plugins"
COMPARE = ("-m", "gradest", "compare", "--dist", "normal", "--param", "loc=1", "--param", "scale=1",
           "--cost", "square")


def _install(site: Path, dist: str, entries: dict[str, str]) -> None:
    info = site / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n", encoding="utf-8")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[gradest.estimators]\n{lines}", encoding="utf-8")


def _run(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(PLUGINS),
                                                       os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=300)


@pytest.fixture
def site(tmp_path):
    _install(tmp_path, "gradest_demo_plugin", {"demo-score": "gradest_demo_plugin"})
    return tmp_path


def test_a_plugin_estimator_is_found_by_the_library_and_passes_the_kit(site):
    code = (
        "import sys, gradest\n"
        "from gradest.estimators import registry\n"
        "assert 'demo-score' not in registry._REGISTRY  # nothing loaded at import\n"
        "assert 'demo-score' in gradest.available()\n"
        "import gradest.testing\n"
        "report = gradest.testing.check_estimator('demo-score')\n"
        "report.raise_if_failed()\n"
        "print(len(report.checks), sum(c.kind == 'bias' for c in report.checks))\n"
    )
    proc = _run(site, "-c", code)
    assert proc.returncode == 0, proc.stderr
    checks, bias = map(int, proc.stdout.split())
    assert bias >= 10 and checks > bias


def test_the_command_line_runs_a_plugin_estimator(site):
    proc = _run(site, *COMPARE, "--estimator", "demo-score", "--estimator", "score", "--samples", "2000",
                "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    assert "demo-score" in proc.stdout


def test_a_broken_plugin_is_one_line_naming_it_and_the_rest_works(site):
    _install(site, "gradest_broken_plugin", {"broken": "gradest_broken_plugin"})
    proc = _run(site, *COMPARE, "--estimator", "demo-score", "--samples", "500", "--seed", "0")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "'broken'" in lines[0] and "gradest_broken_plugin" in lines[0] and "ImportError" in lines[0]
    assert "Traceback" not in proc.stderr and "demo-score" in proc.stdout
