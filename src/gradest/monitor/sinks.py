"""Where the monitor's records go and come back: TensorBoard, JSON lines read back, and plots."""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gradest.errors import GradestError
from gradest.monitor.records import GroupStats, MonitorWarning


def _tensorboard_writer(target: Any) -> tuple[Any, bool]:
    """(writer, whether the monitor owns it) from a log folder or a writer; (None, False) if skipped."""
    if target is None:
        return None, False
    if not isinstance(target, str | os.PathLike):
        if not callable(getattr(target, "add_scalar", None)) or not callable(getattr(target, "flush", None)):
            raise GradestError(f"tensorboard must be a log folder or a SummaryWriter (with add_scalar and "
                               f"flush), got {type(target).__name__}")
        return target, False
    if Path(target).exists() and not Path(target).is_dir():
        raise GradestError(f"tensorboard={os.fspath(target)!r} is a file; give a log folder")
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        warnings.warn(MonitorWarning(
            "TensorBoard output skipped: the tensorboard package is not installed "
            "(pip install 'gradest[tensorboard]'); the JSONL and in-memory records are unaffected"),
            stacklevel=3)
        return None, False
    return SummaryWriter(log_dir=str(target)), True


#: what a logger receives per group and measurement: <prefix>/<group>/<key>
SCALARS = ("variance", "variance_stderr", "snr", "mean_norm")


def scalars(records: Sequence[GroupStats], prefix: str, share: float) -> dict[str, float]:
    """The scalars a logger (TensorBoard, Lightning's) receives for one measurement, by tag.

    ``<prefix>/<group>/<key>`` for each key of :data:`SCALARS`, and ``<prefix>/monitor_share``, the
    monitor's share of the wall time so far, where it is defined: at the first measurement no time has
    passed between the monitor's first and latest call, and a share of nothing is left out, not NaN.
    """
    out = {f"{prefix}/{r.group}/{key}": float(getattr(r, key)) for r in records for key in SCALARS}
    if records and math.isfinite(share):
        out[f"{prefix}/monitor_share"] = float(share)
    return out


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a monitor's JSONL file (a torn last line, from a crash, is left out)."""
    out = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if not isinstance(row, dict):
                    raise GradestError(f"{path}: line {number} is not a record (a JSON object); is it a "
                                       "gradest monitor JSONL file?")
                out.append(row)
    except OSError as err:
        raise GradestError(f"cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError:
        raise GradestError(f"{path} is not text (UTF-8); give a gradest monitor JSONL file") from None
    return out


def plot(records: Iterable[GroupStats | Mapping[str, Any]], path: str | os.PathLike | None = None,
         title: str = "Gradient variance while training", series: Sequence[str] = ()):
    """Variance (± 2 standard errors) and SNR against the step, one line per group.

    Args:
        records: :class:`GroupStats` or JSON records (:func:`read_jsonl`).
        path: write the figure there as PNG (atomically).
        series: record fields that tell runs apart, e.g. ``("estimator",)``: one line per
            (their values, group).
    Returns:
        the matplotlib ``Figure``.
    """
    if isinstance(records, str | bytes | Mapping) or not isinstance(records, Iterable):
        raise GradestError(f"plot takes a list of records (monitor.records or read_jsonl(path)), got "
                           f"{type(records).__name__}")
    if isinstance(series, str):
        series = (series,)
    lines: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        row = r.to_json() if isinstance(r, GroupStats) else r
        lacking = [k for k in ("step", "group", "variance", "snr")
                   if not isinstance(row, Mapping) or k not in row]
        if lacking:
            raise GradestError(f"plot: a record lacks {', '.join(lacking)}; give GroupStats or the rows of "
                               "read_jsonl(path)")
        lines.setdefault((" ".join(str(row.get(k)) for k in series), str(row["group"])), []).append(row)
    # one colour per run and one line style per group when runs are told apart; else a colour per group
    runs = list(dict.fromkeys(run for run, _ in lines))
    groups = list(dict.fromkeys(group for _, group in lines))
    colours = [f"C{i % 10}" for i in range(len(runs) if series else len(groups))]
    styles = ["-", "--", ":", "-."]
    from matplotlib.figure import Figure  # here: matplotlib takes a second to import

    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_var, ax_snr = fig.subplots(1, 2)
    for (run, group), rows in lines.items():
        rows = sorted(rows, key=lambda r: r["step"])
        steps = [r["step"] for r in rows]
        var = [_num(r["variance"]) for r in rows]
        err = [2 * _num(r.get("variance_stderr")) for r in rows]
        style = {"color": colours[runs.index(run)], "ls": styles[groups.index(group) % len(styles)]} \
            if series else {"color": colours[groups.index(group)], "ls": "-"}
        label = f"{run} {group}" if series else group
        if len(steps) == 1:  # a line of one point draws nothing: mark it
            style["marker"] = "o"
        ax_var.plot(steps, [v if v > 0 else math.nan for v in var], lw=1.3, label=label, **style)
        low = [max(v - e, v * 1e-3) if v > 0 else math.nan for v, e in zip(var, err, strict=True)]
        high = [v + e if v > 0 else math.nan for v, e in zip(var, err, strict=True)]
        ax_var.fill_between(steps, low, high, color=style["color"], alpha=0.12, lw=0)
        ax_snr.plot(steps, [_num(r["snr"]) for r in rows], lw=1.3, label=label, **style)
    for ax, name in ((ax_var, "variance tr Cov(ĝ) (± 2 s.e.)"), (ax_snr, "SNR ‖ḡ‖ / √variance")):
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
    ax_var.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    if path is not None:
        from gradest.io import write_atomic
        from gradest.report import png_bytes

        write_atomic(path, png_bytes(fig))
    return fig


def _num(value: Any) -> float:
    return math.nan if value is None else float(value)
