"""`gradest sweep`, `advise`, `blr`: the estimator laboratory (thin shells over gradest.lab)."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from gradest.cli.app import app
from gradest.cli.compare import parse_params
from gradest.cli.options import (
    WORKER_WAIT,
    Device,
    Scheduler,
    Workers,
    WorkerWait,
    seed_option,
    threads_option,
)
from gradest.cli.validate import (
    Assignment,
    CostSpec,
    Count,
    Numbers,
    OutDir,
    OutFile,
    Real,
    Text,
    joined,
    option,
)
from gradest.costs import NAMED_COSTS, load_cost, probe
from gradest.errors import GradestError
from gradest.families import FAMILIES, get_family
from gradest.io import write_json
from gradest.limits import refuse_beyond_memory, refuse_beyond_time
from gradest.runs import claim

console = Console(width=None if sys.stdout.isatty() else 130)

_THREADS_HELP = ("torch intra-op threads (0: the CPUs this process may use). One by default: "
                 "these tensors are small, and on a busy machine the thread pool slows them down and makes "
                 "timings erratic.")


def _threads(value: int) -> int | None:
    return None if value == 0 else value


def _dask(workers: int | None, scheduler: str | None, wait: float):
    """The cell map of --workers / --scheduler, telling on the console what Dask is doing (waiting for
    workers, a worker lost)."""
    from gradest.parallel import cell_map

    return cell_map(workers, scheduler, worker_wait=wait,
                    on_event=lambda text: console.print(escape(text), highlight=False))


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=False)


@app.command(name="sweep")
def sweep_command(
    cost: Annotated[list[str] | None, option(
        Text(what="a cost name"),
        f"Repeatable; default square, exp, cos. One of: "
        f"{'; '.join(f'{n}: {f}' for n, f in NAMED_COSTS.items())}.")] = None,
    k: Annotated[list[tuple] | None, option(
        Numbers(Real()),
        "Values of k, comma-separated and/or repeated (default 0.1,0.5,1,2,3,5,10); e.g. "
        "--k 0.1,1,10 --k 50; negative values with =, e.g. --k=-2,0,2 (square, cos and linear; "
        "exp needs k ≥ 0).")] = None,
    param: Annotated[list[tuple] | None, option(
        Assignment(), "loc=VALUE and scale=VALUE of the Normal (default loc=1, scale=1).")] = None,
    estimator: Annotated[list[str] | None, option(
        Text(what="an estimator name"),
        "Repeatable (default pathwise, score, score-delta, mvd, mvd-uncoupled). Any registered "
        "name (see gradest compare --help), e.g. mvd-delta, score-optb, score-delta=1, with an "
        "optional sampler suffix, e.g. pathwise+antithetic, mvd+qmc; sampler cells are measured "
        "but get no exact-variance curve.")] = None,
    samples: Annotated[int, option(Count(2), "Samples per cell.")] = 100_000,
    seed: Annotated[int, seed_option("Seed of every cell's torch.Generator.")] = 0,
    out: Annotated[Path, option(OutDir(), "Output folder; a sweep already there is resumed.")] = Path(
        "gradest-out/sweep"),
    threads: Annotated[int, threads_option(_THREADS_HELP)] = 1,
    device: Device = "cpu",
    workers: Workers = None,
    scheduler: Scheduler = None,
    worker_wait: WorkerWait = WORKER_WAIT,
) -> None:
    """Single-sample gradient variance over k for costs of x ~ N(μ, σ²): the survey's Gaussian figure.

    Writes OUT/sweep.csv (one row per cost, k, parameter and estimator: measured mean and variance,
    exact gradient, exact variance by numerical integration, seconds per sample), OUT/sweep.png
    (rows μ and σ, columns the costs, log scale) and OUT/report.html. Cells already in
    OUT/sweep.csv are not measured again.

    Example: gradest sweep --cost square --cost exp --cost cos --k 0.1,0.5,1,2,3,5,10
    --param loc=1 --param scale=1 --estimator pathwise --estimator score --estimator mvd
    --samples 100000 --seed 0 --out runs/sweep (add --workers 4 to run the cells on 4 local processes)
    """
    from gradest.lab import sweep as sw

    values = {"loc": 1.0, "scale": 1.0}
    for name, tensor in parse_params(param or []).items():
        if name not in values or tensor.numel() != 1:
            raise GradestError(f"the sweep takes --param loc=NUMBER and --param scale=NUMBER, got --param "
                               f"{name}")
        values[name] = float(tensor)
    config = sw.SweepConfig(
        costs=tuple(cost or sw.DEFAULT_COSTS), ks=tuple(joined(k) or sw.DEFAULT_KS),
        loc=values["loc"], scale=values["scale"], estimators=tuple(estimator or sw.DEFAULT_ESTIMATORS),
        samples=samples, seed=seed, threads=_threads(threads), device=device,
    )
    refuse_beyond_memory("--samples", samples, 3)  # loc, scale and one draw per sample
    # every file the sweep writes, checked before the first cell: a late error leaves nothing written
    with claim(out, "sweep", sw.FILES), _dask(workers, scheduler, worker_wait) as cells, \
            _progress() as progress:
        task = progress.add_task("sweep", total=len(config.cells()))

        def on_cell(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=f"sweep: {label}")

        result = sw.run_sweep(config, out, on_cell, cell_map=cells)
    table = Table(title="Findings of Mohamed et al. (2020), checked on this sweep")
    for col in ("claim", "ours", "evidence"):
        table.add_column(col)
    for f in result.findings:
        table.add_row(f.claim, f.verdict, f.evidence)
    console.print(table)
    console.print(escape(f"wrote {result.csv}, {result.figure}, {result.report}"))


@app.command(name="advise")
def advise_command(
    dist: Annotated[str, option(Text(what="a family"), f"Family: {', '.join(FAMILIES)}.")] = "normal",
    param: Annotated[list[tuple] | None, option(
        Assignment(),
        "NAME=VALUE, repeatable; VALUE a number or JSON list (loc=[0,1,2]); shapes that broadcast "
        "(a scalar is shared). Default loc=1, scale=1 (normal only); e.g. --dist gamma --param "
        "concentration=2 --param rate=3.")] = None,
    cost: Annotated[str, option(CostSpec(), (
        f"Named cost ({', '.join(f'{n}: {f}' for n, f in NAMED_COSTS.items())}), or FILE.py:FUNCTION "
        "or package.module:FUNCTION taking samples [N, ...] and returning [N]."))] = "cos",
    k: Annotated[float | None, option(Real(), "Constant k of the cost (default 1).")] = None,
    estimator: Annotated[list[str] | None, option(
        Text(what="an estimator name"),
        "Candidates (repeatable), e.g. --estimator pathwise --estimator score-optb --estimator "
        "mvd+qmc; default every registered estimator with and without each sampler suffix "
        "(+antithetic, +qmc); those that do not apply are listed with the reason.")] = None,
    samples: Annotated[int, option(Count(2), "Pilot samples per estimator.")] = 10_000,
    seed: Annotated[int, seed_option("Seed of the torch.Generator.")] = 0,
    json_path: Annotated[Path | None, option(
        OutFile(), "Write the ranking as JSON here (atomically).", "--json")] = None,
    threads: Annotated[int, threads_option(_THREADS_HELP)] = 1,
    workers: Workers = None,
    scheduler: Scheduler = None,
    worker_wait: WorkerWait = WORKER_WAIT,
) -> None:
    """Recommend an estimator for ∇θ E_p(x;θ)[f(x)] from a pilot run of every applicable one.

    Efficiency = single-sample variance × seconds per sample (summed over parameter coordinates):
    the variance reached per second of computing; lower is better. Estimators whose pilot mean is
    biased against the exact gradient (or, without one, against pathwise) are flagged and not
    recommended.

    Example: gradest advise --dist normal --param loc=1 --param scale=1 --cost cos --k 5
    """
    from gradest.lab.selection import select

    family = get_family(dist)
    if not param and family.name != "normal":
        names = " ".join(f"--param {n}=VALUE" for n in family.param_sets[0])
        raise GradestError(f"give the parameters of {family.name}: {names}")
    params = parse_params(param or [Assignment()("loc=1"), Assignment()("scale=1")])
    family.check(params)
    f = load_cost(cost, k)
    # a cost that fails for every candidate (raises, exits, NaN, e.g. --k nan): one error line, exit 2,
    # as in compare, instead of a table of failed rows and no recommendation
    from gradest.rng import make_generator

    dist = family.build(**params)
    probe(f, dist, make_generator(seed))
    refuse_beyond_memory("--samples", samples, sum(v.numel() for v in params.values())
                         + dist.batch_shape.numel() * dist.event_shape.numel())
    with _dask(workers, scheduler, worker_wait) as cells, console.status("pilot runs…") as status:
        result = select(f, family.build, params, estimators=estimator, num_samples=samples, seed=seed,
                        on_estimator=lambda name: status.update(f"pilot run of {name}…"),
                        threads=_threads(threads), cell_map=cells)
    table = Table(title=f"Estimators ranked by efficiency (pilot: 8 batches of {samples // 2} samples "
                        "each; [95% intervals] from their spread)")
    for col in ("rank", "estimator", "variance", "µs/sample", "efficiency", "vs best", "max |z|", "note"):
        table.add_column(col, justify="left" if col in ("estimator", "note") else "right")

    def span(value: float, interval: tuple[float, float], fmt: str, scale: float = 1.0) -> str:
        lo, hi = interval
        if lo != lo or hi != hi or lo == hi:  # NaN (not measured) or a point (zero variance)
            return f"{scale * value:{fmt}}"
        return f"{scale * value:{fmt}}\n[{scale * lo:{fmt}}, {scale * hi:{fmt}}]"

    for i, c in enumerate(result.candidates, 1):
        table.add_row(str(i) if c.usable else "—", c.estimator, span(c.variance, c.variance_interval, ".4g"),
                      span(c.seconds_per_sample, c.seconds_interval, ".3f", 1e6),
                      span(c.efficiency, c.efficiency_interval, ".4g"),
                      f"{c.relative:.3g}×" if c.usable else "", f"{c.max_abs_z:.2f}", escape(c.note))
    console.print(table)
    console.print(f"[bold]recommendation:[/] {result.recommendation}")
    if result.near_tie:
        console.print(escape(f"near tie (overlapping intervals): {', '.join(result.near_tie)}"))
    console.print(escape(result.reason))
    if json_path is not None:
        write_json(json_path, result.to_dict())
        console.print(escape(f"wrote {json_path}"))


@app.command(name="blr")
def blr_command(
    estimator: Annotated[list[str] | None, option(
        Text(what="an estimator name"),
        "Repeatable; default pathwise, score, mvd, each with and without the delta-method "
        "control variate (pathwise-delta, score-delta, mvd-delta).")] = None,
    steps: Annotated[int, option(Count(1), "SGD steps (the survey: 5000).")] = 5000,
    batch: Annotated[int, option(Count(1), "Data points per step.")] = 32,
    samples: Annotated[int, option(Count(2), "Posterior samples per step.")] = 50,
    lr: Annotated[float, option(
        Real(0.0, lo_open=True), "Initial learning rate (cosine decay to 0).")] = 1e-3,
    log_every: Annotated[int, option(Count(1), "Log metrics every this many steps.")] = 10,
    variance_samples: Annotated[int, option(
        Count(2), "Single-sample estimates used to measure the gradient variance at each log.")] = 1000,
    seed: Annotated[int, seed_option(
        "Seed of the minibatches and every draw (the 80/20 split is fixed).")] = 0,
    out: Annotated[Path, option(OutDir(), "Output folder.")] = Path("gradest-out/blr"),
    threads: Annotated[int, threads_option(_THREADS_HELP)] = 1,
    workers: Workers = None,
    scheduler: Scheduler = None,
    worker_wait: WorkerWait = WORKER_WAIT,
) -> None:
    """Bayesian logistic regression on breast cancer (569 × 30) by VI, one run per estimator.

    The survey's configuration: z-scored features plus a bias column, prior N(0, I), diagonal
    Gaussian q initialised at μ = 0, log σ = 0, analytic KL, plain SGD with cosine decay, batch 32,
    50 posterior samples per step. Logs ELBO, accuracy and the gradient variance (mean and max over
    dimensions, for μ and log σ) every LOG_EVERY steps; reports held-out log-likelihood on a fixed
    20% split. Writes OUT/metrics.csv, OUT/summary.json, OUT/blr.png, OUT/report.html and
    OUT/monitor.jsonl (the gradient monitor's records per logged step: variance with its standard
    error, SNR and mean-gradient norm for μ, log σ and both). Measuring changes nothing in the run.

    Example: gradest blr --estimator pathwise --estimator score-delta --steps 500 --out runs/blr
    """
    from gradest.lab.blr import DEFAULT_ESTIMATORS, FILES, STEP_SECONDS, BLRConfig, run_blr

    config = BLRConfig(steps=steps, batch_size=batch, num_samples=samples, lr=lr, log_every=log_every,
                       variance_samples=variance_samples, seed=seed, threads=_threads(threads))
    names = list(estimator or DEFAULT_ESTIMATORS)
    refuse_beyond_time("--steps", steps, STEP_SECONDS * len(names), unit="step",
                       hint=f"{len(names)} estimator(s) train one after the other")
    start = time.perf_counter()
    with claim(out, "blr", FILES), _dask(workers, scheduler, worker_wait) as runs, _progress() as progress:
        task = progress.add_task("blr", total=steps * len(names))

        def on_step(name: str, index: int, step: int) -> None:
            progress.update(task, completed=index * steps + step, description=f"blr: {name}")

        result = run_blr(names, config, out, on_step, cell_map=runs)
    table = Table(title="Bayesian logistic regression: final metrics")
    for col in ("estimator", "ELBO", "held-out log-lik", "held-out acc", "var μ", "var log σ", "s"):
        table.add_column(col, justify="left" if col == "estimator" else "right")
    for name, s in result.summary.items():
        table.add_row(name, f"{s['elbo']:.2f}", f"{s['heldout_ll']:.4f}", f"{s['heldout_accuracy']:.3f}",
                      f"{s['var_loc']:.3g}", f"{s['var_logscale']:.3g}", f"{s['seconds']:.1f}")
    console.print(table)
    for f in result.findings:
        console.print(f"[bold]{f.verdict}[/]: {escape(f'{f.claim} ({f.evidence})')}")
    wrote = ", ".join(str(p) for p in result.paths)
    console.print(escape(f"{time.perf_counter() - start:.1f} s; wrote {wrote}"))
    if result.failed:  # the finished runs are written above; the failed ones end the command with exit 2
        name, reason = next(iter(result.failed.items()))
        more = len(result.failed) - 1
        others = f" ({more} more failed: see summary.json)" if more else ""
        raise GradestError(f"{name}: {reason}{others}; the other runs' results are in {out}")
