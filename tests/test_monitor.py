"""GradientMonitor: its statistics, its two paths, no side effects on training, and its outputs."""

from __future__ import annotations

import json
import math
import random
import sys

import numpy as np
import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

import gradest
from gradest.diagnostics import effective_variance
from gradest.errors import GradestError
from gradest.monitor import (
    GradientMonitor,
    MonitorWarning,
    gradient_statistics,
    parameter_groups,
    plot,
    read_jsonl,
)
from gradest.rng import make_generator

# ── statistics ───────────────────────────────────────────────────────────────────────────────


def test_statistics_follow_their_definitions():
    g = torch.randn(9, 7, generator=make_generator(0), dtype=torch.float64) * torch.arange(1.0, 8.0) + 0.3
    s = gradient_statistics(g)
    assert s.variance == pytest.approx(float(g.var(0, correction=1).sum()), rel=1e-13)
    assert s.variance_max == pytest.approx(float(g.var(0, correction=1).max()), rel=1e-13)
    assert s.mean_norm == pytest.approx(float(g.mean(0).norm()), rel=1e-13)
    assert s.snr == pytest.approx(s.mean_norm / math.sqrt(s.variance), rel=1e-13)
    assert s.variance_stderr > 0


def test_dependent_groups_give_the_effective_variance():
    g = torch.randn(12, 5, generator=make_generator(1), dtype=torch.float64)
    labels = torch.arange(12) // 2  # antithetic pairs
    s = gradient_statistics(g, labels)
    assert s.variance == pytest.approx(float(effective_variance(g, labels).sum()), rel=1e-12)


def test_the_standard_error_of_the_variance_is_calibrated():
    """Over 600 replications, the spread of the variance estimate vs the rms of its stderr."""
    gen = make_generator(2)
    scales = torch.linspace(0.2, 2.0, 20, dtype=torch.float64)
    estimates = [gradient_statistics(torch.randn(8, 20, generator=gen, dtype=torch.float64) * scales)
                 for _ in range(600)]
    spread = float(np.std([e.variance for e in estimates], ddof=1))
    rms = math.sqrt(np.mean([e.variance_stderr**2 for e in estimates]))
    # the relative error of a standard deviation from 600 draws is ~3%; allow 5 of those
    assert rms == pytest.approx(spread, rel=0.15)


def test_default_groups_are_top_level_children_and_all():
    model = nn.Sequential()
    model.add_module("encoder", nn.Linear(3, 2))
    model.add_module("decoder", nn.Linear(2, 3))
    model.register_parameter("log_precision", nn.Parameter(torch.zeros(3)))
    model.decoder.bias.requires_grad_(False)
    groups = parameter_groups(model)
    assert list(groups) == ["log_precision", "encoder", "decoder", "all"]  # named_parameters order
    assert list(groups["decoder"]) == ["decoder.weight"]
    assert len(groups["all"]) == 4


# ── a small model with a stochastic loss that supports repeats ────────────────────────────────


def _model(seed=0):
    gen = make_generator(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=gen, dtype=torch.float64))
    return model


def _noisy_loss(model):
    """E_ε ‖f(x) + ε·softplus(f(x)) − 1‖²: a reparameterized loss; with ``repeats``, [R] losses."""

    def loss_fn(batch, generator, repeats=None):
        h = model(batch)
        if repeats is None:
            eps = torch.randn(h.shape, generator=generator, dtype=h.dtype)
        else:  # each repeat's noise drawn in turn: the same draws as R calls
            eps = torch.stack([torch.randn(h.shape, generator=generator, dtype=h.dtype)
                               for _ in range(repeats)])
        z = h + eps * nn.functional.softplus(h)
        return ((z - 1.0) ** 2).sum(-1).mean(-1)

    return loss_fn


X = torch.randn(10, 4, generator=make_generator(5), dtype=torch.float64)


