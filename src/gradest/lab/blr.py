r"""Bayesian logistic regression by variational inference: the survey's second experiment.

    ELBO(μ, ρ) = E_{q(w)}[Σ_i log σ(y±_i · x_iᵀw)] − KL(q ‖ N(0, I)),   q = N(μ, diag e^{2ρ})

with y±_i = 2y_i − 1. The expectation's gradient is estimated on a minibatch of B points scaled by
N/B, with the estimator under test (``surrogate``: value and gradient in one backward pass); the
KL term and its gradient are analytic, KL = ½ Σ_d (e^{2ρ_d} + μ_d² − 1 − 2ρ_d).

Configuration of Mohamed et al. (2020, §8.3): scikit-learn's breast-cancer data (569 × 30),
features z-scored, a bias column appended (D = 31), q initialised at μ = 0, ρ = 0, plain SGD with
learning rate 1e-3 and cosine decay over 5000 steps, batch 32, 50 samples of w per step. Here a
fixed 80/20 split (seeded, the same for every estimator and run) gives a held-out log-likelihood;
z-scoring uses the training statistics only.

Every ``log_every`` steps we log the ELBO on the whole training set (an estimate from fixed common
draws ε, so curves differ only through μ and ρ), the training accuracy of the posterior-mean
classifier, and the variance of ONE single-sample gradient estimate of the data term for μ and ρ
on that step's minibatch — its mean and maximum over the D dimensions. The variance is measured by
:class:`gradest.monitor.GradientMonitor` on ``variance_samples`` single-sample estimates of
``per_sample`` (one backward pass), which restores the estimator's state afterwards: a score-ema
baseline is advanced by training steps only, so the run does not depend on ``log_every``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.distributions import Normal

from gradest.diagnostics import to_json_value
from gradest.errors import GradestError, SampleHealthError
from gradest.estimators import get_estimator
from gradest.io import write_atomic
from gradest.lab.threads import check_threads, intra_op_threads
from gradest.limits import refuse_beyond_memory
from gradest.monitor import GradientMonitor, GroupStats
from gradest.parallel import CellMap, serial_map
from gradest.rng import make_generator
from gradest.runs import OUTPUTS

#: pathwise, score function and measure-valued, each without and with the delta-method control
DEFAULT_ESTIMATORS = ("pathwise", "pathwise-delta", "score", "score-delta", "mvd", "mvd-delta")
SPLIT_SEED = 20200401
TEST_FRACTION = 0.2
EVAL_SAMPLES = 200
PREDICTIVE_SAMPLES = 1000
#: memory a logged step holds until the run ends (its metrics and the monitor's records), generously
LOGGED_STEP_BYTES = 4096
#: the files a run writes into its output folder
FILES = OUTPUTS["blr"]
#: a lower bound of one SGD step's time (the smallest batch and sample counts take ~0.3 ms), for the
#: check that --steps can finish
STEP_SECONDS = 5e-5
LOG_COLUMNS = ("step", "elbo", "accuracy", "var_mean_loc", "var_max_loc", "var_mean_logscale",
               "var_max_logscale")


@dataclass(frozen=True)
class BLRConfig:
    steps: int = 5000
    batch_size: int = 32
    num_samples: int = 50
    lr: float = 1e-3
    log_every: int = 10
    variance_samples: int = 1000
    seed: int = 0
    #: torch intra-op threads during training (see :mod:`gradest.lab.threads`); None: unchanged
    threads: int | None = 1

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise GradestError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.num_samples < 2 or self.variance_samples < 2:
            raise GradestError("num_samples and variance_samples must be ≥ 2 (control variates "
                               "estimate their coefficients from the other samples)")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise GradestError(f"the learning rate must be a finite number > 0 (the survey's is 1e-3), "
                               f"got {self.lr}")
        check_threads(self.threads)


class BLRData(NamedTuple):
    x_train: torch.Tensor  # [N, D], z-scored with a bias column
    y_train: torch.Tensor  # [N] in {0, 1}
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_data(split_seed: int = SPLIT_SEED) -> BLRData:
    """Breast cancer (569 × 30) split 80/20 by ``split_seed``; z-scored by the training split."""
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer()
    x = torch.tensor(raw.data, dtype=torch.float64)
    y = torch.tensor(raw.target, dtype=torch.float64)
    order = torch.randperm(len(y), generator=make_generator(split_seed))
    n_test = round(TEST_FRACTION * len(y))
    test, train = order[:n_test], order[n_test:]
    mean, std = x[train].mean(0), x[train].std(0)

    def prep(rows):
        z = (x[rows] - mean) / std
        return torch.cat([z, torch.ones(len(rows), 1, dtype=torch.float64)], 1)

    return BLRData(prep(train), y[train], prep(test), y[test])


def log_bernoulli(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(y | logit) = y·l − log(1 + eˡ), elementwise and stable for large |l|."""
    # logaddexp rather than softplus or BCE-with-logits: on a busy machine those dispatch small
    # tensors to the thread pool and run ~30× slower; logaddexp stays on the calling thread.
    return y * logits - torch.logaddexp(torch.zeros((), dtype=logits.dtype), logits)


