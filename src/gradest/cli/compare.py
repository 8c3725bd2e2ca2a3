"""`gradest compare`: estimators side by side on one problem (a thin shell over gradest.compare)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradest.cli.app import app
from gradest.cli.options import THREADS_HELP, Device, seed_option, threads_option
from gradest.cli.validate import Assignment, CostSpec, Count, OutFile, Real, Text, option
from gradest.costs import NAMED_COSTS, load_cost
from gradest.errors import GradestError
from gradest.estimators import available
from gradest.families import FAMILIES, get_family
from gradest.io import write_json

if TYPE_CHECKING:  # the library is imported by the command, not by `gradest --help`
    from gradest.compare import Comparison

console = Console(width=None if sys.stdout.isatty() else 130)


def parse_params(pairs: list[tuple[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Every ``--param`` (parsed by :class:`~gradest.cli.validate.Assignment`); a name given twice is an
    error (the second would silently win)."""
    params: dict[str, torch.Tensor] = {}
    for name, value in pairs:
        if name in params:
            raise GradestError(f"--param {name} is given twice; give each parameter once")
        params[name] = value
    return params


def _cells(t: torch.Tensor | None) -> list[str]:
    if t is None:
        return []
    return [f"{v:.5g}" for v in t.detach().reshape(-1).tolist()]


def render(result: Comparison) -> Table:
    table = Table(title="∇θ E\\[f(x)]: estimates per parameter coordinate (variance of ONE sample)")
    for col in ("estimator", "param", "exact", "mean", "stderr", "z", "variance", "SNR", "µs/sample"):
        table.add_column(col, justify="left" if col in ("estimator", "param") else "right")
    for s in result.summaries:
        for name, stats in s.params.items():
            exact = result.exact.grads[name] if result.exact is not None else None
            shape = stats.mean.shape
            n = stats.mean.numel()
            cols = [_cells(exact) or ["—"] * n, _cells(stats.mean), _cells(stats.stderr),
                    _cells(stats.z) or ["—"] * n, _cells(stats.variance), _cells(stats.snr)]
            for i in range(n):
                label = name if not shape else f"{name}[{i}]"
                table.add_row(s.estimator, label, *(c[i] for c in cols),
                              f"{1e6 * s.seconds_per_sample:.3f}")
    return table


@app.command(name="compare")
def compare_command(
    dist: Annotated[str, option(Text(what="a family"), f"Family: {', '.join(FAMILIES)}.")] = "normal",
    param: Annotated[list[tuple] | None, option(
        Assignment(), "NAME=VALUE, repeatable; VALUE a number or JSON list (loc=[0,1,2]).")] = None,
    cost: Annotated[str, option(CostSpec(), (
        f"Named cost ({', '.join(f'{n}: {f}' for n, f in NAMED_COSTS.items())}), "
        "summed over coordinates; or FILE.py:FUNCTION or package.module:FUNCTION taking "
        "samples [N, ...] and returning [N]."))] = "cos",
    k: Annotated[float | None, option(Real(), "Constant k of the cost (default 1).")] = None,
    estimator: Annotated[list[str] | None, option(
        Text(what="an estimator name"),
        "Repeatable: " + "; ".join(f"{n}: {s}" for n, s in available().items()))] = None,
    samples: Annotated[int, option(Count(2), "Samples per estimator.")] = 100_000,
    seed: Annotated[int, seed_option("Seed of the torch.Generator.")] = 0,
    json_path: Annotated[Path | None, option(
        OutFile(), "Write the results as JSON here (atomically).", "--json")] = None,
    device: Device = "cpu",
    threads: Annotated[int, threads_option(THREADS_HELP)] = 0,
) -> None:
    """Estimate ∇θ E_p(x;θ)\\[f(x)] with several estimators and check them against the exact gradient.

    Example: gradest compare --dist normal --param loc=1 --param scale=1 --cost cos --k 2
    --estimator pathwise --estimator score --estimator score-loo --samples 100000 --json out.json
    """
    from gradest.compare import compare
    from gradest.device import resolve_device
    from gradest.lab.threads import intra_op_threads

    where = resolve_device(device)
    family = get_family(dist)
    params = parse_params(param or [Assignment()("loc=1"), Assignment()("scale=1")])
    family.check(params)
    f = load_cost(cost, k)
    estimators = estimator or ["pathwise", "score", "score-loo"]
    config = {"dist": family.name, "params": {n: v.tolist() for n, v in params.items()},
              "cost": cost, "k": k, "estimators": estimators, "samples": samples, "seed": seed,
              "device": str(where)}
    with intra_op_threads(threads or None), console.status("estimating…") as status:
        result = compare(f, family.build, params, estimators, samples, seed, config,
                         on_estimator=lambda name: status.update(f"estimating with {name}…"),
                         device=where)
    console.print(render(result))
    if result.exact is None:
        console.print(f"[yellow]no exact gradient:[/] {escape(result.exact_note)}")
    else:
        console.print(f"exact gradient by {result.exact.method}")
    if json_path is not None:
        write_json(json_path, result.to_dict())
        console.print(escape(f"wrote {json_path}"))
