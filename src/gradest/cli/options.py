"""Options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from typing import Annotated

import typer
from typer.models import OptionInfo

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