def log_likelihood(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_i log p(y_i | x_i, w) for each row of w ``[S, D]`` -> ``[S]``."""
    return log_bernoulli(w @ x.T, y).sum(1)


def kl_to_prior(loc: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, diag e^{2ρ}) ‖ N(0, I)), analytic."""
    return 0.5 * (torch.exp(2 * log_scale) + loc**2 - 1.0 - 2.0 * log_scale).sum()


def variational(loc: torch.Tensor, log_scale: torch.Tensor) -> Normal:
    """q(w) = N(μ, diag e^{2ρ}); the estimators differentiate through this builder."""
    return Normal(loc, log_scale.exp())


class BLRRun(NamedTuple):
    estimator: str
    log: dict[str, np.ndarray]  # LOG_COLUMNS -> values at the logged steps
    final: dict[str, float]
    #: the monitor's records: groups loc, log_scale and all at every logged step
    monitor: tuple[GroupStats, ...] = ()


def _elbo(loc, log_scale, data: BLRData, eps: torch.Tensor) -> float:
    w = loc + log_scale.exp() * eps
    return float(log_likelihood(w, data.x_train, data.y_train).mean() - kl_to_prior(loc, log_scale))


def _accuracy(loc: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(((x @ loc > 0).double() == y).double().mean())


def heldout(loc, log_scale, data: BLRData, generator: torch.Generator) -> tuple[float, float]:
    """Mean held-out log predictive density log E_q p(y|x, w) per point, and predictive accuracy."""
    eps = torch.randn(PREDICTIVE_SAMPLES, loc.numel(), generator=generator, dtype=torch.float64)
    w = loc + log_scale.exp() * eps
    logits = w @ data.x_test.T  # [S, n]
    logp = log_bernoulli(logits, data.y_test)
    lpd = torch.logsumexp(logp, 0) - math.log(PREDICTIVE_SAMPLES)
    prob = torch.sigmoid(logits).mean(0)
    return float(lpd.mean()), float(((prob > 0.5).double() == data.y_test).double().mean())


def train(
    estimator: str,
    config: BLRConfig,
    data: BLRData,
    on_step: Callable[[int], None] | None = None,
) -> BLRRun:
    """SGD on −ELBO with the gradient of the data term from ``estimator``; returns the log."""
    est = get_estimator(estimator)
    n, dim = data.x_train.shape
    gen = make_generator(config.seed)
    loc = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    log_scale = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    # Common draws for the logged ELBO: curves of different estimators compare like with like.
    eval_eps = torch.randn(EVAL_SAMPLES, dim, generator=make_generator(config.seed + 1), dtype=torch.float64)
    monitor = GradientMonitor(
        {"loc": loc, "log_scale": log_scale},
        estimates_fn=lambda f, generator, repeats: est.per_sample(
            f, variational, {"loc": loc.detach(), "log_scale": log_scale.detach()}, repeats, generator),
        repeats=config.variance_samples, every=config.log_every, seed=make_generator(config.seed + 2),
        state=[est])
    log: dict[str, list[float]] = {c: [] for c in LOG_COLUMNS}
    start = time.perf_counter()
    step = 0
    try:
        for step in range(config.steps + 1):
            batch = torch.randperm(n, generator=gen)[: config.batch_size]
            xb, yb = data.x_train[batch], data.y_train[batch]
            scale = n / len(batch)

            def f(w, xb=xb, yb=yb, scale=scale):
                return scale * log_likelihood(w, xb, yb)

            if step % config.log_every == 0 or step == config.steps:
                _log(log, step, monitor.measure(step, f), loc, log_scale, data, eval_eps)
            if step == config.steps:
                break
            lr = config.lr * 0.5 * (1.0 + math.cos(math.pi * step / config.steps))
            objective = est.surrogate(f, variational, {"loc": loc, "log_scale": log_scale},
                                      config.num_samples, gen) - kl_to_prior(loc, log_scale)
            grad_loc, grad_ls = torch.autograd.grad(-objective, [loc, log_scale])
            with torch.no_grad():
                loc -= lr * grad_loc
                log_scale -= lr * grad_ls
                scale = log_scale.exp()
                if not (torch.isfinite(loc).all() and torch.isfinite(scale).all() and (scale > 0).all()):
                    raise GradestError(
                        f"training with {est.name} diverged at step {step + 1}: the variational mean or "
                        f"scale left the floating-point range; use a smaller --lr than {config.lr:g} "
                        "(the survey's is 1e-3)"
                    )
            if on_step is not None:
                on_step(step + 1)
    except SampleHealthError as err:  # the draws left the family's reliable range: the run diverged
        raise GradestError(f"training with {est.name} diverged at step {step + 1} (use a smaller --lr than "
                           f"{config.lr:g}): {err}") from None
    seconds = time.perf_counter() - start
    with torch.no_grad():
        ll, acc = heldout(loc.detach(), log_scale.detach(), data, make_generator(config.seed + 3))
    arrays = {k: np.asarray(v, dtype=float) for k, v in log.items()}
    final = {
        "elbo": float(arrays["elbo"][-1]),
        "accuracy": float(arrays["accuracy"][-1]),
        "heldout_ll": ll,
        "heldout_accuracy": acc,
        # averaged over the logged steps, as the survey's comparison of variances is over training
        "var_loc": float(np.mean(arrays["var_mean_loc"])),
        "var_logscale": float(np.mean(arrays["var_mean_logscale"])),
        "seconds": seconds,
        "steps": config.steps,
    }
    return BLRRun(est.name, arrays, final, tuple(monitor.records))


def _log(log, step, records: list[GroupStats], loc, log_scale, data, eval_eps) -> None:
    with torch.no_grad():
        elbo = _elbo(loc, log_scale, data, eval_eps)
        acc = _accuracy(loc, data.x_train, data.y_train)
    # the monitor's variance is the trace over a group's coordinates; dependent samples
    # (antithetic, QMC) give the i.i.d.-equivalent variance
    var = {r.group: r for r in records}
    for key, value in (("step", step), ("elbo", elbo), ("accuracy", acc),
                       ("var_mean_loc", var["loc"].variance / var["loc"].size),
                       ("var_max_loc", var["loc"].variance_max),
                       ("var_mean_logscale", var["log_scale"].variance / var["log_scale"].size),
                       ("var_max_logscale", var["log_scale"].variance_max)):
        log[key].append(value)


class BLRResult(NamedTuple):
    runs: list[BLRRun]
    summary: dict[str, dict[str, float]]
    findings: list
    paths: list[Path]
    #: estimator -> why its run failed (diverged, NaN): the other runs are kept and written
    failed: dict[str, str]


class _Failed(NamedTuple):
    estimator: str
    reason: str


def metrics_csv(runs: Sequence[BLRRun]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("estimator", *LOG_COLUMNS))
    for run in runs:
        for i in range(len(run.log["step"])):
            writer.writerow((run.estimator, int(run.log["step"][i]),
                             *(repr(float(run.log[c][i])) for c in LOG_COLUMNS[1:])))
    return buf.getvalue()


def _train_cell(name: str, config: BLRConfig, data: BLRData,
                on_step: Callable[[int], None] | None = None) -> BLRRun | _Failed:
    """One estimator's run, or why it failed (a diverged run is a result, not the end of the others)."""
    with intra_op_threads(config.threads):
        try:
            return train(name, config, data, on_step)
        except GradestError as err:
            return _Failed(name, str(err))


def run_blr(
    estimators: Sequence[str],
    config: BLRConfig,
    out_dir: Path,
    on_step: Callable[[str, int, int], None] | None = None,
    cell_map: CellMap = serial_map,
) -> BLRResult:
    """Train once per estimator; write metrics.csv, summary.json, blr.png, report.html and
    monitor.jsonl (the gradient monitor's records: variance, its standard error and SNR per group).

    ``cell_map`` runs the trainings (:mod:`gradest.parallel`): here one after the other, or one
    Dask task per estimator, with the same numbers (only the seconds differ)."""
    from gradest import report as rp
    from gradest.lab.findings import blr_findings
    from gradest.lab.plots import blr_figure
    from gradest.lab.report import blr_page

    if not estimators:
        raise GradestError("give at least one estimator")
    out_dir = Path(out_dir)
    for above in (out_dir, *out_dir.parents):
        if above.exists() and not above.is_dir():
            raise GradestError(f"--out {out_dir}: {above} is a file, not a folder; choose a folder")
    repeated = sorted({n for n in estimators if list(estimators).count(n) > 1})
    if repeated:
        raise GradestError(f"estimator {repeated[0]!r} is given twice; give each estimator once")
    for name in estimators:
        est = get_estimator(name)  # fail on a bad name or sample count before any training
        counts = (("--samples", config.num_samples), ("--variance-samples", config.variance_samples))
        for what, count in counts:
            try:
                est.check_samples(count)
            except GradestError as err:
                raise GradestError(f"{name} with {what} {count}: {err}") from None
    start = time.perf_counter()
    data = load_data()
    n_train, dim = data.x_train.shape
    if config.batch_size > n_train:
        raise GradestError(f"--batch {config.batch_size} exceeds the {n_train} training points; give at "
                           f"most {n_train} (--batch {n_train} is full-batch gradient descent)")
    # a step holds, per sample, w and its per-sample gradients (3 × D numbers) and the batch's logits
    numbers = 3 * dim + config.batch_size
    refuse_beyond_memory("--samples", config.num_samples, numbers)
    refuse_beyond_memory("--variance-samples", config.variance_samples, numbers)
    # every logged step keeps its metrics and the monitor's three group records, per estimator
    per_step = LOGGED_STEP_BYTES * len(estimators) / config.log_every
    refuse_beyond_memory("--steps", config.steps, per_item=per_step,
                         hint=f"or raise --log-every: {config.log_every} keeps a record every "
                              f"{config.log_every} steps")
    outcomes = []
    if cell_map is serial_map:
        for index, name in enumerate(estimators):
            def step_cb(step, name=name, index=index):
                if on_step is not None:
                    on_step(name, index, step)

            outcomes.append(_train_cell(name, config, data, step_cb))
    else:
        # each run is seeded by config.seed alone: on a worker it gives the serial run's numbers;
        # progress is reported per finished run (a worker's steps are not seen from here)
        results = cell_map(_train_cell, [(name, config, data) for name in estimators])
        for index, (name, run) in enumerate(zip(estimators, results, strict=True)):
            outcomes.append(run)
            if on_step is not None:
                on_step(name, index, config.steps)
    runs = [r for r in outcomes if isinstance(r, BLRRun)]
    failed = {r.estimator: r.reason for r in outcomes if isinstance(r, _Failed)}
    if not runs:  # nothing to keep: the first failure is the answer
        raise GradestError(next(iter(failed.values())))
    summary = {r.estimator: r.final for r in runs}
    findings = blr_findings(summary)
    out_dir = Path(out_dir)
    png = rp.png_bytes(blr_figure({r.estimator: r.log for r in runs}))
    seconds = time.perf_counter() - start
    cfg = asdict(config) | {"data": f"breast cancer, {len(data.y_train)} train / {len(data.y_test)} "
                                    f"held out (split seed {SPLIT_SEED})"}
    paths = [
        write_atomic(out_dir / "metrics.csv", metrics_csv(runs)),
        write_atomic(out_dir / "summary.json", json.dumps(
            {"config": cfg, "seconds": seconds,
             "summary": {e: {k: to_json_value(v) for k, v in s.items()} for e, s in summary.items()},
             "failed": failed,
             "findings": [f._asdict() for f in findings]}, indent=2, allow_nan=False) + "\n"),
        write_atomic(out_dir / "blr.png", png),
        write_atomic(out_dir / "report.html", blr_page(cfg, summary, png, findings, seconds)),
        write_atomic(out_dir / "monitor.jsonl", "".join(
            json.dumps(r.to_json({"estimator": run.estimator}), allow_nan=False) + "\n"
            for run in runs for r in run.monitor)),
    ]
    return BLRResult(runs, summary, findings, paths, failed)