def test_vectorized_batched_and_loop_paths_give_the_same_numbers():
    model = _model()
    auto = GradientMonitor(model, _noisy_loss(model), repeats=6, seed=3)
    batched = GradientMonitor(model, _noisy_loss(model), repeats=6, seed=3, mode="batched")
    loop = GradientMonitor(model, _noisy_loss(model), repeats=6, seed=3, mode="loop")
    for step in (0, 1):  # the second measurement: the vectorized pass alone (verified on the first)
        a, b, c = auto.measure(step, X), batched.measure(step, X), loop.measure(step, X)
        assert {r.path for r in a} == {"vmap"} and {r.path for r in b} == {"batched"}
        assert {r.path for r in c} == {"loop"}
        assert [r.group for r in a] == ["0", "2", "all"]
        for x, y, z in zip(a, b, c, strict=True):
            for key in ("mean_norm", "variance", "variance_stderr", "variance_max", "snr"):
                assert getattr(x, key) == pytest.approx(getattr(z, key), rel=1e-12, abs=0)
                assert getattr(y, key) == pytest.approx(getattr(z, key), rel=1e-12, abs=0)
    assert auto.generator.get_state().equal(loop.generator.get_state())  # the same draws, in order


def test_a_loss_that_cannot_be_vectorized_is_measured_by_the_loop():
    """Global-RNG dropout, a Python branch on a value, a draw with tensor arguments: the loop runs."""
    model = _model()

    def dropout(batch, generator):
        h = nn.functional.dropout(model(batch), 0.2, training=True)
        return (h + torch.randn(h.shape, generator=generator, dtype=h.dtype)).square().sum()

    def branch(batch, generator):
        h = model(batch) + torch.randn((10, 3), generator=generator, dtype=torch.float64)
        return h.square().sum() if float(h.sum()) > -1e9 else h.sum()

    def tensor_argument(batch, generator):
        h = model(batch)
        return torch.normal(h, 1.0, generator=generator).square().sum()

    with pytest.raises(GradestError, match="mode='vmap' vectorizes a loss_fn"):
        GradientMonitor(model, estimates_fn=lambda b, g, r: {}, mode="vmap")
    for loss in (dropout, branch, tensor_argument):
        records = GradientMonitor(model, loss, repeats=3, seed=1).measure(0, X)
        assert {r.path for r in records} == {"loop"}, loss.__name__
        with pytest.raises(GradestError, match="mode='vmap'"):
            GradientMonitor(model, loss, repeats=3, seed=1, mode="vmap").measure(0, X)


def test_a_vectorized_pass_that_differs_from_the_loop_is_dropped_with_a_warning():
    """A loss that keeps state between calls (a counter it scales by): the first measurement's check
    against the loop finds it, and the loop's numbers are the ones recorded."""
    model = _model()
    calls = [0]

    def counting(batch, generator):
        calls[0] += 1
        h = model(batch) + torch.randn((10, 3), generator=generator, dtype=torch.float64)
        return calls[0] * h.square().sum()

    with pytest.warns(MonitorWarning, match="differ from the loop"):
        records = GradientMonitor(model, counting, repeats=3, seed=1).measure(0, X)
    assert {r.path for r in records} == {"loop"}


def test_a_new_batch_shape_redraws_the_record():
    model = _model()
    auto = GradientMonitor(model, _noisy_loss(model), repeats=4, seed=2)
    loop = GradientMonitor(model, _noisy_loss(model), repeats=4, seed=2, mode="loop")
    for batch in (X, X[:7], X):
        a, c = auto.measure(0, batch), loop.measure(0, batch)
        assert {r.path for r in a} == {"vmap"}
        assert [r.variance for r in a] == pytest.approx([r.variance for r in c], rel=1e-12)


def test_an_operation_without_a_batching_rule_falls_back_to_backward_passes(monkeypatch):
    model = _model()
    reference = GradientMonitor(model, _noisy_loss(model), repeats=4, seed=1, mode="loop").measure(0, X)
    grad = torch.autograd.grad

    def no_batching(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented")
        return grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_batching)
    fallback = GradientMonitor(model, _noisy_loss(model), repeats=4, seed=1, mode="batched").measure(0, X)
    assert {r.path for r in fallback} == {"batched-forward"}
    assert [r.variance for r in fallback] == pytest.approx([r.variance for r in reference], rel=1e-12)


