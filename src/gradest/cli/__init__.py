"""The ``gradest`` command line: parse, call the library, render. No math here."""

from __future__ import annotations

import re
import sys
import warnings

import typer

# Importing a command module registers its commands on `app`.
from gradest.cli import compare as _compare  # noqa: F401
from gradest.cli import discrete as _discrete  # noqa: F401
from gradest.cli import gaussian as _gaussian  # noqa: F401
from gradest.cli import lab as _lab  # noqa: F401
from gradest.cli import vae as _vae  # noqa: F401
from gradest.cli.app import app
from gradest.errors import GradestError

__all__ = ["app", "last_resort", "main", "one_line", "run", "usage_line"]


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


#: Click's words before a parser's message: the option's name (the first of its names) is kept
_INVALID = re.compile(r"^Invalid value for '([^']+)'(?: / '[^']+')*: ")


def usage_line(err: Exception, argv: list[str] | None = None) -> str:
    """Click's message on one line, with the command whose --help names the fix.

    ``Invalid value for '--samples': Value error, must be ≥ 2 (an integer), got '2.0'…`` becomes
    ``error: --samples must be ≥ 2 (an integer), got '2.0'… (see gradest compare --help)``.
    """
    # a parser of gradest.cli.validate raises ValueError, which the option parser reports as
    # "Invalid value for '--lr': Value error, <message>": the option and the message are worth reading
    message = " ".join(err.format_message().replace("Value error, ", "").split())
    message = _INVALID.sub(lambda m: f"{m[1]} ", message, count=1)
    if not isinstance(err, _UsageError):
        return f"error: {message}"
    ctx = getattr(err, "ctx", None)
    path = ctx.command_path if ctx is not None else _command_path(sys.argv[1:] if argv is None else argv)
    return f"error: {message} (see {path} --help)"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; bad input -> one line on stderr and exit code 2, never a traceback.

    Click runs in non-standalone mode, so its usage and range errors (unknown option, ``--samples 0``,
    ``--seed -1``) reach this one place and print one ``error:`` line instead of a framed box. Python
    warnings raised during the command (a user's cost, torch, Dask) are held back until it ends: shown
    after a run, dropped when the command ends in an ``error:`` line, which must stay the only line.
    """
    with warnings.catch_warnings(record=True) as caught:
        code = _dispatch(argv)
    if code != 2:
        for w in caught:
            typer.echo(warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line), err=True,
                       nl=False)
    return code


def _dispatch(argv: list[str] | None) -> int:
    try:
        code = app(args=argv, prog_name="gradest", standalone_mode=False)
    except GradestError as err:
        typer.echo(one_line(f"error: {err}"), err=True)
        return 2
    except _ClickException as err:
        if type(err).__name__ == "NoArgsIsHelpError":  # `gradest`, `gradest vae`: the help, as before
            if err.format_message().strip():  # Typer's rich help is already printed; Click's is the message
                typer.echo(err.format_message())
            return 2
        typer.echo(one_line(usage_line(err, argv)), err=True)
        return 2 if isinstance(err, _UsageError) else err.exit_code
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        return 1
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    except (OSError, MemoryError, RuntimeError) as err:
        line = last_resort(err)
        if line is None:
            raise
        typer.echo(one_line(line), err=True)
        return 2
    return code if isinstance(code, int) else 0


def one_line(text: str) -> str:
    """``text`` as one printable line: a line break or another control character (a path may hold
    them) is written as its escape, ``\\n``, so the error stays the one line it promises to be."""
    return "".join(c if c.isprintable() or c == " " else c.encode("unicode_escape").decode("ascii")
                   for c in text)


#: the allocator's words for a request it cannot serve (torch's CPU and CUDA allocators)
_ALLOCATOR = ("can't allocate memory", "not enough memory", "out of memory", "cannot allocate memory")


def last_resort(err: BaseException) -> str | None:
    """The ``error:`` line for a limit of the machine met during a run that no check foresaw: the
    operating system refusing a file operation (a full disk, a permission changed mid-run) or the
    allocator refusing memory. None for anything else (a bug keeps its traceback).

    Every such case is a check missing before the run; tests/test_cli_fuzz.py counts them as defects.
    """
    if isinstance(err, OSError) and not isinstance(err, ConnectionError | TimeoutError):
        where = f"{err.filename}: " if err.filename else ""
        return f"error: {where}{err.strerror or err} (the operating system refused)"
    text = str(err)
    if isinstance(err, MemoryError) or (isinstance(err, RuntimeError)
                                          and any(s in text.lower() for s in _ALLOCATOR)):
        first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
        return (f"error: out of memory ({first[:200]}); give smaller sizes (samples, batch, hidden layers) "
                "or free memory")
    return None


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())
