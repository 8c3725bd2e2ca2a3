"""Data-parallel VAE training (gradest.vae.distributed): 2 gloo processes give the one-process run.

One spawn of a 2-process gloo group trains three estimators (pathwise with dynamic binarization and
K = 3, score with its moving-average baseline, vimco) for one epoch, resumes each to two, and then
lets rank 1 fail mid-epoch. The metrics must equal a one-process run's up to the order of float
sums: relative TOLERANCE = 1e-5 after 24 Adam steps (measured: at most 1.3e-6; the test −ELBO is
mostly bit-identical). A rule that wrongly drew the noise, weighted a shard or missed the baseline's
global mean would differ at the percent level.
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from gradest.errors import GradestError
from gradest.rng import make_generator
from gradest.vae import distributed
from gradest.vae.config import TrainConfig
from gradest.vae.files import read_metrics
from gradest.vae.train import train

TOLERANCE = 1e-5
TINY = TrainConfig(dataset="digits", hidden=(16,), latent=4, epochs=2, batch_size=128, var_repeats=3,
                   iwae_k=4)
CONFIGS = {
    "pathwise": dataclasses.replace(TINY, estimator="pathwise", k=3, binarize="dynamic"),
    "score": dataclasses.replace(TINY, estimator="score"),
    "vimco": dataclasses.replace(TINY, estimator="vimco", k=2),
}
COMPARED = ("train_neg_elbo", "train_neg_bound", "test_neg_elbo", "test_kl", "grad_var", "grad_snr")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # as conftest sets it for the one-process runs
    with distributed.session("cpu") as group:
        for name, config in CONFIGS.items():
            train(dataclasses.replace(config, epochs=1), f"{root}/{name}", group=group)
            train(config, f"{root}/{name}", group=group, resume=True)
        # rank 1 fails in its third step; rank 0 must stop with PeerFailed, not hang or crash
        from gradest.vae import objectives

        pathwise = objectives.OBJECTIVES["pathwise"]
        calls = []

        def failing(*args, **kwargs):
            calls.append(1)
            if rank == 1 and len(calls) == 3:
                raise RuntimeError("injected failure")
            return pathwise.fn(*args, **kwargs)

        objectives.OBJECTIVES["pathwise"] = pathwise._replace(fn=failing)
        try:
            train(dataclasses.replace(TINY, var_repeats=0), f"{root}/failing", group=group)
            outcome = "finished"
        except distributed.PeerFailed:
            outcome = "PeerFailed"
        except RuntimeError as err:
            outcome = str(err)
        Path(f"{root}/outcome-{rank}").write_text(outcome)
        if rank == 1:
            os._exit(0)  # leave at once, as a crashed process would: rank 0 sees its connection close


def _close(a: float | None, b: float | None) -> bool:
    return a == b or abs(a - b) <= TOLERANCE * abs(a)


@pytest.fixture(scope="module")
def ddp_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(root)), nprocs=2)
    return root


@pytest.mark.parametrize("name", list(CONFIGS))
def test_two_processes_give_the_one_process_metrics(ddp_root: Path, tmp_path: Path, name: str) -> None:
    one = train(CONFIGS[name], tmp_path / name)
    two = read_metrics(ddp_root / name)  # epoch 1, then resumed to epoch 2: written once, by rank 0
    assert [m["epoch"] for m in two] == [1, 2]
    for a, b in zip(one.metrics, two, strict=True):
        for key in COMPARED:
            assert _close(a[key], b[key]), (name, a["epoch"], key, a[key], b[key])
    summary = json.loads((ddp_root / name / "summary.json").read_text())
    for key, value in one.evaluation.to_dict().items():
        assert _close(value, summary[key]), (key, value, summary[key])


def test_a_failing_rank_stops_the_others_with_peer_failed(ddp_root: Path) -> None:
    assert (ddp_root / "outcome-1").read_text() == "injected failure"
    assert (ddp_root / "outcome-0").read_text() == "PeerFailed"


def test_the_shards_noise_is_the_one_process_draw() -> None:
    """Ranks' shards of ε [K, B, L] concatenate to the single draw; the generators end in step."""
    k, b, latent = 3, 7, 5
    whole = torch.randn(k, b, latent, generator=make_generator(4))
    parts, states = [], []
    for rank in range(3):
        group, gen = distributed.ProcessGroup(rank, 3), make_generator(4)
        with group.noise(gen, b):
            parts.append(torch.randn(k, len(range(*group._bounds(b))), latent, generator=gen))
        states.append(gen.get_state())
    assert [p.shape[1] for p in parts] == [t.shape[1] for t in whole.tensor_split(3, dim=1)]
    assert torch.equal(torch.cat(parts, dim=1), whole)
    assert all(torch.equal(s, states[0]) for s in states)
    with pytest.raises(GradestError, match="shards noise"), distributed.ProcessGroup(0, 2).noise(gen, b):
        torch.bernoulli(torch.full((4, 2), 0.5), generator=gen)


def test_a_last_batch_smaller_than_the_group_is_refused() -> None:
    with pytest.raises(GradestError, match="--batch-size"):
        distributed.check_batches(distributed.ProcessGroup(0, 4), 1438, 1436)
    distributed.check_batches(distributed.ProcessGroup(0, 2), 1438, 1436)


@pytest.mark.parametrize("command", [["eval", "x"], ["compare"]])
def test_eval_and_compare_refuse_torchrun(monkeypatch, capsys, command) -> None:
    from gradest.cli import main

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["vae", *command]) == 2
    assert "runs in one process (torchrun is for gradest vae train)" in capsys.readouterr().err


def test_binary_latents_are_refused_in_data_parallel_training(tmp_path):
    """Their estimators carry state of their own that the split does not carry: one error, nothing written."""
    config = dataclasses.replace(TINY, latent_dist="bernoulli", arch="linear", estimator="disarm", k=1,
                                 latent=4, hidden=())
    group = distributed.ProcessGroup(0, 2)  # the check comes before any collective call
    with pytest.raises(GradestError, match="Gaussian latents only"):
        train(config, tmp_path / "run", group=group)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()