def test_bad_input_is_refused_with_the_fix():
    model = _model()
    with pytest.raises(GradestError, match="exactly one"):
        GradientMonitor(model)
    with pytest.raises(GradestError, match="repeats must be"):
        GradientMonitor(model, _noisy_loss(model), repeats=1)
    with pytest.raises(GradestError, match="mode='batched' needs"):
        GradientMonitor(model, lambda batch, generator: model(batch).sum(), mode="batched")
    with pytest.raises(GradestError, match="must return a scalar"):
        GradientMonitor(model, lambda batch, generator: model(batch), repeats=2).measure(0, X)
    with pytest.raises(GradestError, match=r"shape \[3\]"):
        GradientMonitor(model, lambda b, generator, repeats: model(b).sum(), repeats=3).measure(0, X)
    with pytest.raises(GradestError, match="no batch"):
        GradientMonitor(model, _noisy_loss(model)).measure(0)


# ── no side effects ──────────────────────────────────────────────────────────────────────────


class Encoder(nn.Module):
    """Data -> (loc, log scale) of q(z|x), with the two layers that carry hidden state in a
    forward pass: BatchNorm (running statistics) and Dropout (the global RNG)."""

    def __init__(self, d: int, latent: int, gen: torch.Generator) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 16), nn.BatchNorm1d(16), nn.Tanh(), nn.Dropout(0.2),
                                 nn.Linear(16, 2 * latent))
        with torch.no_grad():
            for p in self.net.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))

    def forward(self, x):
        return self.net(x).chunk(2, -1)


def _train(estimator: str, monitor_kwargs: dict | None, steps: int = 12):
    """Train with gradest's surrogate; optionally with a monitor. Returns everything that could change."""
    with torch.random.fork_rng():
        torch.manual_seed(0)  # dropout's masks: the global RNG, as a user's training would use it
        random.seed(0)
        gen = make_generator(0)
        data = torch.randn(64, 5, generator=gen, dtype=torch.float64)
        target = torch.randn(3, generator=gen, dtype=torch.float64)
        model = nn.ModuleDict({"encoder": Encoder(5, 3, gen)}).double()
        model.register_parameter("log_precision", nn.Parameter(torch.zeros(3, dtype=torch.float64)))
        est = gradest.get_estimator(estimator)
        opt = torch.optim.Adam(model.parameters(), lr=0.05)

        def loss_fn(batch, generator):
            loc, log_scale = model["encoder"](batch)

            def f(z):  # one cost per datum, [N, B]
                return (model.log_precision.exp() * (z - target) ** 2 - model.log_precision).sum(-1)

            q = {"loc": loc, "scale": log_scale.exp()}
            return est.surrogate(f, lambda loc, scale: Independent(Normal(loc, scale), 1), q, 4, generator,
                                 reduction="mean")

        monitor = None if monitor_kwargs is None else \
            GradientMonitor(model, loss_fn, **({"state": [est]} | monitor_kwargs))
        for step in range(steps):
            batch = data[torch.randperm(64, generator=gen)[:16]]
            opt.zero_grad()
            loss_fn(batch, gen).backward()
            if monitor is not None:  # between backward and step: .grad must survive untouched
                monitor.step(step, batch)
            opt.step()
        return {"params": {k: v.detach().clone() for k, v in model.state_dict().items()},
                "grads": {k: p.grad.clone() for k, p in model.named_parameters()},
                "opt": opt.state_dict()["state"], "gen": gen.get_state(), "torch_rng": torch.get_rng_state(),
                "py_rng": random.random(), "baseline": vars(est.baseline).copy() if hasattr(est, "baseline")
                else None, "records": [] if monitor is None else monitor.records}


def _same(a: dict, b: dict) -> bool:
    tensors = [(a["params"][k], b["params"][k]) for k in a["params"]] + \
        [(a["grads"][k], b["grads"][k]) for k in a["grads"]] + \
        [(a["opt"][i][k], b["opt"][i][k]) for i in a["opt"] for k in a["opt"][i]] + \
        [(a["gen"], b["gen"]), (a["torch_rng"], b["torch_rng"])]
    return all(torch.equal(x, y) for x, y in tensors) and a["py_rng"] == b["py_rng"] \
        and a["baseline"] == b["baseline"]


@pytest.mark.parametrize("estimator", ["score-ema", "pathwise"])
def test_training_is_bit_for_bit_the_same_with_and_without_the_monitor(estimator):
    plain = _train(estimator, None)
    monitored = _train(estimator, {"every": 3, "repeats": 4, "seed": 7})
    assert len(monitored["records"]) == 4 * 3  # steps 0, 3, 6, 9; groups log_precision, encoder, all
    assert _same(plain, monitored)


