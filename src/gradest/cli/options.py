"""Options shared by several commands (one definition, one help text)."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from typer.models import OptionInfo

from gradest.errors import GradestError
from gradest.limits import THREADS_MAX

Device = Annotated[
    str,
    typer.Option(
        help=(
            "Where the tensors live: cpu, cuda (the current GPU) or cuda:N; cuda needs a PyTorch "
            "build with CUDA and a GPU. Same seed, same numbers on a given device."
        )
    ),
]

#: One seed rule for every command: a non-negative 63-bit integer. torch seeds take any value in
#: [0, 2**64 − 1], so the commands' fixed stream offsets (seed + a few, + 7919, …) always fit.
SEED_MAX = 2**63 - 1
SEED_RANGE = "an integer from 0 to 2^63 − 1"


def _check_seed(value: int | None) -> int | None:
    if value is not None and not 0 <= value <= SEED_MAX:
        raise typer.BadParameter(f"{value} is out of range; give {SEED_RANGE} ({SEED_MAX})")
    return value


def seed_option(text: str) -> OptionInfo:
    """``--seed`` with help `text`, and the seed rule every command shares (refused outside it, exit 2)."""
    return typer.Option(help=f"{text} {SEED_RANGE[0].upper()}{SEED_RANGE[1:]}.", callback=_check_seed)


def _check_threads(value: int) -> int:
    if not 0 <= value <= THREADS_MAX:
        raise typer.BadParameter(f"{value} is out of range; give 0 (torch's default) or 1 to {THREADS_MAX} "
                                 "(4 per CPU core, at least 64)")
    return value


def threads_option(text: str) -> OptionInfo:
    """``--threads``: 0 (torch's default) or 1 … THREADS_MAX; torch crashes on a pool of 100 000."""
    return typer.Option(help=f"{text} At most {THREADS_MAX}.", callback=_check_threads)


def parse_floats(items: list[str] | None, option: str, *, finite: bool = True) -> list[float]:
    """Numbers from ``--k 0.1,1 --k 5``: comma-separated and/or repeated, every entry a number.

    An empty entry (``--k ""``, ``--k 1,,2``, ``--k 1,``) is an error, not skipped: a typo never
    silently changes the grid. ``finite``: NaN and ±inf are refused too.
    """
    out = []
    for item in items or []:
        for part in item.split(","):
            text = part.strip()
            if not text:
                raise GradestError(f"{option} {item!r} has an empty entry; give numbers separated by "
                                   f"commas, e.g. {option} 0.1,1,10")
            try:
                value = float(text)
            except ValueError:
                raise GradestError(f"{option} takes numbers separated by commas, got {text!r}") from None
            if finite and not math.isfinite(value):
                raise GradestError(f"{option} takes finite numbers, got {text!r}")
            out.append(value)
    return out
