"""The ``gradest`` command line: parse, call the library, render. No math here."""

from __future__ import annotations

import sys

import typer

# Importing a command module registers its commands on `app`.
from gradest.cli import compare as _compare  # noqa: F401
from gradest.cli import gaussian as _gaussian  # noqa: F401
from gradest.cli import lab as _lab  # noqa: F401
from gradest.cli import vae as _vae  # noqa: F401
from gradest.cli.app import app
from gradest.errors import GradestError

__all__ = ["app", "main", "run"]


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input -> one line on stderr and exit code 2, never a traceback."""
    try:
        app(args=argv, prog_name="gradest", standalone_mode=True)
    except GradestError as err:
        typer.echo(f"error: {err}", err=True)
        return 2
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
