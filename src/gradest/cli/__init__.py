"""The ``gradest`` command line: parse, call the library, render. No math here."""

from __future__ import annotations

import sys

import typer

# Importing a command module registers its commands on `app`.
from gradest.cli import compare as _compare  # noqa: F401
from gradest.cli import discrete as _discrete  # noqa: F401
from gradest.cli import gaussian as _gaussian  # noqa: F401
from gradest.cli import lab as _lab  # noqa: F401
from gradest.cli import vae as _vae  # noqa: F401
from gradest.cli.app import app
from gradest.errors import GradestError

__all__ = ["app", "main", "run", "usage_line"]


def _click_class(name: str) -> type[Exception]:
    """Click's exception class ``name`` as the installed Typer raises it (Typer ≥ 0.20 vendors Click)."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name)


_UsageError = _click_class("UsageError")
_ClickException = _click_class("ClickException")


def _command_path(argv: list[str]) -> str:
    """``gradest vae train`` for ``["vae", "train", "--seed", …]``: the command the words name."""
    command, words = typer.main.get_command(app), ["gradest"]
    for word in argv:
        sub = getattr(command, "commands", {}).get(word)
        if sub is None:
            break
        command = sub
        words.append(word)
    return " ".join(words)


def usage_line(err: Exception, argv: list[str] | None = None) -> str:
    """Click's message on one line, with the command whose --help names the fix.

    ``Invalid value for '--samples': Input should be greater than or equal to 2`` becomes
    ``error: Invalid value for '--samples': Input should … 2 (see gradest compare --help)``.
    """
    message = " ".join(err.format_message().split())
    if not isinstance(err, _UsageError):
        return f"error: {message}"
    ctx = getattr(err, "ctx", None)
    path = ctx.command_path if ctx is not None else _command_path(sys.argv[1:] if argv is None else argv)
    return f"error: {message} (see {path} --help)"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input -> one line on stderr and exit code 2, never a traceback.

    Click runs in non-standalone mode, so its usage and range errors (unknown option, ``--samples 0``,
    ``--seed -1``) reach this one place and print one ``error:`` line instead of a framed box.
    """
    try:
        code = app(args=argv, prog_name="gradest", standalone_mode=False)
    except GradestError as err:
        typer.echo(f"error: {err}", err=True)
        return 2
    except _ClickException as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `gradest`, `gradest vae`: the help, as before
            if err.format_message().strip():  # Typer's rich help is already printed; Click's is the message
                typer.echo(err.format_message())
            return 2
        typer.echo(usage_line(err, argv), err=True)
        return 2 if isinstance(err, _UsageError) else err.exit_code
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        return 1
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    return code if isinstance(code, int) else 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
