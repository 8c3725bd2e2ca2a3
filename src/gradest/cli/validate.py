"""The command line's one validation layer: every option's text becomes a typed, checked value here.

Each option of every command names one of these parsers (``typer.Option(parser=Count(2))``); the
parser turns the text into the value the command receives or raises ``ValueError`` with the fix, which
the command line prints after the option's name as one ``error:`` line with exit code 2
(``error: --samples must be an integer ≥ 2, got '2.0'…``), before any work and before anything is
written. Defaults go through the same parser, so a default is held to the rule a typed value is.

==============  ======================================================================================
parser          what it accepts
==============  ======================================================================================
Count           an integer spelled as one (``2.0``, ``1e3``, ``0x10`` are refused), within its range
Real            a decimal number within its range; NaN and ±inf only where asked for
Seed            the one seed rule: an integer from 0 to 2^63 − 1
DeviceName      cpu, cuda, cuda:N that exists on this machine (:func:`gradest.device.resolve_device`)
Address         a Dask scheduler address ``[tcp://]HOST:PORT`` (also tls://, ws://, wss://)
AnyPath         a path the file system can take, opened (and checked) by the library
OutDir          a folder to write a run into (the run's ownership is claimed later: gradest.runs)
OutFile         a file to write (``--json``): not a folder, not a special file, not another run's file
InFile          a regular, readable file (a FIFO or a device would block or never end)
InDir           a readable folder
CostSpec        a named cost, FILE.py:FUNCTION (the file checked as InFile) or package.module:FUNCTION
DatasetSpec     digits, mnist5k or mnist:DIR (DIR checked as InDir)
Choice          one of a fixed set of words
Text            a name checked by the library later (an estimator, a family, a column): bounded, printable
Numbers         comma-separated numbers (``--k 0.1,1,10``), each as Real or Count
Assignment      NAME=VALUE with VALUE a number or a JSON list of numbers (``--param loc=[0,1]``)
==============  ======================================================================================

Every path is checked against the limits of the machine first (:func:`check_path`): not empty, no NUL
byte, each component within the file system's name length (255 bytes on most), the whole within
PATH_MAX; a path the file system would refuse later is refused here, by name. Limits that depend on
several options at once (memory for N samples of D numbers, time for E epochs of S steps) are checked
by the commands through :mod:`gradest.limits`, still before any work.

A new option gets this contract by construction: tests/test_cli_validate.py walks every command and
fails for any option whose value does not pass through one of these parsers.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: the one seed rule: a non-negative 63-bit integer; torch seeds take any value in [0, 2^64 − 1], so the
#: commands' fixed stream offsets (seed + a few, + 7919, …) always fit
SEED_MAX = 2**63 - 1
SEED_RANGE = "an integer from 0 to 2^63 − 1"
#: the largest count any option takes: torch sizes and indices are 64-bit signed integers
COUNT_MAX = 2**63 - 1
#: the most characters of a value echoed in a message (a value can be megabytes long)
SHOWN = 60
#: the most characters a name (an estimator, a family, a column) may have
TEXT_MAX = 1000
#: POSIX's fallbacks where the file system does not say
NAME_MAX_DEFAULT = 255
PATH_MAX_DEFAULT = 4096

_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_SPECIAL = re.compile(r"[+-]?(?:inf|infinity|nan)", re.IGNORECASE)
_DIGITS_MAX = 30  # more digits than any count fits: refused before int() parses a megabyte of them


def shown(text: Any) -> str:
    """``text`` quoted for a one-line message, cut to :data:`SHOWN` characters, control and undecodable
    characters escaped (a message must stay one printable line)."""
    text = str(text)
    cut = text if len(text) <= SHOWN else f"{text[:SHOWN - 1]}…"
    return repr(cut)


class Parser:
    """A value's rule: ``parser(text) -> value`` or ``ValueError`` naming the fix.

    Typer hands a parser the text typed on the command line, and the declared default (already typed)
    when the option is not given; both go through :meth:`parse` as text.
    """

    metavar = "TEXT"

    def __call__(self, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bytes):  # argv that is not valid text in the locale
            value = os.fsdecode(value)
        return self.parse(value if isinstance(value, str) else _text_of(value))

    def parse(self, text: str) -> Any:
        raise NotImplementedError


def _text_of(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)


class Count(Parser):
    """An integer from ``lo`` to ``hi`` written as an integer: ``2``, ``+2``, ``1000000``.

    ``2.0``, ``1e3``, ``0x10``, ``1_000`` and non-ASCII digits are refused: a count is typed as one,
    and a float that happens to be whole is more often a typo for another option's value.
    """

    metavar = "N"

    def __init__(self, lo: int = 1, hi: int = COUNT_MAX, *, meaning: str = "",
                 rule: str | None = None) -> None:
        self.lo, self.hi, self.meaning, self.rule = lo, hi, meaning, rule

    def range_text(self) -> str:
        if self.hi >= COUNT_MAX:
            return f"≥ {self.lo} (an integer)"
        return f"an integer from {self.lo} to {self.hi}"

    def parse(self, text: str) -> int:
        rule = self.rule or f"must be {self.range_text()}{self.meaning}"
        word = text.strip()
        if not _INTEGER.fullmatch(word):
            if _DECIMAL.fullmatch(word) and _whole(word):
                raise ValueError(f"{rule}, got {shown(text)}: write it as the integer {int(float(word))}")
            raise ValueError(f"{rule}, got {shown(text)}")
        digits = word.lstrip("+-").lstrip("0")
        if len(digits) > _DIGITS_MAX:
            raise ValueError(f"{rule}, got {shown(text)}, which is out of range")
        value = int(word)
        if not self.lo <= value <= self.hi:
            raise ValueError(f"{rule}, got {value}")
        return value


def _whole(word: str) -> bool:
    try:
        value = float(word)
    except (ValueError, OverflowError):
        return False
    return math.isfinite(value) and value == int(value) and abs(value) < 1e30


class Seed(Count):
    """The seed every command shares: an integer from 0 to 2^63 − 1."""

    metavar = "SEED"

    def __init__(self) -> None:
        super().__init__(0, SEED_MAX)

    def range_text(self) -> str:
        return f"{SEED_RANGE} ({SEED_MAX})"


class Real(Parser):
    """A decimal number in [lo, hi] (an end is excluded with ``lo_open``/``hi_open``).

    ``finite``: NaN and ±inf are refused (the default). Hexadecimal floats, ``1_0`` and non-ASCII
    digits are refused.
    """

    metavar = "X"

    def __init__(self, lo: float = -math.inf, hi: float = math.inf, *, lo_open: bool = False,
                 hi_open: bool = False, finite: bool = True, meaning: str = "",
                 rule: str | None = None) -> None:
        self.lo, self.hi, self.lo_open, self.hi_open = lo, hi, lo_open, hi_open
        self.finite, self.meaning, self.rule = finite, meaning, rule

    def range_text(self) -> str:
        kind = "finite number" if self.finite else "number"
        if self.lo == 0 and self.lo_open:
            kind = f"a positive {kind}"
            return kind if self.hi == math.inf else f"{kind} ≤ {self.hi:g}"
        if self.lo == -math.inf and self.hi == math.inf:
            return f"a {kind}"
        if self.hi == math.inf:
            return f"a {kind} {'>' if self.lo_open else '≥'} {self.lo:g}"
        if self.lo == -math.inf:
            return f"a {kind} {'<' if self.hi_open else '≤'} {self.hi:g}"
        return (f"a number in {'(' if self.lo_open else '['}{self.lo:g}, {self.hi:g}"
                f"{')' if self.hi_open else ']'}")

    def parse(self, text: str) -> float:
        rule = self.rule or f"must be {self.range_text()}{self.meaning}"
        word = text.strip()
        if _SPECIAL.fullmatch(word):
            value = float(word)
            if self.finite:
                raise ValueError(f"{rule}, got {shown(text)}")
            return value
        if not _DECIMAL.fullmatch(word):
            raise ValueError(f"{rule}, got {shown(text)}, which is not a number")
        value = float(word)  # a decimal beyond float64 is ±inf, below it 0.0
        if self.finite and not math.isfinite(value):
            raise ValueError(f"{rule}, got {shown(text)}, beyond float64's range")
        below = value < self.lo or (self.lo_open and value == self.lo)
        above = value > self.hi or (self.hi_open and value == self.hi)
        if below or above:
            raise ValueError(f"{rule}, got {shown(text)}")
        return value


class Choice(Parser):
    """One of ``words`` (case-sensitive)."""

    def __init__(self, words: Sequence[str]) -> None:
        self.words = tuple(words)
        self.metavar = "|".join(self.words).upper() if len(self.words) <= 4 else "NAME"

    def parse(self, text: str) -> str:
        if text not in self.words:
            raise ValueError(f"must be one of {', '.join(self.words)}, got {shown(text)}")
        return text


class Text(Parser):
    """A name the library checks against its registry later (an estimator, a family, a column):
    non-empty unless ``empty``, at most :data:`TEXT_MAX` characters, no NUL or line breaks."""

    metavar = "NAME"

    def __init__(self, *, empty: bool = False, what: str = "a name") -> None:
        self.empty, self.what = empty, what

    def parse(self, text: str) -> str:
        if not text.strip() and not self.empty:
            raise ValueError(f"must be {self.what}, got an empty value")
        if len(text) > TEXT_MAX:
            raise ValueError(f"must be {self.what} of at most {TEXT_MAX} characters, got {len(text)}")
        if any(c in text for c in "\x00\r\n"):
            raise ValueError(f"must be {self.what} on one line, got {shown(text)} (a NUL byte or a line "
                             "break)")
        return text


class DeviceName(Parser):
    """cpu, cuda or cuda:N, checked to exist here (:func:`gradest.device.resolve_device`)."""

    metavar = "DEVICE"

    def parse(self, text: str) -> str:
        from gradest.device import resolve_device
        from gradest.errors import GradestError

        try:
            resolve_device(text)
        except GradestError as err:  # its message names the option already
            raise ValueError(str(err).removeprefix("--device ")) from None
        return text


# --- Dask scheduler addresses -------------------------------------------------------------------------

_SCHEMES = ("tcp", "tls", "ws", "wss", "ucx")
_HOST = re.compile(r"(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                   r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)")


class Address(Parser):
    """A Dask scheduler address, ``tcp://HOST:PORT`` (``HOST:PORT`` means tcp; tls://, ws://, wss://,
    ucx:// too): the scheme, a host name or IP address, and a port from 1 to 65535; or the
    ``inproc://`` address of a scheduler in this process."""

    metavar = "ADDRESS"

    def parse(self, text: str) -> str:
        example = "give the scheduler's address as dask scheduler prints it, e.g. tcp://10.0.0.5:8786"
        scheme, sep, rest = text.strip().partition("://")
        if scheme == "inproc" and re.fullmatch(r"[^\s/]+(?:/[0-9]+)+", rest):
            return text.strip()  # a scheduler in this process (inproc://HOST/PID/N), as tests start one
        if not sep:
            scheme, rest = "tcp", text.strip()
        if scheme not in _SCHEMES:
            raise ValueError(f"{shown(text)}: unknown protocol {shown(scheme)} (gradest connects by "
                             f"{', '.join(_SCHEMES)}); {example}")
        host, colon, port = rest.rpartition(":")
        if not colon or not host:
            raise ValueError(f"{shown(text)} has no port number; {example}")
        if not _HOST.fullmatch(host) or len(host) > 253:
            raise ValueError(f"{shown(text)}: {shown(host)} is not a host name or IP address; {example}")
        if not _INTEGER.fullmatch(port) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{shown(text)}: the port {shown(port)} is not a number from 1 to 65535; "
                             f"{example}")
        return f"{scheme}://{host}:{int(port)}"


