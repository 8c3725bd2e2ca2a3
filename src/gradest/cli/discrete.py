"""`gradest discrete`: the REBAR toy problem for every discrete estimator (a thin shell over
gradest.lab.discrete)."""

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
from gradest.cli.options import seed_option, threads_option
from gradest.cli.validate import Count, Numbers, OutDir, Real, Text, joined, option
from gradest.runs import claim

console = Console(width=None if sys.stdout.isatty() else 130)


@app.command(name="discrete")
def discrete_command(
    t: Annotated[list[tuple] | None, option(
        Numbers(Real()),
        "Targets t, comma-separated and/or repeated (default 0.499,0.45). At t = 0.499 the gradient is "
        "σ'(θ)·0.002: only an unbiased, low-variance estimator gets its sign.", "--t")] = None,
    bits: Annotated[list[tuple] | None, option(
        Numbers(Count(1, 1000)),  # lab.discrete.MAX_BITS (not imported here: it loads matplotlib)
        "Numbers of bits D, comma-separated and/or repeated (default 1,10,50,200; 1 to 1000). "
        "Every bit adds its cost to every other bit's learning signal.")] = None,
    estimator: Annotated[list[str] | None, option(
        Text(what="an estimator name"),
        "Repeatable (default: score, score-loo, mvd, arm, disarm, rebar, relax, gumbel-softmax=0.5, "
        "gumbel-st=0.5, straight-through). Any registered estimator that applies to Bernoulli "
        "(see gradest compare --help); enumerate with --bits up to 12.")] = None,
    samples: Annotated[int, option(
        Count(80), "Single-sample estimates per cell (t, D, estimator), drawn in 20 independent calls "
                   "(the bias's standard error comes from their means).")] = 1000,
    theta: Annotated[float, option(
        Real(-20.0, 20.0, rule="is a logit in [-20, 20] (σ(θ) inside (0, 1))"),
        "The logit θ₀ of every bit, in [-20, 20].")] = 0.0,
    sign_samples: Annotated[list[tuple] | None, option(
        Numbers(Count(1)),
        "Sample counts m for the probability that the mean of m estimates has the right sign "
        "(default 1,4,16,64; each at most samples/2).")] = None,
    relax_steps: Annotated[int, option(
        Count(0), "Training steps of RELAX's control network (16 samples each) before it is "
                  "measured.")] = 50,
    seed: Annotated[int, seed_option("Cell k draws from a generator seeded seed + k.")] = 0,
    out: Annotated[Path, option(OutDir(), "Output folder.")] = Path("gradest-out/discrete"),
    threads: Annotated[int, threads_option(
        "torch intra-op threads (0: the CPUs this process may use); one by default, these tensors "
        "are small.")] = 1,
) -> None:
    """Bias, variance and the sign of every discrete estimator on the REBAR toy problem.

    L(θ) = E_{b ~ Bernoulli(σ(θ))}[Σᵢ (bᵢ − t)²] over D independent bits, one logit θᵢ per bit, whose
    exact gradient is closed form: ∂L/∂θᵢ = σ'(θᵢ)[(1 − t)² − t²]. For each t, D and estimator it draws
    SAMPLES single-sample gradient estimates and reports the bias against the exact gradient (with its
    z-score: unbiased estimators stay within a few standard errors, the relaxed ones need not), the
    single-sample variance per coordinate (the score function's also in closed form), and the
    probability that the mean of m estimates has the right sign.

    Writes OUT/results.json (every number), OUT/discrete.png and OUT/report.html (plots, findings,
    the table).

    Example: gradest discrete --t 0.499 --t 0.45 --bits 1,10,50,200 --estimator disarm
    --estimator rebar --estimator gumbel-softmax=0.5 --samples 2000 --out runs/discrete
    """
    from gradest.lab.discrete import (
        DEFAULT_BITS,
        DEFAULT_ESTIMATORS,
        DEFAULT_SIGN_SAMPLES,
        DEFAULT_TARGETS,
        FILES,
        DiscreteConfig,
        run_discrete,
    )

    config = DiscreteConfig(
        targets=tuple(joined(t) or DEFAULT_TARGETS),
        bits=tuple(joined(bits) or DEFAULT_BITS),
        estimators=tuple(estimator or DEFAULT_ESTIMATORS),
        samples=samples, theta=theta,
        sign_samples=tuple(joined(sign_samples) or DEFAULT_SIGN_SAMPLES),
        relax_steps=relax_steps, seed=seed, threads=None if threads == 0 else threads,
    )
    start = time.perf_counter()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with claim(out, "discrete", FILES), Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("discrete", total=len(config.cells()))

        def on_cell(done: int, total: int, label: str) -> None:
            progress.update(task, completed=done, total=total, description=f"discrete: {label}")

        result = run_discrete(config, out, on_cell)
    largest = max(config.bits)
    table = Table(title=f"D = {largest}: per coordinate, N = {samples}")
    for col in ("t", "estimator", "bias", "z", "variance", f"P(sign), m = {config.sign_samples[-1]}", "s"):
        table.add_column(col, justify="left" if col == "estimator" else "right")
    for r in result.rows:
        if r.bits == largest:
            name = f"{r.estimator} (biased)" if r.biased else r.estimator
            table.add_row(f"{r.t:g}", escape(name), f"{r.bias:+.3g}", f"{r.bias_z:+.1f}", f"{r.variance:.3g}",
                          f"{r.sign[-1].probability:.3f}", f"{r.seconds:.2f}")
    console.print(table)
    from gradest.lab.discrete import summary_sentences

    for sentence in summary_sentences(result.rows, result.config):
        console.print(escape(sentence))
    wrote = ", ".join(str(p) for p in result.files.values())
    console.print(escape(f"{time.perf_counter() - start:.1f} s; wrote {wrote}"))
