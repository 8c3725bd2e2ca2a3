"""examples/monitor_vae.py runs end to end with tiny settings (a CLI smoke test)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gradest.monitor import read_jsonl

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "monitor_vae.py"


def test_the_vae_example_writes_its_plot_records_and_summary(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("monitor_vae", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    tiny = "--epochs 1 --batch 32 --hidden 16 --latent 2 --every 2 --repeats 4".split()
    summary = example.main([str(tmp_path), "--limit", "96", *tiny])
    rows = read_jsonl(tmp_path / "monitor.jsonl")
    # 3 steps per run, measured at steps 0 and 2 (and at the end, step 3, not due), 3 groups, 2 runs
    assert [(r["estimator"], r["step"], r["group"]) for r in rows] == [
        (e, s, g) for e in ("pathwise", "score-loo") for s in (0, 2) for g in ("encoder", "decoder", "all")]
    assert (tmp_path / "monitor.png").read_bytes()[:4] == b"\x89PNG"
    for run in summary.values():
        assert run["steps"] == 3 and 0 < run["monitor_share"] < 1
    assert "monitor share" in capsys.readouterr().out
    # a second run replaces the records instead of appending to them
    example.main([str(tmp_path), "--limit", "64", *tiny])
    assert len(read_jsonl(tmp_path / "monitor.jsonl")) == 2 * 2 * 3  # steps 0 and 2 (the end)