# --- paths -----------------------------------------------------------------------------------------------


def _existing_ancestor(path: Path) -> Path:
    """The nearest of ``path`` and its parents that exists (the current folder for a relative path)."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return candidate
        except OSError:
            continue
    return Path.cwd()


def _limit(path: Path, name: str, default: int) -> int:
    try:
        return int(os.pathconf(_existing_ancestor(path), name))
    except (OSError, ValueError, AttributeError):
        return default


def check_path(text: str) -> Path:
    """``text`` as a :class:`Path` the file system can take, or ``ValueError`` naming the part it cannot.

    Refused: an empty path (it would mean the current folder), a NUL byte, characters that are not
    valid text (undecodable bytes), a component over the file system's name limit (NAME_MAX, 255 bytes
    on most), a path over PATH_MAX bytes.
    """
    if not text or not text.strip():
        raise ValueError(f"{shown(text)} is an empty path; give a file or folder name (. for the current "
                         "folder)")
    if "\x00" in text:
        raise ValueError(f"{shown(text)} holds a NUL byte, which no file name can")
    try:
        encoded = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{shown(text)} is not valid UTF-8 text (undecodable bytes); rename the "
                         "file or folder, or give another path") from None
    path = Path(text).expanduser()
    name_max = _limit(path, "PC_NAME_MAX", NAME_MAX_DEFAULT)
    for part in path.parts:
        size = len(os.fsencode(part))
        if size > name_max:
            raise ValueError(f"{shown(text)}: the name {shown(part)} is {size} bytes long; this file system "
                             f"takes names of at most {name_max} bytes: give a shorter one")
    path_max = _limit(path, "PC_PATH_MAX", PATH_MAX_DEFAULT)
    if len(encoded) >= path_max:
        raise ValueError(f"{shown(text)} is {len(encoded)} bytes long; this file system takes paths of "
                         f"fewer than {path_max} bytes: give a shorter one")
    return path


def _stat(path: Path) -> os.stat_result | None:
    """``path``'s status (following links), None if it does not exist; other failures are one line."""
    try:
        return path.stat()
    except FileNotFoundError:
        return None
    except NotADirectoryError:
        blocked = _blocking_file(path)
        raise ValueError(f"{shown(path)}: {shown(blocked)} is a file, not a folder") from None
    except OSError as err:
        raise ValueError(f"{shown(path)}: {err.strerror or err}") from None


