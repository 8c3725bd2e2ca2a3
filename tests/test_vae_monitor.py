"""`gradest vae train` measures its gradient variance with the monitor: the numbers of before, no
effect on the run, monitor.jsonl per group, exact resume."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradest.estimators.baselines import MovingAverage
from gradest.monitor import read_jsonl
from gradest.rng import make_generator
from gradest.vae.catalog import get_objective
from gradest.vae.config import STREAM_DIAG, TrainConfig
from gradest.vae.files import load_checkpoint
from gradest.vae.model import VAE, BernoulliDecoder, GaussianEncoder
from gradest.vae.prepare import setup
from gradest.vae.train import train

TINY = TrainConfig(
    dataset="digits", hidden=(16,), latent=2, epochs=2, batch_size=256, var_repeats=3, iwae_k=8
)
STEPS = 6  # digits: 1,438 training images in batches of 256
TIMES = ("seconds", "monitor_seconds")


def _numbers(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMES} for r in rows]


def before_the_monitor(model, objective, x, k, repeats, generator, baseline=None) -> tuple[float, float]:
    """grad_var and grad_snr as gradest.vae.variance computed them before the monitor (verbatim)."""
    params = [p for p in model.encoder.parameters() if p.requires_grad]
    with torch.enable_grad():
        loc, scale = model.encode(x)
        leaves = [t.detach().expand(repeats, *t.shape).requires_grad_(True) for t in (loc, scale)]
        est = objective.from_encoding(model, x, *leaves, k, generator, copy.deepcopy(baseline))
        g_loc, g_scale = torch.autograd.grad(est.loss * repeats, leaves)
        grads = torch.autograd.grad(
            (loc, scale), params, grad_outputs=(g_loc, g_scale), is_grads_batched=True, allow_unused=True,
            materialize_grads=True,
        )
    g = torch.cat([g.reshape(repeats, -1) for g in grads], 1)
    trace = float(g.var(0, correction=1).sum())
    norm = float(g.mean(0).norm())
    return trace, norm / math.sqrt(trace) if trace > 0 else math.inf


@pytest.mark.parametrize(("estimator", "k"), [("pathwise", 1), ("score", 2)])
def test_grad_var_is_the_number_of_before(tmp_path: Path, estimator: str, k: int) -> None:
    """Default monitoring (R = 10, once per epoch): each epoch's grad_var and grad_snr are what the
    code before the monitor computed at that epoch's weights and baseline with the same generator."""
    config = dataclasses.replace(TINY, estimator=estimator, k=k, var_repeats=TrainConfig().var_repeats)
    monitored = train(config, tmp_path / "run")
    # the weights and baselines at each epoch's end, from a run without monitoring
    train(dataclasses.replace(config, epochs=1, var_repeats=0), tmp_path / "ref")
    states = [load_checkpoint(tmp_path / "ref")]
    train(dataclasses.replace(config, var_repeats=0), tmp_path / "ref", resume=True)
    states.append(load_checkpoint(tmp_path / "ref"))
    objective = get_objective(estimator, k)
    generator = make_generator(config.seed + STREAM_DIAG)
    for metrics, state in zip(monitored.metrics, states, strict=True):
        run = setup(config)
        run.model.load_state_dict(state["model"])
        baseline = None if state["baseline"] is None else MovingAverage(**state["baseline"])
        trace, snr = before_the_monitor(run.model.eval(), objective, run.var_batch, k, config.var_repeats,
                                        generator, baseline)
        assert metrics["grad_var"] == pytest.approx(trace, rel=1e-12)
        assert metrics["grad_snr"] == pytest.approx(snr, rel=1e-12)