def test_a_monitor_that_did_not_restore_the_baseline_would_change_the_run():
    """The test above has teeth: without the estimator registered, score-ema's baseline moves."""
    plain = _train("score-ema", None)
    naive = _train("score-ema", {"every": 3, "repeats": 4, "seed": 7, "state": []})
    assert not _same(plain, naive)
    # 4 measurements of 4 repeats, and the first measurement's recording call of the vectorized pass
    # (which this surrogate's checks then refuse: the loop measures)
    assert plain["baseline"]["_count"] == 12 and naive["baseline"]["_count"] == 12 + 4 * 4 + 1


def test_every_repeat_sees_the_training_baseline():
    """With the estimator registered, a moving-average baseline has the same value in all R repeats."""
    est = gradest.get_estimator("score-ema")
    seen = []
    loc = torch.zeros(2, dtype=torch.float64, requires_grad=True)

    def loss_fn(batch, generator):
        seen.append(est.baseline.value)
        return est.surrogate(lambda x: ((x - batch) ** 2).sum(-1),
                             lambda loc: Independent(Normal(loc, 1.0), 1), {"loc": loc}, 3, generator)

    loss_fn(torch.ones(2), make_generator(0))
    seen.clear()
    GradientMonitor({"loc": loc}, loss_fn, repeats=5, state=[est]).measure(0, torch.ones(2))
    assert len(set(seen)) == 1 and seen[0] != 0.0


# ── outputs ──────────────────────────────────────────────────────────────────────────────────


def test_jsonl_records_plot_and_overhead(tmp_path):
    model = _model()
    path = tmp_path / "run" / "monitor.jsonl"
    monitor = GradientMonitor(model, _noisy_loss(model), every=2, repeats=4, jsonl=path, tags={"run": "a"})
    for step in range(5):
        monitor.step(step, X)
    rows = read_jsonl(path)
    assert [(r["step"], r["group"]) for r in rows] == [(s, g) for s in (0, 2, 4) for g in ("0", "2", "all")]
    assert rows[0]["run"] == "a" and rows[0]["repeats"] == 4 and rows[0]["size"] == 30
    assert json.loads(path.read_text().splitlines()[-1])["group"] == "all"
    overhead = monitor.overhead()
    assert 0 < overhead.monitor_seconds <= overhead.total_seconds and 0 < overhead.share <= 1
    fig = plot(rows, tmp_path / "monitor.png", series=("run",))
    assert (tmp_path / "monitor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(fig.axes) == 2


def test_tensorboard_scalars_or_a_clear_skip(tmp_path, monkeypatch):
    model = _model()
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        with pytest.warns(MonitorWarning, match="gradest\\[tensorboard\\]"):
            monitor = GradientMonitor(model, _noisy_loss(model), repeats=3, tensorboard=tmp_path / "tb")
        monitor.measure(0, X)  # the other outputs work
        assert len(monitor.records) == 3
        return
    with GradientMonitor(model, _noisy_loss(model), repeats=3, tensorboard=tmp_path / "tb") as monitor:
        monitor.measure(0, X)
        monitor.measure(1, X)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"gradient/all/variance", "gradient/0/snr", "gradient/monitor_share"} <= set(tags)
    assert [e.value for e in events.Scalars("gradient/all/variance")] == pytest.approx(
        [r.variance for r in monitor.records if r.group == "all"], rel=1e-6)
    assert [e.value for e in events.Scalars("gradient/all/variance_stderr")] == pytest.approx(
        [r.variance_stderr for r in monitor.records if r.group == "all"], rel=1e-6)
    # no time has passed between the monitor's first and latest call at its first measurement: the
    # share is left out there, never logged as NaN
    shares = events.Scalars("gradient/monitor_share")
    assert [e.step for e in shares] == [1] and 0 < shares[0].value <= 1
    assert all(math.isfinite(e.value) for tag in tags for e in events.Scalars(tag))
    # and the skip, when the package is missing
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.warns(MonitorWarning, match="not installed"):
        GradientMonitor(model, _noisy_loss(model), repeats=3, tensorboard=tmp_path / "tb2")


