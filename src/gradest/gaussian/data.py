r"""The data x_1..x_n of the walkthrough: loaded from a CSV column (or the shipped default), validated.

The walkthrough needs only the sufficient statistics of the squared loss,

    x̄ = (1/n) Σ x_i,    v = (1/n) Σ (x_i − x̄)²   (the maximum-likelihood variance),

but keeps the values themselves, because the costs are evaluated literally, Σ_i (y − x_i)².
Bad input (missing file, unknown column, non-numeric or non-finite values, fewer than 2 values,
constant data, values so large or so small that x² or 1/σ² leave float64's range) raises
:class:`~gradest.errors.GradestError` with a one-line message.
"""

from __future__ import annotations

import codecs
import csv
import functools
import math
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import torch

from gradest.errors import GradestError

DEFAULT_NAME = "gaussian_default.csv"
#: relative spread (to the largest |x|) below which float64 cannot resolve the data: ~4500 ulps
CONSTANT_TOL = 1e-12
#: the walkthrough squares the data and divides by σ² (and the variances square that again): data
#: whose size or spread lies outside [1/SCALE_MAX, SCALE_MAX] overflow or underflow float64 on the way
SCALE_MAX = 1e60


class Dataset(NamedTuple):
    """values: float64 tensor [n]; source: where they came from (a path or the default's name);
    column: the header's name for them (None for a one-column file without a header row)."""

    values: torch.Tensor
    source: str
    column: str | None

    @property
    def described(self) -> str:
        """Where the values came from, in words: the source and the column (or the lack of a header)."""
        return f"{self.source} ({'no header row' if self.column is None else f'column {self.column!r}'})"

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def mean(self) -> float:
        return _moments(self.values)[0]

    @property
    def var_mle(self) -> float:
        """v = (1/n) Σ (x_i − x̄)²."""
        return _moments(self.values)[1]

    @property
    def sd(self) -> float:
        """√v: the data's own unit, used to place check points and to scale tolerances."""
        return math.sqrt(self.var_mle)

    def sum_squares(self, y: torch.Tensor) -> torch.Tensor:
        """Σ_i (y − x_i)² = n[(y − x̄)² + v], elementwise in y: O(1) per y for any n, no [N, n] table."""
        return self.n * ((y - self.mean) ** 2 + self.var_mle)


@functools.lru_cache(maxsize=16)
def _moments(values: torch.Tensor) -> tuple[float, float]:
    """(x̄, v), computed once per tensor (keyed by identity): the costs ask for them at every SGD step,
    and recomputing them is O(n) each time (100 000 values × 3000 steps dominated the run)."""
    return float(values.mean()), float(values.var(correction=0))


def default_dataset() -> Dataset:
    """The 100 draws from a Normal shipped with the package (generated once with a fixed seed)."""
    text = resources.files("gradest").joinpath("data", DEFAULT_NAME).read_text(encoding="utf-8")
    return parse_csv(text, None, f"<default: {DEFAULT_NAME}>")


