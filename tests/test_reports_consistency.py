"""Every number in a command's report.html tables is formatted from the record the run wrote.

The numbers are parsed out of each table cell and matched against the run's own files (results.json,
summary.json, metrics.jsonl, monitor.jsonl, config.json, sweep.csv, metrics.csv): a cell's number must be
some recorded value rounded to the digits the cell shows (a percentage: the value × 100; a µs column:
seconds × 10⁶; a ratio "N×": the quotient of two values of one record). A report that recomputes a
figure (a second evaluation, another sample) shows digits no record holds and fails here.
"""

from __future__ import annotations

import csv
import html.parser
import json
import re
from pathlib import Path

import pytest

from gradest.cli import main
from gradest.vae.evaluate import ELBO_SAMPLES

_NUMBER = re.compile(r"(?<![\w.])[-−]?\d+(?:\.\d+)?(?:e[-+]?\d+)?(?![\w.])(%|×)?")


class _Tables(html.parser.HTMLParser):
    """(header, cell text) of every td of every table."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[tuple[str, str]] = []
        self._head: list[str] = []
        self._column = 0
        self._text: list[str] | None = None
        self._in_head = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._head = []
        elif tag == "tr":
            self._column = 0
        elif tag in ("td", "th"):
            self._text, self._in_head = [], tag == "th"

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._text is not None:
            text = "".join(self._text)
            if self._in_head:
                self._head.append(text)
            else:
                header = self._head[self._column] if self._column < len(self._head) else ""
                self.cells.append((header, text))
            self._column += 1
            self._text = None

    def handle_data(self, data):
        if self._text is not None:
            self._text.append(data)


def table_numbers(page: str) -> list[tuple[str, str, float, str, float]]:
    """(header, cell, value, suffix, half a unit in the last shown digit) of every number in a table."""
    parser = _Tables()
    parser.feed(page)
    out = []
    for header, cell in parser.cells:
        for match in _NUMBER.finditer(cell):
            token = match.group(0).rstrip("%×").replace("−", "-")
            mantissa, _, exponent = token.partition("e")
            decimals = len(mantissa.partition(".")[2])
            half = 0.5 * 10.0 ** (int(exponent or 0) - decimals)
            out.append((header, cell, float(token), match.group(1) or "", half))
    return out


def _numbers(value, found: list[float]) -> list[float]:
    if isinstance(value, bool):
        return found
    if isinstance(value, int | float):
        found.append(float(value))
    elif isinstance(value, dict):
        for v in value.values():
            _numbers(v, found)
    elif isinstance(value, list):
        for v in value:
            _numbers(v, found)
    elif isinstance(value, str):  # a CSV field, or a path/name that holds digits ("mnist5k")
        try:
            found.append(float(value))
        except ValueError:
            pass
    return found


def _records(value) -> list[list[float]]:
    """The numbers of each object (dict) at any depth: a ratio's two values come from one record."""
    out = []
    if isinstance(value, dict):
        out.append(_numbers(value, []))
        for v in value.values():
            out += _records(v)
    elif isinstance(value, list):
        for v in value:
            out += _records(v)
    return out


def read_record(folder: Path) -> list:
    """What the run wrote as data: JSON, JSON lines and CSV files in ``folder`` (run folders included)."""
    data: list = []
    for path in sorted(folder.rglob("*")):
        if path.name.startswith("probed-") or not path.is_file():
            continue
        if path.suffix == ".json":
            data.append(json.loads(path.read_text()))
        elif path.suffix == ".jsonl":
            data.append([json.loads(line) for line in path.read_text().splitlines() if line.strip()])
        elif path.suffix == ".csv":
            with open(path, newline="") as handle:
                data.append(list(csv.DictReader(handle)))
    return data


def unmatched(page: str, record) -> list[str]:
    """The table numbers of ``page`` that no value of ``record`` rounds to."""
    values = sorted(set(_numbers(record, [])))
    scaled = {"": [1.0], "%": [100.0], "×": []}
    ratios = sorted({a / b for rec in _records(record) for a in rec for b in rec if b != 0})
    bad = []
    for header, cell, number, suffix, half in table_numbers(page):
        factors = scaled[suffix] + ([1e6] if "µs" in header else [])
        tol = half * (1 + 1e-9) + 1e-300
        candidates = ratios if suffix == "×" else [v * f for v in values for f in factors]
        if not any(abs(c - number) <= tol for c in candidates):
            bad.append(f"{header!r}: {cell!r} ({number}{suffix})")
    return bad