def _blocking_file(path: Path) -> Path | None:
    """The first of ``path``'s parents that exists and is not a folder."""
    for parent in reversed(path.parents):
        try:
            if parent.exists() and not parent.is_dir():
                return parent
        except OSError:
            return parent
    return None


def _check_writable_location(path: Path) -> None:
    """Refuse a path that lies under a file or whose nearest existing folder cannot be written."""
    blocked = _blocking_file(path)
    if blocked is not None:
        raise ValueError(f"{shown(path)} lies under {shown(blocked)}, which is a file, not a folder")
    folder = _existing_ancestor(path.parent if path.parent != path else path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{shown(path)}: cannot write in {shown(folder)} (permission denied); "
                         "give a writable location")


class AnyPath(Parser):
    """A path the file system can take (:func:`check_path`), whose existence and kind the library checks
    when it opens it (a run folder: ``holds no checkpoint.pt``)."""

    def __init__(self, metavar: str = "PATH") -> None:
        self.metavar = metavar

    def parse(self, text: str) -> Path:
        return check_path(text)


class OutDir(Parser):
    """A folder a run writes into: created if missing; an existing file, or a path under one, is
    refused, as is a folder that cannot be written. Which run owns it is settled by
    :func:`gradest.runs.claim` when the run starts."""

    metavar = "DIR"

    def parse(self, text: str) -> Path:
        path = check_path(text)
        status = _stat(path)
        if status is not None and not stat.S_ISDIR(status.st_mode):
            raise ValueError(f"{shown(path)} is a file, not a folder; give a folder for the run's files")
        if status is None:
            _check_writable_location(path)
        elif not os.access(path, os.W_OK | os.X_OK):
            raise ValueError(f"{shown(path)}: cannot write in this folder (permission denied)")
        return path


