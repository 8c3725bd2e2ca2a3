"""`gradest compare`: estimators side by side on one problem (a thin shell over gradest.compare)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import torch
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradest.cli.app import app
from gradest.cli.options import Device, seed_option
from gradest.costs import NAMED_COSTS, load_cost
from gradest.errors import GradestError
from gradest.estimators import available
from gradest.families import FAMILIES, get_family
from gradest.io import write_json

if TYPE_CHECKING:  # the library is imported by the command, not by `gradest --help`
    from gradest.compare import Comparison

console = Console(width=None if sys.stdout.isatty() else 130)


#: the most dimensions a --param may have (brackets nested this deep); deeper JSON would exhaust
#: Python's recursion limit, and torch stops at 64 dimensions
PARAM_MAX_DIMS = 32


def _depth(raw: str) -> int:
    depth = deepest = 0
    for char in raw:
        if char == "[":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "]":
            depth -= 1
    return deepest


def parse_param(text: str) -> tuple[str, torch.Tensor]:
    """``name=VALUE`` where VALUE is a number or a JSON list (nested for matrices)."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise GradestError(f"--param expects NAME=VALUE (e.g. loc=1 or loc=[0,1,2]), got {_short(text)!r}")
    if _depth(raw) > PARAM_MAX_DIMS:
        raise GradestError(f"--param {_short(name)}: lists nested {_depth(raw)} deep; a parameter has at "
                           f"most {PARAM_MAX_DIMS} dimensions (loc=[[0,1],[2,3]] is a 2 × 2 matrix)")
    try:
        value = json.loads(raw)
        if _has_bool(value):  # JSON true/false would pass as 1.0/0.0
            raise TypeError
        tensor = torch.tensor(value, dtype=torch.float64)
    except (json.JSONDecodeError, TypeError, ValueError, RuntimeError, RecursionError):
        raise GradestError(
            f"--param {_short(name)}: {_short(raw)!r} is not a number or a JSON list of numbers"
        ) from None
    if tensor.numel() == 0:
        raise GradestError(f"--param {_short(name)}: {_short(raw)!r} is empty; give at least one number")
    return name.strip(), tensor


def _short(text: str, limit: int = 60) -> str:
    """``text`` cut to ``limit`` characters for a one-line message (a --param can be megabytes)."""
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


def _has_bool(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, list) and any(_has_bool(v) for v in value))


def parse_params(texts: list[str]) -> dict[str, torch.Tensor]:
    """Every ``--param``; a name given twice is an error (the second would silently win)."""
    params: dict[str, torch.Tensor] = {}
    for text in texts:
        name, value = parse_param(text)
        if name in params:
            raise GradestError(f"--param {name} is given twice; give each parameter once")
        params[name] = value
    return params


def check_json_path(path: Path) -> None:
    """Refuse, before any work, a --json path that is a folder, lies under a file, or cannot be written."""
    if path.is_dir():
        raise GradestError(f"--json {path} is a folder; give a file name, e.g. {path / 'out.json'}")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise GradestError(f"--json {path} lies under {folder}, which is a file; give a path in a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise GradestError(f"--json {path}: cannot write in {folder}; give a writable location")


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
    dist: Annotated[str, typer.Option(help=f"Family: {', '.join(FAMILIES)}.")] = "normal",
    param: Annotated[
        list[str] | None,
        typer.Option(help="NAME=VALUE, repeatable; VALUE a number or JSON list (loc=[0,1,2])."),
    ] = None,
    cost: Annotated[
        str,
        typer.Option(help=(
            f"Named cost ({', '.join(f'{n}: {f}' for n, f in NAMED_COSTS.items())}), "
            "summed over coordinates; or FILE.py:FUNCTION or package.module:FUNCTION taking "
            "samples [N, ...] and returning [N]."
        )),
    ] = "cos",
    k: Annotated[float | None, typer.Option(help="Constant k of the cost (default 1).")] = None,
    estimator: Annotated[
        list[str] | None,
        typer.Option(help="Repeatable: " + "; ".join(f"{n}: {s}" for n, s in available().items())),
    ] = None,
    samples: Annotated[int, typer.Option(min=2, help="Samples per estimator.")] = 100_000,
    seed: Annotated[int, seed_option("Seed of the torch.Generator.")] = 0,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON here (atomically).")
    ] = None,
    device: Device = "cpu",
) -> None:
    """Estimate ∇θ E_p(x;θ)\\[f(x)] with several estimators and check them against the exact gradient.

    Example: gradest compare --dist normal --param loc=1 --param scale=1 --cost cos --k 2
    --estimator pathwise --estimator score --estimator score-loo --samples 100000 --json out.json
    """
    from gradest.compare import compare
    from gradest.device import resolve_device

    where = resolve_device(device)
    if json_path is not None:
        check_json_path(json_path)
    family = get_family(dist)
    params = parse_params(param or ["loc=1", "scale=1"])
    family.check(params)
    f = load_cost(cost, k)
    estimators = estimator or ["pathwise", "score", "score-loo"]
    config = {"dist": family.name, "params": {n: v.tolist() for n, v in params.items()},
              "cost": cost, "k": k, "estimators": estimators, "samples": samples, "seed": seed,
              "device": str(where)}
    with console.status("estimating…") as status:
        result = compare(f, family.build, params, estimators, samples, seed, config,
                         on_estimator=lambda name: status.update(f"estimating with {name}…"),
                         device=where)
    console.print(render(result))
    if result.exact is None:
        console.print(f"[yellow]no exact gradient:[/] {escape(result.exact_note)}")
    else:
        console.print(f"exact gradient by {result.exact.method}")
    if json_path is not None:
        try:
            write_json(json_path, result.to_dict())
        except OSError as err:
            raise GradestError(f"could not write {json_path}: {err}") from None
        console.print(escape(f"wrote {json_path}"))
