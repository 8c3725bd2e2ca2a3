"""`gradest blr` measures its gradient variance with the monitor: same numbers, no effect on training."""

from __future__ import annotations

import pytest
import torch

from gradest.diagnostics import effective_variance
from gradest.estimators import get_estimator
from gradest.lab import blr
from gradest.monitor import read_jsonl
from gradest.rng import make_generator


@pytest.fixture(scope="module")
def data():
    return blr.load_data()


def test_a_score_ema_run_no_longer_depends_on_how_often_it_is_logged(data):
    """The known bug: each variance measurement advanced the moving-average baseline of training."""
    runs = {every: blr.train("score-ema", blr.BLRConfig(steps=14, log_every=every, num_samples=10,
                                                        variance_samples=40, lr=2e-4), data)
            for every in (1, 7)}
    assert runs[1].final["heldout_ll"] == runs[7].final["heldout_ll"]
    assert runs[1].final["elbo"] == runs[7].final["elbo"]
    assert list(runs[7].log["step"]) == [0, 7, 14]
    # the logged variance at a shared step is the same measurement only at step 0 (the monitor's
    # generator has been used once more in between with log_every 1); it is finite everywhere
    assert runs[1].log["var_mean_loc"][0] == runs[7].log["var_mean_loc"][0]


@pytest.mark.parametrize("name", ["pathwise", "score+antithetic"])
def test_the_logged_variance_is_the_per_sample_variance_of_before(data, name):
    """Step 0 recomputed the way blr did before the monitor: per_sample, var(0) (or the effective
    variance for dependent samples), mean and max over the dimensions."""
    config = blr.BLRConfig(steps=2, log_every=1, num_samples=10, variance_samples=40)
    run = blr.train(name, config, data)
    n, dim = data.x_train.shape
    rows = torch.randperm(n, generator=make_generator(config.seed))[: config.batch_size]
    xb, yb = data.x_train[rows], data.y_train[rows]

    def f(w):
        return n / len(rows) * blr.log_likelihood(w, xb, yb)

    zero = torch.zeros(dim, dtype=torch.float64)
    per = get_estimator(name).per_sample(f, blr.variational, {"loc": zero, "log_scale": zero},
                                         config.variance_samples, make_generator(config.seed + 2))
    for param, column in (("loc", "loc"), ("log_scale", "logscale")):
        g = per.grads[param]
        var = g.var(0) if per.groups is None else effective_variance(g, per.groups)
        assert run.log[f"var_mean_{column}"][0] == pytest.approx(float(var.mean()), rel=1e-12)
        assert run.log[f"var_max_{column}"][0] == pytest.approx(float(var.max()), rel=1e-12)
    assert {r.group for r in run.monitor} == {"loc", "log_scale", "all"}


def test_run_blr_writes_the_monitor_records(tmp_path):
    config = blr.BLRConfig(steps=4, log_every=2, num_samples=4, variance_samples=8)
    blr.run_blr(["pathwise", "score-ema"], config, tmp_path)
    rows = read_jsonl(tmp_path / "monitor.jsonl")
    assert len(rows) == 2 * 3 * 3  # estimators × logged steps (0, 2, 4) × groups
    assert {r["estimator"] for r in rows} == {"pathwise", "score-ema"}
    assert all(r["repeats"] == 8 and r["path"] == "estimates" for r in rows)
    loc = next(r for r in rows if r["group"] == "loc")
    assert loc["size"] == 31 and loc["variance"] > 0 and loc["variance_stderr"] > 0