def test_monitoring_every_step_changes_nothing_and_writes_every_group(tmp_path: Path) -> None:
    """Same seed, measured after every Adam step or never: the same weights, optimizer, baseline,
    generators, metrics and test figures, bit for bit."""
    config = dataclasses.replace(TINY, estimator="score", binarize="dynamic")
    on = train(dataclasses.replace(config, monitor_every=1), tmp_path / "on")
    off = train(dataclasses.replace(config, var_repeats=0), tmp_path / "off")
    for a, b in zip(on.model.state_dict().values(), off.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s_on, s_off = load_checkpoint(tmp_path / "on"), load_checkpoint(tmp_path / "off")
    for a, b in zip(s_on["optimizer"]["state"].values(), s_off["optimizer"]["state"].values(), strict=True):
        assert all(torch.equal(a[key], b[key]) for key in a)
    assert s_on["baseline"] == s_off["baseline"]
    for name in ("data", "noise"):
        assert torch.equal(s_on["generators"][name], s_off["generators"][name])
    grads = ("grad_var", "grad_snr")
    assert [{k: v for k, v in m.items() if k not in grads} for m in _numbers(on.metrics)] == \
        [{k: v for k, v in m.items() if k not in grads} for m in _numbers(off.metrics)]
    assert on.evaluation == off.evaluation
    assert all(m["grad_var"] is None and m["monitor_seconds"] is None for m in off.metrics)
    assert not (tmp_path / "off" / "monitor.jsonl").exists()

    rows = read_jsonl(tmp_path / "on" / "monitor.jsonl")
    assert [r["step"] for r in rows] == [s for s in range(1, 2 * STEPS + 1) for _ in range(3)]
    assert [r["group"] for r in rows[:3]] == ["encoder", "decoder", "all"]
    sizes = {g: sum(p.numel() for p in getattr(on.model, g).parameters()) for g in ("encoder", "decoder")}
    for r in rows:
        assert r["repeats"] == 3 and r["path"] == "estimates" and r["epoch"] == -(-r["step"] // STEPS)
        assert r["size"] == sizes.get(r["group"], sum(sizes.values()))
        assert r["variance"] > 0 and r["variance_stderr"] > 0 and r["snr"] > 0
    for step in range(1, 2 * STEPS + 1):  # the groups add up: tr Cov of all = encoder's + decoder's
        var = {r["group"]: r["variance"] for r in rows if r["step"] == step}
        assert var["all"] == pytest.approx(var["encoder"] + var["decoder"], rel=1e-12)
    for epoch, m in enumerate(on.metrics, 1):  # grad_var: the encoder at the epoch's last measurement
        last = next(r for r in rows if r["step"] == epoch * STEPS and r["group"] == "encoder")
        assert (m["grad_var"], m["grad_snr"]) == (last["variance"], last["snr"])
    summary = json.loads((tmp_path / "on" / "summary.json").read_text())
    assert summary["monitor_seconds"] == pytest.approx(sum(m["monitor_seconds"] for m in on.metrics))
    assert 0 < summary["monitor_share"] < 1
    assert "monitor_share" not in json.loads((tmp_path / "off" / "summary.json").read_text())


def test_a_model_with_dropout_trains_the_same_with_the_monitor(tmp_path: Path) -> None:
    """Dropout in the encoder draws from the global RNG: the monitor forks it and restores it."""

    def model() -> VAE:
        gen = make_generator(5)
        encoder = GaussianEncoder(64, (16,), 2, gen)
        encoder.net.insert(1, nn.Dropout(0.2))
        return VAE(encoder, BernoulliDecoder(2, (16,), 64, gen), latent=2)

    weights = []
    for every, repeats in ((1, 3), (None, 0)):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            config = dataclasses.replace(TINY, epochs=1, monitor_every=every, var_repeats=repeats)
            weights.append(train(config, tmp_path / str(repeats), model=model()).model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_after_an_interruption_mid_epoch_gives_the_uninterrupted_records(tmp_path: Path) -> None:
    """Every 4 steps (not a divisor of the epoch's 6): stopped after the measurement at step 8, in
    epoch 2, the resumed run has the uninterrupted run's metrics and monitor.jsonl, number for number."""
    config = dataclasses.replace(TINY, estimator="score", epochs=3, monitor_every=4)
    whole = train(config, tmp_path / "whole")

    def interrupt(epoch: int, step: int, steps: int) -> None:
        if (epoch, step) == (2, 3):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "split", on_step=interrupt)
    assert [r["step"] for r in read_jsonl(tmp_path / "split" / "monitor.jsonl")] == [4, 4, 4]
    resumed = train(dataclasses.replace(config, monitor_every=None), tmp_path / "split", resume=True)
    assert _numbers(resumed.metrics) == _numbers(whole.metrics)
    rows = {name: _numbers(read_jsonl(tmp_path / name / "monitor.jsonl")) for name in ("whole", "split")}
    assert rows["split"] == rows["whole"]
    assert [r["step"] for r in rows["whole"] if r["group"] == "all"] == [4, 8, 12, 16]
    assert json.loads((tmp_path / "split" / "config.json").read_text())["monitor_every"] == 4
    # epoch 3 (steps 13-18) was last measured at step 16
    last = next(r for r in rows["whole"] if r["step"] == 16 and r["group"] == "encoder")
    assert whole.metrics[2]["grad_var"] == last["variance"]


def test_a_checkpoint_from_before_the_monitor_resumes(tmp_path: Path) -> None:
    """Checkpoints written before the monitor have no records or monitor state: resuming starts both."""
    train(dataclasses.replace(TINY, epochs=1), tmp_path)
    state = load_checkpoint(tmp_path)
    del state["monitor"]
    state["config"].pop("monitor_every")
    torch.save(state, tmp_path / "checkpoint.pt")
    result = train(TINY, tmp_path, resume=True)
    assert [r["step"] for r in read_jsonl(tmp_path / "monitor.jsonl")] == [2 * STEPS] * 3
    assert result.metrics[1]["grad_var"] > 0


@pytest.mark.parametrize("labels", [None, torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])])
def test_group_records_are_the_statistics_of_their_concatenated_estimates(labels) -> None:
    """The monitor sums each parameter's parts per group; the same as the group's estimates at once."""
    from gradest.estimators.base import PerSampleGradients
    from gradest.monitor import GradientMonitor, gradient_statistics

    model = VAE.mlp(6, (4,), 2, make_generator(0))
    gen = make_generator(1)
    grads = {n: torch.randn(8, *p.shape, generator=gen) * (1 + i) + i for i, (n, p) in
             enumerate(model.named_parameters())}
    out = grads if labels is None else PerSampleGradients(grads, torch.zeros(8), 0.0, "test", labels)
    monitor = GradientMonitor(model, estimates_fn=lambda batch, generator, repeats: out, repeats=8, batch=0)
    for record in monitor.measure(0):
        prefix = "" if record.group == "all" else record.group + "."
        flat = torch.cat([g.reshape(8, -1) for n, g in grads.items() if n.startswith(prefix)], 1)
        want = gradient_statistics(flat, labels)
        assert record.size == flat.shape[1]
        for key in want._fields:
            assert getattr(record, key) == pytest.approx(getattr(want, key), rel=1e-12), key


def test_a_non_finite_measurement_is_null_and_training_goes_on(tmp_path: Path, monkeypatch) -> None:
    from gradest.errors import NonFiniteError
    from gradest.vae import objectives

    real = objectives.OBJECTIVES["pathwise"]

    def non_finite(*args, **kwargs):
        raise NonFiniteError("the cost is NaN")

    monkeypatch.setitem(objectives.OBJECTIVES, "pathwise", real._replace(from_encoding=non_finite))
    result = train(dataclasses.replace(TINY, epochs=1), tmp_path)
    rows = read_jsonl(tmp_path / "monitor.jsonl")
    assert len(rows) == 3 and all(r["variance"] is None and r["snr"] is None for r in rows)
    assert result.metrics[0]["grad_var"] is None and math.isfinite(result.metrics[0]["test_neg_elbo"])
