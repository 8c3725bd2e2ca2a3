"""VAE training loop: metrics, summary, resume = uninterrupted run, NaN stop, safe checkpoints."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gradest.errors import GradestError
from gradest.rng import make_generator
from gradest.vae import objectives
from gradest.vae.config import TrainConfig
from gradest.vae.files import load_checkpoint, load_run, read_metrics
from gradest.vae.model import VAE, GaussianEncoder
from gradest.vae.train import NonFiniteLoss, train

TINY = TrainConfig(
    dataset="digits", hidden=(16,), latent=2, epochs=2, batch_size=256, var_repeats=3, iwae_k=8
)
METRIC_KEYS = {"epoch", "train_neg_elbo", "test_neg_elbo", "seconds", "grad_var", "grad_snr"}
SUMMARY_KEYS = {"test_neg_elbo", "test_nll_iwae", "iwae_k", "kl", "active_units", "estimator"}


def _numbers(metrics: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k not in ("seconds", "monitor_seconds")} for m in metrics]


def test_metrics_and_summary_files(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, estimator="vimco", k=3, binarize="dynamic")
    result = train(config, tmp_path)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        record = json.loads(line)
        assert METRIC_KEYS <= set(record) and record["epoch"] == epoch
        assert record["grad_var"] > 0 and record["grad_snr"] > 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and summary["estimator"] == "vimco"
    # The IWAE_K bound is tighter than the ELBO (up to Monte Carlo noise, here far smaller than the gap).
    assert summary["test_nll_iwae"] < summary["test_neg_elbo"]
    assert 0 <= summary["active_units"] <= 2
    assert result.evaluation.iwae_k == 8


def test_resume_reproduces_the_uninterrupted_run(tmp_path: Path) -> None:
    config = dataclasses.replace(TINY, estimator="score", epochs=3)
    whole = train(config, tmp_path / "whole")
    train(dataclasses.replace(config, epochs=1), tmp_path / "split")
    resumed = train(config, tmp_path / "split", resume=True)
    assert _numbers(resumed.metrics) == _numbers(whole.metrics)
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert resumed.evaluation == whole.evaluation


def test_variance_tracking_does_not_change_training(tmp_path: Path) -> None:
    on = train(dataclasses.replace(TINY, estimator="score"), tmp_path / "on")
    off = train(dataclasses.replace(TINY, estimator="score", var_repeats=0), tmp_path / "off")
    strip = [{k: v for k, v in m.items() if k not in ("grad_var", "grad_snr")} for m in _numbers(on.metrics)]
    assert strip == [
        {k: v for k, v in m.items() if k not in ("grad_var", "grad_snr")} for m in _numbers(off.metrics)
    ]
    assert all(m["grad_var"] is None for m in off.metrics)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    train(dataclasses.replace(TINY, epochs=1), tmp_path)
    good = load_checkpoint(tmp_path)["model"]
    real = objectives.OBJECTIVES["pathwise"]

    def poisoned(model, x, k, generator, baseline=None):
        est = real.fn(model, x, k, generator, baseline)
        return est._replace(loss=est.loss * float("nan"))

    monkeypatch.setitem(objectives.OBJECTIVES, "pathwise", real._replace(fn=poisoned))
    with pytest.raises(NonFiniteLoss, match=r"epoch 2, step 1/.*checkpoint of epoch 1 is kept"):
        train(TINY, tmp_path, resume=True)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1
    assert all(torch.equal(good[k], state["model"][k]) for k in good)
    assert len(read_metrics(tmp_path)) == 1


def test_checkpoint_refuses_pickled_code(tmp_path: Path) -> None:
    """weights_only loading: a checkpoint carrying an arbitrary object is rejected."""
    torch.save({"epoch": 1, "payload": Path("x")}, tmp_path / "checkpoint.pt")
    with pytest.raises(GradestError, match="not a gradest checkpoint") as err:
        load_checkpoint(tmp_path)
    assert "weights_only" not in str(err.value)  # torch's hint to load it unsafely is not repeated


def test_existing_run_is_not_overwritten(tmp_path: Path) -> None:
    train(dataclasses.replace(TINY, epochs=1, var_repeats=0), tmp_path)
    with pytest.raises(GradestError, match="--resume"):
        train(TINY, tmp_path)


def test_user_encoder_and_decoder(tmp_path: Path) -> None:
    """Any modules with the encoder/decoder contract train through the same loop."""
    gen = make_generator(0)
    decoder = nn.Sequential(nn.Linear(2, 64), nn.Tanh())  # deliberately not an MLP of gradest's
    model = VAE(GaussianEncoder(64, (8,), 2, gen), decoder, latent=2)
    result = train(dataclasses.replace(TINY, estimator="iwae-dreg", k=2, epochs=1), tmp_path, model=model)
    assert result.model.decoder is decoder
    assert torch.isfinite(torch.tensor(result.evaluation.neg_elbo))


def test_bad_options_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(GradestError, match="needs --k ≥ 2"):
        train(dataclasses.replace(TINY, estimator="score-loo"), tmp_path)
    with pytest.raises(GradestError, match="unknown --estimator"):
        train(dataclasses.replace(TINY, estimator="reinforce"), tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(GradestError, match="CUDA is not available"):
            train(dataclasses.replace(TINY, device="cuda"), tmp_path)


def test_nan_gradient_on_an_epochs_last_step_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch
) -> None:
    """A finite loss whose gradient is inf poisons the parameters: that epoch must not be saved."""
    config = dataclasses.replace(TINY, epochs=2, batch_size=5000, var_repeats=0)  # one step per epoch
    real = objectives.OBJECTIVES["pathwise"]
    calls = []

    def poisoned(model, x, k, generator, baseline=None):
        est = real.fn(model, x, k, generator, baseline)
        calls.append(1)
        if len(calls) == 2:
            s = next(model.encoder.parameters()).sum()
            # value 0, gradient ∞ (d√|u|/du at u = 0): Adam turns the encoder's weights into NaN
            est = est._replace(loss=est.loss + (s - s.detach()).abs().sqrt())
        return est

    monkeypatch.setitem(objectives.OBJECTIVES, "pathwise", real._replace(fn=poisoned))
    with pytest.raises(NonFiniteLoss, match=r"inf/NaN during epoch 2.*checkpoint of epoch 1 is kept"):
        train(config, tmp_path)
    state = load_checkpoint(tmp_path)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert len(read_metrics(tmp_path)) == 1


def test_divergence_to_an_infinite_test_elbo_stops_cleanly(tmp_path: Path) -> None:
    """lr 1e30 keeps the weights finite but sends σ(x) to ∞: a clear stop, not a JSON error."""
    config = dataclasses.replace(TINY, epochs=2, batch_size=5000, lr=1e30, var_repeats=0)
    with pytest.raises(NonFiniteLoss, match=r"test −ELBO became (nan|inf) after epoch 1.*no checkpoint"):
        train(config, tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_run_on_a_relative_mnist_dir_reloads_from_another_folder(tmp_path: Path, monkeypatch) -> None:
    """The run saves DIR absolute: evaluating it from elsewhere finds the files again."""
    (tmp_path / "m").mkdir()
    for name, shape in [("train-images-idx3", (8, 5, 3)), ("train-labels-idx1", (8,))]:
        for prefix in ("", "t10k"):
            n = 4 if prefix else 8
            stem = name.replace("train", "t10k") if prefix else name
            dims = (n, *shape[1:])
            header = bytes([0, 0, 8, len(dims)]) + struct.pack(f">{len(dims)}I", *dims)
            (tmp_path / "m" / f"{stem}-ubyte").write_bytes(header + bytes(int(np.prod(dims))))
    monkeypatch.chdir(tmp_path)
    config = dataclasses.replace(TINY, dataset="mnist:m", epochs=1, var_repeats=0)
    train(config, "run")
    monkeypatch.chdir(tmp_path / "m")
    saved, run = load_run(tmp_path / "run")
    assert saved.dataset == f"mnist:{tmp_path / 'm'}" and run.test.shape == (4, 15)


def test_resume_with_fewer_epochs_than_done_is_an_error(tmp_path: Path) -> None:
    train(dataclasses.replace(TINY, var_repeats=0), tmp_path)
    with pytest.raises(GradestError, match=r"already trained 2 epochs.*greater than 2"):
        train(dataclasses.replace(TINY, epochs=1), tmp_path, resume=True)


def test_out_that_is_a_file_and_checkpoint_that_is_not_a_run(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(GradestError, match="is a file; give a folder"):
        train(TINY, tmp_path / "file")
    (tmp_path / "other").mkdir()
    torch.save({"w": torch.zeros(2)}, tmp_path / "other" / "checkpoint.pt")  # safe, but no run
    with pytest.raises(GradestError, match="not a checkpoint of gradest vae train"):
        load_checkpoint(tmp_path / "other")
    with pytest.raises(GradestError, match="not a checkpoint of gradest vae train"):
        train(TINY, tmp_path / "other", resume=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_run_resumes_on_cuda_and_evaluates_on_cpu(tmp_path: Path) -> None:
    """On the GPU: resume reproduces the run; resuming on the CPU is refused; eval works on either."""
    config = dataclasses.replace(TINY, estimator="score", binarize="dynamic", epochs=3, device="cuda")
    whole = train(config, tmp_path / "whole")
    train(dataclasses.replace(config, epochs=1), tmp_path / "split")
    with pytest.raises(GradestError, match="resume it with --device cuda"):
        train(dataclasses.replace(config, device="cpu"), tmp_path / "split", resume=True)
    resumed = train(config, tmp_path / "split", resume=True)
    assert _numbers(resumed.metrics) == _numbers(whole.metrics)
    saved, run = load_run(tmp_path / "whole", device="cpu")
    assert saved.device == "cpu" and run.test.device.type == "cpu"
    with pytest.raises(GradestError, match=r"GPU\(s\), cuda:0"):
        train(dataclasses.replace(config, device=f"cuda:{torch.cuda.device_count()}"), tmp_path / "x")


def test_a_user_model_that_does_not_fit_the_data_is_a_clear_error(tmp_path: Path) -> None:
    gen = make_generator(0)
    wrong_dim = VAE(GaussianEncoder(784, (8,), 2, gen), nn.Linear(2, 64), latent=2)  # digits have 64 pixels
    with pytest.raises(GradestError, match=r"D = 64 pixels: the encoder must map \[B, 64\]"):
        train(TINY, tmp_path / "a", model=wrong_dim)
    wrong_latent = VAE(GaussianEncoder(64, (8,), 3, gen), nn.Linear(3, 64), latent=2)
    with pytest.raises(GradestError, match=r"shapes \[\(2, 3\), \(2, 3\), \(2, 64\)\]"):
        train(TINY, tmp_path / "b", model=wrong_latent)
