"""Options shared by several commands (one definition, one help text)."""

from __future__ import annotations

from typing import Annotated

import typer

Device = Annotated[
    str,
    typer.Option(
        help=(
            "Where the tensors live: cpu, cuda (the current GPU) or cuda:N; cuda needs a PyTorch "
            "build with CUDA and a GPU. Same seed, same numbers on a given device."
        )
    ),
]