def load_dataset(path: str | Path | None = None, column: str | None = None) -> Dataset:
    """The column ``column`` of the CSV at ``path`` (header required); the default data without a path."""
    if path is None:
        if column is not None:
            raise GradestError("--column picks a column of the --data FILE.csv; give --data too")
        return default_dataset()
    path = Path(path)
    if path.is_dir():
        raise GradestError(f"--data {path} is a folder; give the CSV file inside it")
    if not path.is_file():
        raise GradestError(f"data file not found: {path}; give a CSV file with a header row")
    _refuse_beyond_memory(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise GradestError(f"could not read {path}: {err.strerror or err}") from None
    return parse_csv(decode(raw, path), column, str(path))


#: memory a CSV's byte takes while it is read and parsed (the bytes, the text, the rows of cells)
BYTES_PER_CSV_BYTE = 40


def _refuse_beyond_memory(path: Path) -> None:
    """A CSV too large to read and parse in the free memory is refused by its size, before reading."""
    from gradest.limits import refuse_beyond_memory

    try:
        size = path.stat().st_size
    except OSError as err:
        raise GradestError(f"could not read {path}: {err.strerror or err}") from None
    refuse_beyond_memory(f"--data {path}: its", size, per_item=BYTES_PER_CSV_BYTE,
                         hint="bytes; give a smaller file, e.g. a sample of its rows")


def decode(raw: bytes, path: Path) -> str:
    """CSV bytes as text: UTF-8 (with or without BOM), UTF-16 with a BOM (Excel's "Unicode text"), or
    else Latin-1 (Windows exports of accented headers); binary content is refused."""
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    if "\x00" in text:
        raise GradestError(f"{path} is not a text file (it holds binary data); give a CSV file")
    return text


def _cell(raw: str) -> str:
    """A cell without padding, and without quotes that padding kept the reader from removing."""
    cell = raw.strip()
    if len(cell) >= 2 and cell[0] == cell[-1] == '"':
        cell = cell[1:-1].strip()
    return cell


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def parse_csv(text: str, column: str | None, source: str) -> Dataset:
    """Parse comma-separated text with a header row and validate one numeric column.

    A one-column file whose first row is a number has no header: all its rows are values (the
    usual export of a single vector). Semicolon- or tab-separated files are refused with the fix.
    """
    # skipinitialspace: `"a", "b"` (a space after the comma) still unquotes
    try:
        rows = [[_cell(c) for c in row] for row in csv.reader(text.splitlines(), skipinitialspace=True)]
    except csv.Error as err:  # a cell beyond the csv module's 128 KiB limit, a NUL byte
        raise GradestError(f"{source} is not a CSV of numbers ({err}); give a CSV file with a header row "
                           "and one number per cell") from None
    rows = [row for row in rows if any(row)]
    if not rows:
        raise GradestError(f"{source} is empty; it needs a header row and at least 2 values")
    header = [h.strip() for h in rows[0]]
    while len(header) > 1 and not header[-1]:  # trailing commas (spreadsheet exports) add empty columns
        header.pop()
    _refuse_other_separators(header, source)
    headerless = len(header) == 1 and _is_number(header[0]) and column is None
    if headerless:
        header, rows = ["x"], [["x"], *rows]
    elif all(_is_number(h) for h in header) and column not in header:
        raise GradestError(
            f"{source} has no header row (its first row, {', '.join(header)}, is numbers); add a row "
            "of column names and pick one with --column NAME"
        )
    if column is None:
        if len(header) != 1:
            raise GradestError(
                f"{source} has {len(header)} columns ({', '.join(header)}); pick one with --column NAME"
            )
        index = 0
    elif header.count(column) > 1:
        places = ", ".join(str(i + 1) for i, h in enumerate(header) if h == column)
        raise GradestError(f"{source} has {header.count(column)} columns named {column!r} (columns "
                           f"{places}); rename them so that --column names one")
    elif column in header:
        index = header.index(column)
    else:
        raise GradestError(f"{source} has no column {column!r}; its columns are: {', '.join(header)}")
    name = header[index]
    values = []
    for line, row in enumerate(rows[1:], start=2):
        if any(row[len(header):]):
            # "1,5" under a one-column header: a decimal comma, which would silently read as 1
            raise GradestError(
                f"{source}, row {line} has {len(row)} cells ({', '.join(row)}) under a header of "
                f"{len(header)}; if a value uses a decimal comma write it with '.', or quote it"
            )
        cell = row[index].strip() if index < len(row) else ""
        if not cell:
            raise GradestError(f"{source}, row {line}, column {name!r}: '' is not a number (the cell is "
                               "empty); fill it in or remove the row")
        try:
            value = float(cell)
        except ValueError:
            raise GradestError(
                f"{source}, row {line}, column {name!r}: {cell!r} is not a number; "
                "every value must be numeric"
            ) from None
        if not math.isfinite(value):
            raise GradestError(
                f"{source}, row {line}, column {name!r}: {cell!r} is not finite; remove NaN/inf values"
            )
        values.append(value)
    data = validate(torch.tensor(values, dtype=torch.float64), source, name)
    return data._replace(column=None) if headerless else data


def _refuse_other_separators(header: list[str], source: str) -> None:
    """A header read as one cell that holds ';' or a tab is a file with another separator."""
    if len(header) != 1:
        return
    for sep, shown, words in ((";", ";", "semicolon"), ("\t", "\\t", "tab")):
        if sep in header[0]:
            raise GradestError(
                f"{source} looks {words}-separated (header {header[0]!r}); gradest reads comma-separated "
                "files: save it as CSV with commas (and '.' as the decimal point), e.g. "
                f"tr '{shown}' ',' < FILE > FILE.csv when no value contains a comma"
            )


def validate(values: torch.Tensor, source: str = "<tensor>", column: str = "x") -> Dataset:
    """Check there are ≥ 2 finite values that are not all equal."""
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if values.numel() < 2:
        raise GradestError(
            f"{source}, column {column!r}: {values.numel()} value(s); need at least 2 to fit a mean "
            "and a spread"
        )
    if not torch.isfinite(values).all():
        raise GradestError(f"{source}, column {column!r}: contains NaN or inf; remove them")
    spread = float(values.max() - values.min())
    magnitude = float(values.abs().max())
    if 0.0 < spread <= CONSTANT_TOL * magnitude:
        raise GradestError(
            f"{source}, column {column!r}: the values differ by at most {spread:.3g} around "
            f"{magnitude:.6g}, too little for float64 arithmetic to resolve; subtract a constant "
            "(e.g. the first value) from the column and fit the differences"
        )
    if spread == 0.0:
        raise GradestError(
            f"{source}, column {column!r}: all values equal {float(values[0])!r}; a Normal fit "
            "needs data with a spread (σ would be 0)"
        )
    if magnitude > SCALE_MAX or spread < 1 / SCALE_MAX:
        # the power of ten that brings the data to order 1
        shift = round(math.log10(magnitude if magnitude > SCALE_MAX else spread))
        size = f"as large as {magnitude:.3g}" if magnitude > SCALE_MAX else f"as close as {spread:.3g} apart"
        raise GradestError(
            f"{source}, column {column!r}: values {size} leave float64's range once squared (the fits "
            f"use x² and 1/σ²); express them in other units, e.g. multiply the column by 1e{-shift} "
            f"(gradest handles sizes and spreads from 1e-60 to 1e60)"
        )
    return Dataset(values, source, column)
