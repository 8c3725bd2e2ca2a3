"""gradest vae under hostile input: damaged checkpoints and run folders, huge sizes, non-finite options.

Each case is one `error:` line with exit code 2 that names the fix (no traceback, never torch's hint
to load unsafely), or the right answer.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch

from gradest.cli import main
from gradest.errors import GradestError
from gradest.vae.config import TrainConfig
from gradest.vae.files import load_checkpoint
from gradest.vae.train import train

TINY = ["--dataset", "digits", "--hidden", "16", "--latent", "2", "--epochs", "1", "--batch-size", "256",
        "--var-repeats", "0", "--iwae-k", "4"]
CONFIG = TrainConfig(dataset="digits", hidden=(16,), latent=2, epochs=1, batch_size=256, var_repeats=0,
                     iwae_k=4)
SHAPE = "its weights could not be restored"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished one-epoch run, copied by the tests that damage it."""
    out = tmp_path_factory.mktemp("run") / "run"
    assert main(["vae", "train", *TINY, "--out", str(out)]) == 0
    return out


def _copy(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "copy"))


def _one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_resume_compares_options_given_at_their_default_value(run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "h32"
    args = [*TINY, "--out", str(out)]
    args[args.index("--hidden") + 1] = "32"
    assert main(["vae", "train", *args]) == 0
    capsys.readouterr()
    # 400 is --hidden's default: it used to be taken for "not given" and silently ignored
    assert main(["vae", "train", "--resume", "--epochs", "2", "--hidden", "400", "--out", str(out)]) == 2
    _one_error(capsys, "--hidden [400] differs from the run's saved [32]")
    assert main(["vae", "train", "--resume", "--epochs", "2", "--lr", "0.001", "--k", "1", "--hidden", "32",
                 "--out", str(out)]) == 0


@pytest.mark.parametrize(
    ("damage", "needles"),
    [
        (lambda p: p.write_bytes(b""), ["is empty (0 bytes)", "new --out"]),
        (lambda p: p.write_bytes(p.read_bytes()[:1000]), ["truncated or corrupted", "new --out"]),
        (lambda p: torch.save({"epoch": 1, "payload": Path("x")}, p), ["not a gradest checkpoint"]),
    ],
    ids=["empty", "truncated", "unsafe"],
)
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_damaged_checkpoints_are_one_error(run, tmp_path, capsys, damage, needles, command) -> None:
    out = _copy(run, tmp_path)
    damage(out / "checkpoint.pt")
    args = ["vae", "eval", str(out)] if command == "eval" else \
        ["vae", "train", "--resume", "--epochs", "2", "--out", str(out)]
    assert main(args) == 2
    err = _one_error(capsys, *needles)
    assert "weights_only" not in err and "Errno" not in err


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_checkpoint_with_nan_weights_is_one_error_not_a_diagnosis(run, tmp_path, capsys, command) -> None:
    out = _copy(run, tmp_path)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    first = next(iter(state["model"]))
    state["model"][first] = torch.full_like(state["model"][first], float("nan"))
    torch.save(state, out / "checkpoint.pt")
    args = ["vae", "eval", str(out)] if command == "eval" else \
        ["vae", "train", "--resume", "--epochs", "2", "--out", str(out)]
    assert main(args) == 2
    _one_error(capsys, "holds NaN or inf weights", repr(first))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda s: s["model"].update({k: torch.zeros(3) for k in s["model"]}), SHAPE),
        (lambda s: s["model"].pop(next(iter(s["model"]))), SHAPE),
        (lambda s: s["generators"].update(data=torch.zeros(3, dtype=torch.uint8)), "data generator"),
        (lambda s: s.update(config={"hidden": "x"}), "malformed run config"),
    ],
    ids=["other-shape", "missing-key", "bad-generator", "bad-config"],
)
def test_checkpoints_of_another_run_are_one_error(run, tmp_path, capsys, edit, needle) -> None:
    out = _copy(run, tmp_path)
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    edit(state)
    torch.save(state, out / "checkpoint.pt")
    assert main(["vae", "train", "--resume", "--epochs", "2", "--out", str(out)]) == 2
    _one_error(capsys, needle)


def test_a_corrupt_config_json_does_not_stop_a_resume(run: Path, tmp_path: Path) -> None:
    """The checkpoint holds the run's config; config.json only mirrors it and is rewritten."""
    out = _copy(run, tmp_path)
    (out / "config.json").write_text("{not json")
    assert main(["vae", "train", "--resume", "--epochs", "2", "--hidden", "16", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["hidden"] == [16]


def test_a_nan_stop_in_epoch_one_leaves_no_config(tmp_path: Path, capsys) -> None:
    assert main(["vae", "train", *TINY, "--lr", "1e30", "--out", str(tmp_path / "x")]) == 1
    assert "there is no checkpoint" in " ".join(capsys.readouterr().out.split())
    assert not (tmp_path / "x" / "config.json").exists() and not (tmp_path / "x" / "checkpoint.pt").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--lr", "inf"], "--lr must be a positive finite number"),
        (["--lr", "nan"], "--lr must be a positive finite number"),
        (["--latent", str(10**9)], "GiB available; give a smaller --latent"),
        (["--hidden", str(10**8)], "GiB available"),
        (["--iwae-k", str(10**12)], "give --iwae-k ≤"),
    ],
)
def test_sizes_and_non_finite_options_are_refused(tmp_path: Path, capsys, args, needle) -> None:
    assert main(["vae", "train", *TINY, *args, "--out", str(tmp_path / "x")]) == 2
    _one_error(capsys, needle)
    assert not (tmp_path / "x").exists()


def test_eval_refuses_an_unbounded_iwae_k(run: Path, capsys) -> None:
    assert main(["vae", "eval", str(run), "--iwae-k", str(10**12)]) == 2
    _one_error(capsys, "give --iwae-k ≤")


def test_the_largest_seed_leaves_room_for_the_streams(tmp_path: Path) -> None:
    with pytest.raises(GradestError, match="2\\^63"):
        train(dataclasses.replace(CONFIG, seed=2**64 - 1), tmp_path)
    train(dataclasses.replace(CONFIG, seed=2**63 - 1), tmp_path)  # seed + 4 still fits torch's 2^64


def _idx(path: Path, dims: list[int]) -> None:
    data = bytes(int(torch.tensor(dims).prod()))
    path.write_bytes(gzip.compress(struct.pack(f">I{len(dims)}I", 0x800 + len(dims), *dims) + data))


def test_mnist_dir_with_empty_images_is_one_error(tmp_path: Path, capsys) -> None:
    for name, dims in (("train-images-idx3-ubyte", [5, 0, 0]), ("train-labels-idx1-ubyte", [5]),
                       ("t10k-images-idx3-ubyte", [2, 0, 0]), ("t10k-labels-idx1-ubyte", [2])):
        _idx(tmp_path / f"{name}.gz", dims)
    out = str(tmp_path / "x")
    assert main(["vae", "train", *TINY[2:], "--dataset", f"mnist:{tmp_path}", "--out", out]) == 2
    _one_error(capsys, "0×0 images")


def test_vae_package_does_not_hide_its_train_module() -> None:
    import importlib

    import gradest.vae

    module = importlib.import_module("gradest.vae.train")
    assert gradest.vae.train is module and callable(gradest.vae.train_vae)
    assert gradest.vae.train_vae is module.train
    assert load_checkpoint is module.load_checkpoint
