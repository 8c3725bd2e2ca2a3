"""`gradest gaussian`: the reparameterization trick worked on fitting N(μ, σ²).

A thin shell over :mod:`gradest.gaussian`: parse, call, render.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from gradest.cli.app import app
from gradest.cli.options import THREADS_HELP, Device, seed_option, threads_option
from gradest.cli.validate import Count, InFile, OutDir, Text, option
from gradest.gaussian.settings import Settings
from gradest.limits import refuse_beyond_memory
from gradest.runs import OUTPUTS as RUN_FILES
from gradest.runs import claim

console = Console(width=None if sys.stdout.isatty() else 130)
_DEFAULTS = Settings()
#: the files the walkthrough writes into --out
OUTPUTS = RUN_FILES["gaussian"]


@app.command(name="gaussian")
def gaussian_command(
    data: Annotated[Path | None, option(
        InFile("data file"), "CSV file with a header row; without it, 100 draws from a Normal shipped with "
                            "gradest are used.")] = None,
    column: Annotated[str | None, option(
        Text(what="a column name"), "Column of --data to use (not needed for a one-column file).")] = None,
    out: Annotated[Path, option(
        OutDir(), "Folder for report.html, the PNG plots and results.json.")] = Path("gradest-out/gaussian"),
    seed: Annotated[int, seed_option("Seed of every torch.Generator used (same seed, same report).")] = 0,
    steps: Annotated[int, option(Count(1), "SGD steps per fit.")] = _DEFAULTS.steps,
    samples_per_step: Annotated[int, option(
        Count(2), "Samples of the stochastic node per SGD step, for every estimator.")
    ] = _DEFAULTS.samples_per_step,
    device: Device = "cpu",
    threads: Annotated[int, threads_option(THREADS_HELP)] = 0,
) -> None:
    """Fit N(μ, σ²) to data through a stochastic node y ~ N(μ, σ²), and answer with numbers and plots.

    For the loss f(y) = Σ_i (y − x_i)² it checks that the gradient of E f and the reparameterized
    gradient E_ε ∇f(μ + σε) agree for μ and σ (exact closed form against pathwise and score-function
    Monte Carlo, with standard errors), derives and measures each estimator's single-sample variance,
    and fits four objectives by SGD with each estimator: squared (σ collapses to 0), crps and elbo
    (which recover σ) and nll (maximum likelihood, the reference).

    Example: gradest gaussian --data heights.csv --column cm --out report-dir --seed 1
    """
    from gradest.gaussian.conclusions import fmt_at
    from gradest.gaussian.data import load_dataset
    from gradest.gaussian.report import write_outputs
    from gradest.gaussian.walkthrough import run
    from gradest.lab.threads import intra_op_threads

    dataset = load_dataset(data, column)
    settings = Settings(seed=seed, steps=steps, samples_per_step=samples_per_step, device=device).validate()
    refuse_beyond_memory("--samples-per-step", samples_per_step, 3)  # μ, σ and one draw per sample
    # each fit keeps its (μ, σ) trajectory: two float64 per step, for 7 fits (and room for the plots)
    refuse_beyond_memory("--steps", steps, per_item=8 * 2 * 7 * 4,
                         hint="the fits converge within a few thousand steps; the default is "
                              f"{_DEFAULTS.steps}")
    console.print(escape(
        f"data: n = {dataset.n}, x̄ = {fmt_at(dataset.mean, dataset.sd)}, v = {dataset.var_mle:.6g} "
        f"({dataset.described})"
    ))
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with claim(out, "gaussian", OUTPUTS), Progress(*columns, console=console, transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(label: str, done: int, total: int) -> None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=total)
            bar.update(tasks[label], completed=done)

        with intra_op_threads(threads or None):
            results = run(dataset, settings, progress)
        written = write_outputs(results, out)
    for line in results.conclusions:
        console.print(escape(f"• {line}"), highlight=False)
    console.print(escape(f"wrote {', '.join(str(p) for p in written)} in {results.seconds:.1f} s"))