class OutFile(Parser):
    """A file to write (``--json``): not a folder, not a special file (a device, a pipe: an atomic write
    replaces the target), in a writable folder, and not a file of another run's folder
    (:func:`gradest.runs.check_file_target`)."""

    metavar = "FILE"

    def parse(self, text: str) -> Path:
        from gradest.runs import check_file_target

        path = check_path(text)
        status = _stat(path)
        if status is not None and stat.S_ISDIR(status.st_mode):
            raise ValueError(f"{shown(path)} is a folder; give a file name, e.g. {shown(path / 'out.json')}")
        if status is not None and not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{shown(path)} is a special file (a device or a pipe), which an atomic write "
                             "would replace; give a regular file path")
        _check_writable_location(path)
        try:
            check_file_target(path)
        except ValueError as err:  # GradestError
            raise ValueError(str(err)) from None
        return path


class InFile(Parser):
    """A regular file that can be read: a folder, a device or a pipe (which would block a read forever,
    or never end) is refused, as is a file without read permission."""

    metavar = "FILE"

    def __init__(self, what: str = "file") -> None:
        self.what = what

    def parse(self, text: str) -> Path:
        path = check_path(text)
        status = _stat(path)
        if status is None:
            raise ValueError(f"{shown(path)}: {self.what} not found (it does not exist)")
        if stat.S_ISDIR(status.st_mode):
            raise ValueError(f"{shown(path)} is a folder; give the {self.what} inside it")
        if not stat.S_ISREG(status.st_mode):
            raise ValueError(f"{shown(path)} is not a regular file (a device, a pipe or a socket); "
                             f"give a {self.what}")
        if not os.access(path, os.R_OK):
            raise ValueError(f"{shown(path)} cannot be read (permission denied)")
        return path