def _gaussian(out: Path) -> list[str]:
    return ["gaussian", "--out", str(out), "--steps", "20", "--samples-per-step", "4"]


def _sweep(out: Path) -> list[str]:
    return ["sweep", "--cost", "square", "--cost", "exp", "--k", "0.5,2", "--param", "loc=1", "--param",
            "scale=1", "--estimator", "pathwise", "--estimator", "score-delta", "--samples", "200",
            "--out", str(out)]


def _blr(out: Path) -> list[str]:
    return ["blr", "--estimator", "pathwise", "--steps", "6", "--log-every", "3", "--samples", "4",
            "--variance-samples", "8", "--out", str(out)]


def _discrete(out: Path) -> list[str]:
    return ["discrete", "--bits", "1,4", "--t", "0.45", "--estimator", "score", "--estimator", "disarm",
            "--samples", "200", "--out", str(out)]


def _vae_train(out: Path) -> list[str]:
    return ["vae", "train", "--dataset", "digits", "--hidden", "16", "--latent", "2", "--epochs", "2",
            "--batch-size", "256", "--var-repeats", "3", "--iwae-k", "4", "--out", str(out)]


def _vae_compare(out: Path) -> list[str]:
    return ["vae", "compare", "--dataset", "digits", "--hidden", "16", "--latent", "2", "--epochs", "1",
            "--batch-size", "256", "--var-repeats", "3", "--iwae-k", "4", "--estimator", "pathwise",
            "--estimator", "score", "--out", str(out)]


COMMANDS = {"gaussian": _gaussian, "sweep": _sweep, "blr": _blr, "discrete": _discrete,
            "vae-train": _vae_train, "vae-compare": _vae_compare}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_table_number_comes_from_the_runs_record(command, tmp_path):
    out = tmp_path / command
    assert main(COMMANDS[command](out)) == 0
    page = (out / "report.html").read_text(encoding="utf-8")
    numbers = table_numbers(page)
    assert len(numbers) >= 7, "the report's tables hold the run's numbers"
    assert unmatched(page, read_record(out)) == []


def test_the_check_can_fail():
    """A cell recomputed from another draw (32.39 where the record says 32.32), a percentage off by one
    in its last digit, and a ratio no two values of one record give are all caught."""
    from gradest import report as rp

    record = {"runs": [{"neg_elbo": 32.3214, "error": 0.01234, "a": 6.0, "b": 2.0}]}
    good = rp.table(["x", "error", "ratio"], [[32.32, "1.23%", "3×"]])
    assert unmatched(good, record) == []
    bad = rp.table(["x", "error", "ratio"], [[32.39, "1.24%", "4×"]])
    assert len(unmatched(bad, record)) == 3


def test_vae_train_shows_one_test_elbo_everywhere(tmp_path, capsys):
    """The console's epoch line, metrics.jsonl's last record, summary.json, the report and `vae eval` all
    show the one final −ELBO (the last epoch is evaluated with the final evaluation's draws)."""
    out = tmp_path / "run"
    assert main(_vae_train(out)) == 0
    printed = capsys.readouterr().out
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    summary = json.loads((out / "summary.json").read_text())
    assert last["test_neg_elbo"] == summary["test_neg_elbo"] and last["test_kl"] == summary["kl"]
    shown = f"{summary['test_neg_elbo']:.2f}"
    assert f"test −ELBO {shown}" in printed  # the epoch line
    assert f">{summary['test_neg_elbo']:.4g}<" in (out / "report.html").read_text(encoding="utf-8")
    assert main(["vae", "eval", str(out), "--iwae-k", "4", "--json", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    assert again["test_neg_elbo"] == summary["test_neg_elbo"]
    assert again["test_nll_iwae"] == summary["test_nll_iwae"]
    assert last["test_elbo_samples"] == ELBO_SAMPLES
