"""torchrun: a process that dies without a word (killed, out of memory) is named by a survivor, in one
`error:` line with the command that resumes the run (torchrun's own report may follow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

TORCHRUN = Path(sys.executable).parent / "torchrun"
pytestmark = pytest.mark.skipif(not dist.is_available() or not TORCHRUN.exists(),
                                reason="needs torch.distributed and torchrun")

#: the command line with one process vanishing at its N-th training step, as the OOM killer leaves it
DYING = """
import os, sys
from gradest.vae import objectives

if os.environ["RANK"] == os.environ["DIE_RANK"]:
    real, calls = objectives.OBJECTIVES["pathwise"], []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == int(os.environ["DIE_AT"]):
            os._exit(9)
        return real.fn(*args, **kwargs)

    objectives.OBJECTIVES["pathwise"] = real._replace(fn=dying)

from gradest.cli import main
sys.exit(main(sys.argv[1:]))
"""
TRAIN = ["vae", "train", "--dataset", "digits", "--hidden", "8", "--latent", "2", "--epochs", "3",
         "--batch-size", "128", "--monitor-repeats", "0", "--iwae-k", "2"]


def test_a_rank_that_dies_is_named_with_the_resume_command(tmp_path):
    script = tmp_path / "dying.py"
    script.write_text(DYING)
    out = tmp_path / "run"
    # 12 steps an epoch: rank 1 vanishes in epoch 2, after epoch 1's checkpoint
    env = {**os.environ, "DIE_RANK": "1", "DIE_AT": "15", "OMP_NUM_THREADS": "1"}
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", str(script), *TRAIN, "--out", str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(ours) == 1, done.stderr
    assert "process 1 of 2 stopped without telling why" in ours[0]
    assert f"continue with torchrun --nproc-per-node 2 -m gradest vae train --resume --epochs 3 --out {out}" \
        in ours[0]
    # gradest's line comes before torchrun's own report, and no process printed a traceback of its own
    assert done.stderr.index(ours[0]) < done.stderr.index("ChildFailedError")
    assert done.stderr.count("Traceback") <= 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1  # epoch 1 is saved