class InDir(Parser):
    """A folder that exists and can be listed and read."""

    metavar = "DIR"

    def __init__(self, what: str = "folder") -> None:
        self.what = what

    def parse(self, text: str) -> Path:
        path = check_path(text)
        status = _stat(path)
        if status is None:
            raise ValueError(f"{shown(path)} is not a directory (it does not exist); give a {self.what}")
        if not stat.S_ISDIR(status.st_mode):
            raise ValueError(f"{shown(path)} is not a directory; give a {self.what}")
        if not os.access(path, os.R_OK | os.X_OK):
            raise ValueError(f"{shown(path)} cannot be read (permission denied)")
        return path


def option(parser: Parser, help: str, *names: str, **kwargs: Any):
    """``typer.Option`` whose value goes through ``parser`` (and shows its metavar in --help)."""
    import typer

    return typer.Option(*names, help=help, parser=parser, metavar=parser.metavar, **kwargs)


def argument(parser: Parser, help: str, **kwargs: Any):
    """``typer.Argument`` whose value goes through ``parser``."""
    import typer

    return typer.Argument(help=help, parser=parser, metavar=parser.metavar, **kwargs)


# --- composite values --------------------------------------------------------------------------------

_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


class CostSpec(Parser):
    """A named cost (checked by :func:`gradest.costs.load_cost`), ``FILE.py:FUNCTION`` (FILE checked as
    :class:`InFile`) or ``package.module:FUNCTION``."""

    metavar = "COST"

    def parse(self, text: str) -> str:
        Text(what="a cost").parse(text)
        if ":" not in text:
            return text
        target, _, function = text.rpartition(":")
        form = "give FILE.py:FUNCTION (e.g. ./mycost.py:f) or package.module:FUNCTION, or a named cost"
        if not function.isidentifier():
            raise ValueError(f"{shown(text)}: {shown(function)} is not a function name; {form}")
        if target.endswith(".py"):
            InFile("cost file").parse(target)
        elif not _MODULE.fullmatch(target):
            raise ValueError(f"{shown(text)}: {shown(target)} is neither a FILE.py nor a module name; {form}")
        return text


class DatasetSpec(Parser):
    """digits, mnist5k, or mnist:DIR with DIR a readable folder (its four IDX files are read later)."""

    metavar = "DATASET"
    NAMES = ("digits", "mnist5k")

    def parse(self, text: str) -> str:
        if text in self.NAMES:
            return text
        if text.startswith("mnist:"):
            try:
                InDir("folder holding the four MNIST IDX files").parse(text.removeprefix("mnist:"))
            except ValueError as err:
                raise ValueError(f"mnist:{err}") from None
            return text
        raise ValueError(f"is unknown, got {shown(text)}; choose digits, mnist5k or mnist:DIR (a folder "
                         "holding the four MNIST IDX files)")