def test_tensorboard_and_lightning_log_the_same_finite_scalars(monkeypatch):
    """Both sinks log gradest.monitor.sinks.scalars: variance_stderr included, monitor_share never NaN (left
    out where no time has passed between the monitor's first and latest call). Lightning is stood in for
    by a stub module, so the callback runs without the package."""
    import types

    class Writer:
        def __init__(self):
            self.logged = []

        def add_scalar(self, tag, value, step):
            self.logged.append((step, tag, value))

        def flush(self):
            pass

    model, writer = _model(), Writer()
    with GradientMonitor(model, _noisy_loss(model), every=1, repeats=3, tensorboard=writer) as monitor:
        monitor.step(0, X)
        monitor.step(1, X)
    assert all(math.isfinite(v) for _, _, v in writer.logged), writer.logged
    by_step = {s: {t for step, t, _ in writer.logged if step == s} for s in (0, 1)}
    assert "gradient/all/variance_stderr" in by_step[0]
    assert "gradient/monitor_share" not in by_step[0] and "gradient/monitor_share" in by_step[1]

    lightning = types.ModuleType("lightning")
    lightning.pytorch = types.ModuleType("lightning.pytorch")
    lightning.pytorch.Callback = object
    monkeypatch.setitem(sys.modules, "lightning", lightning)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", lightning.pytorch)
    monkeypatch.delitem(sys.modules, "gradest.monitor_lightning", raising=False)
    from gradest.monitor_lightning import MonitorCallback

    class Logger:
        def __init__(self):
            self.logged = []

        def log_metrics(self, metrics, step):
            self.logged.append((step, metrics))

    callback = MonitorCallback(GradientMonitor(model, _noisy_loss(model), every=1, repeats=3))
    trainer = types.SimpleNamespace(global_step=0, logger=Logger())
    for step in (0, 1):
        trainer.global_step = step
        callback.on_train_batch_start(trainer, None, X, step)
    assert all(math.isfinite(v) for _, m in trainer.logger.logged for v in m.values())
    assert set(trainer.logger.logged[1][1]) == by_step[1]
    assert by_step[0] - {"gradient/monitor_share"} <= set(trainer.logger.logged[0][1])


def test_plot_marks_a_single_measurement():
    """A group measured once is a line of one point, which draws nothing; it is drawn as a marker."""
    from gradest.monitor import plot

    fig = plot([{"step": 0, "group": "all", "variance": 1.0, "variance_stderr": 0.1, "snr": 2.0},
                {"step": 0, "group": "enc", "variance": 2.0, "variance_stderr": 0.1, "snr": 3.0},
                {"step": 5, "group": "enc", "variance": 1.5, "variance_stderr": 0.1, "snr": 3.0}])
    markers = {line.get_label(): line.get_marker() for line in fig.axes[0].get_lines()}
    assert markers == {"all": "o", "enc": "None"}


@pytest.mark.parametrize("snr", [0.0, 1.0, 1e3])
def test_float32_statistics_match_the_float64_path_to_float32_rounding(snr):
    """Float32 estimates are centred and squared in float32 (gradest.stats._cpu_sums): each statistic
    stays within what float32 rounding of the estimates allows of the float64 computation on the same
    numbers — a relative 64 ε₃₂ (1 + SNR²) for the variance, whose centring loses SNR² of the digits."""
    from gradest.stats import gradient_sums, statistics_of

    g = make_generator(9)
    # more columns than one block of the workspace, so blocks are summed
    estimates = (snr * torch.randn(70_000, generator=g) + torch.randn(16, 70_000, generator=g)).float()
    single = statistics_of([gradient_sums(estimates, None)])
    double = statistics_of([gradient_sums(estimates.double(), None)])
    eps = torch.finfo(torch.float32).eps
    assert single.mean_norm == pytest.approx(double.mean_norm, rel=64 * eps)
    assert single.variance == pytest.approx(double.variance, rel=64 * eps * (1 + snr**2))
    assert single.variance_max == pytest.approx(double.variance_max, rel=64 * eps * (1 + snr**2))
    # the variance's standard error: its O(1/R²) term from a float32 Gram product whose entries sum P
    # products, each rounded to ε₃₂, so their error grows as √P
    rel = 64 * eps * (1 + snr**2) * math.sqrt(estimates.shape[1])
    assert single.variance_stderr == pytest.approx(double.variance_stderr, rel=rel)
