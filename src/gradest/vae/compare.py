r"""Several estimators trained on the same data and seed: one run folder each, then one report.

    OUT/<label>/  the run of each estimator (metrics.jsonl, monitor.jsonl, checkpoint.pt, config.json,
                  summary.json), OUT/report.html  all of them side by side

Each run is seeded by its config alone, so it can run anywhere: here, one after the other (with
per-step progress), or as one Dask task per estimator (:mod:`gradest.parallel`: ``--workers N``,
``--scheduler ADDRESS``). A task trains into a scratch folder on its worker and returns the run
folder's files as bytes, which are written here atomically, in the estimators' order: the workers
need not share a file system with this process, and the files hold the serial run's numbers (the
seconds aside). A run that stops on a non-finite loss is a result of the comparison (its last good
epoch is kept); the others still run and report.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from gradest.io import write_atomic
from gradest.parallel import CellMap, serial_map
from gradest.vae.config import TrainConfig
from gradest.vae.files import SUMMARY
from gradest.vae.train import NonFiniteLoss, train

#: ``train_one(config, folder)``: how a serial run is trained (the command line adds its progress bars)
TrainOne = Callable[[TrainConfig, Path], Any]


class RunFiles(NamedTuple):
    """A finished (or stopped) run's folder as bytes, and the stop message (None if it finished)."""

    files: dict[str, bytes]
    stopped: str | None


class Comparison(NamedTuple):
    summaries: dict[str, dict[str, Any]]  # label -> summary.json of the runs that finished
    stopped: dict[str, str]  # label -> why the run stopped
    folders: dict[str, Path]


def run_folder(out: str | Path, label: str) -> Path:
    """``OUT/pathwise``, ``OUT/vimco-k5`` for the labels ``pathwise``, ``vimco:5``."""
    return Path(out) / label.replace(":", "-k")


def train_remote(config: TrainConfig, folder: str) -> RunFiles:
    """One estimator's run in a scratch folder (a Dask task); ``folder`` is where it will be written."""
    scratch = Path(tempfile.mkdtemp(prefix="gradest-vae-"))
    try:
        stopped = None
        try:
            train(config, scratch)
        except NonFiniteLoss as err:
            stopped = str(err).replace(str(scratch), folder)  # name the folder the files go to
        files = {p.name: p.read_bytes() for p in sorted(scratch.iterdir()) if p.is_file()}
        return RunFiles(files, stopped)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _serial(configs: Mapping[str, TrainConfig], folders: Mapping[str, Path], train_one: TrainOne):
    for label, config in configs.items():
        try:
            train_one(config, folders[label])
            yield label, None
        except NonFiniteLoss as err:
            yield label, str(err)


def compare(
    configs: Mapping[str, TrainConfig],
    out: str | Path,
    *,
    cell_map: CellMap = serial_map,
    train_one: TrainOne | None = None,
    on_run: Callable[[str, str | None], None] | None = None,
) -> Comparison:
    """Train each ``label -> config`` into ``OUT/<label>`` (see :func:`run_folder`).

    Args:
        cell_map: where the runs go: here, one after the other (default), or one Dask task each.
        train_one: the serial trainer (default :func:`gradest.vae.train.train`).
        on_run(label, stop message or None): called as each run is written, in the labels' order.
    """
    import json

    folders = {label: run_folder(out, label) for label in configs}
    if cell_map is serial_map:
        outcomes = _serial(configs, folders, train_one or (lambda c, f: train(c, f)))
    else:
        remote = cell_map(train_remote, [(c, str(folders[label])) for label, c in configs.items()])
        outcomes = _written(zip(configs, remote, strict=True), folders)
    summaries, stopped = {}, {}
    for label, message in outcomes:
        if message is None:
            summaries[label] = json.loads((folders[label] / SUMMARY).read_text())
        else:
            stopped[label] = message
        if on_run is not None:
            on_run(label, message)
    return Comparison(summaries, stopped, folders)


def _written(results, folders: Mapping[str, Path]):
    for label, run in results:
        # the checkpoint first: the other files never describe an epoch whose weights are not saved
        for name in sorted(run.files, key=lambda n: n != "checkpoint.pt"):
            write_atomic(folders[label] / name, run.files[name])
        yield label, run.stopped


__all__ = ["Comparison", "RunFiles", "compare", "run_folder", "train_remote"]