class Numbers(Parser):
    """Comma-separated numbers, each checked by ``item`` (a :class:`Real` or :class:`Count`).

    ``--k 0.1,1 --k 5``: each occurrence gives a tuple; the command joins them. An empty entry
    (``1,,2``, ``1,``) is refused, never skipped: a typo must not silently change the grid.
    """

    def __init__(self, item: Real | Count) -> None:
        self.item = item
        self.metavar = f"{item.metavar},…"
        if isinstance(item, Count):
            bounds = (f"from {item.lo} to {item.hi}" if item.hi < COUNT_MAX else f"≥ {item.lo}")
            self.takes = f"takes integers {bounds} (whole numbers) separated by commas"
        else:
            self.takes = f"takes numbers separated by commas (each {item.range_text()})"

    def parse(self, text: str) -> tuple:
        if len(text) > 100_000:
            raise ValueError(f"{self.takes}, got {len(text)} characters; give at most 100000")
        values = []
        for part in text.split(","):
            if not part.strip():
                raise ValueError(f"{shown(text)} has an empty entry; give numbers separated by commas, "
                                 "e.g. 0.1,1,10")
            try:
                values.append(self.item.parse(part))
            except ValueError:
                raise ValueError(f"{self.takes}, got {shown(part.strip())}") from None
        return tuple(values)


#: the most dimensions a --param may have (brackets nested this deep); deeper JSON would exhaust
#: Python's recursion limit, and torch stops at 64 dimensions
PARAM_MAX_DIMS = 32
#: the most characters of one --param (a million numbers)
PARAM_MAX_CHARS = 20_000_000


def _depth(raw: str) -> int:
    depth = deepest = 0
    for char in raw:
        if char == "[":
            depth += 1
            deepest = max(deepest, depth)
        elif char == "]":
            depth -= 1
    return deepest


def _has_bool(value) -> bool:
    return isinstance(value, bool) or (isinstance(value, list) and any(_has_bool(v) for v in value))


class Assignment(Parser):
    """``NAME=VALUE`` with VALUE a number or a JSON list of numbers (nested for matrices): returns
    ``(name, float64 tensor)``; the family checks names and ranges later."""

    metavar = "NAME=VALUE"

    def parse(self, text: str):
        import torch

        name, sep, raw = text.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"expects NAME=VALUE (e.g. loc=1 or loc=[0,1,2]), got {shown(text)}")
        Text(what="a parameter name").parse(name)
        if len(raw) > PARAM_MAX_CHARS:
            raise ValueError(f"{shown(name)}: {len(raw)} characters; a value has at most {PARAM_MAX_CHARS}")
        if _depth(raw) > PARAM_MAX_DIMS:
            raise ValueError(f"{shown(name)}: lists nested {_depth(raw)} deep; a parameter has at most "
                             f"{PARAM_MAX_DIMS} dimensions (loc=[[0,1],[2,3]] is a 2 × 2 matrix)")
        try:
            value = json.loads(raw)
            if _has_bool(value) or isinstance(value, str | dict) or value is None:
                raise TypeError
            tensor = torch.tensor(value, dtype=torch.float64)
        except (json.JSONDecodeError, TypeError, ValueError, RuntimeError, RecursionError, OverflowError):
            raise ValueError(f"{shown(name)}: {shown(raw)} is not a number or a JSON list of "
                             "numbers") from None
        if tensor.numel() == 0:
            raise ValueError(f"{shown(name)}: {shown(raw)} is empty; give at least one number")
        return name, tensor


def joined(groups: Sequence[tuple] | None) -> list:
    """The values of a repeated :class:`Numbers` option, in order (``--k 0.1,1 --k 5`` -> [0.1, 1, 5])."""
    return [value for group in groups or () for value in group]


__all__ = [
    "COUNT_MAX",
    "SEED_MAX",
    "SEED_RANGE",
    "Address",
    "AnyPath",
    "Assignment",
    "Choice",
    "CostSpec",
    "Count",
    "DatasetSpec",
    "DeviceName",
    "InDir",
    "InFile",
    "Numbers",
    "OutDir",
    "OutFile",
    "Parser",
    "Real",
    "Seed",
    "Text",
    "argument",
    "check_path",
    "joined",
    "option",
    "shown",
]
