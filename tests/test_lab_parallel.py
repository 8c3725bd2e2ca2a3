"""Cells on Dask (gradest.parallel): the same CSV as a serial run, resuming, a worker killed mid-task.

The clusters are small: two in-process workers (threads, started in well under a second) for the
comparisons, and two worker processes only where a worker must die. Timings are the one column a
rerun cannot reproduce, so the cell function is wrapped to zero them: what is compared is the file.
"""

import dataclasses
import functools
import json
import os
import sys

import pytest
import torch

import gradest.lab.sweep as sw
from gradest.cli import main
from gradest.errors import GradestError
from gradest.lab.selection import select
from gradest.parallel import DaskMap, cell_map, dask_available, serial_map

needs_dask = pytest.mark.skipif(not dask_available(), reason="needs pip install 'gradest[dask]'")

CONFIG = sw.SweepConfig(costs=("square", "cos"), ks=(0.5, 3.0), estimators=("pathwise", "score", "mvd"),
                        samples=2000, seed=3)
_MEASURE_CELL = sw.measure_cell


def untimed_cell(config, cost, k, est):
    return [dataclasses.replace(r, seconds_per_sample=0.0) for r in _MEASURE_CELL(config, cost, k, est)]


def logged_untimed_cell(log, config, cost, k, est):
    with open(log, "a", encoding="utf-8") as handle:
        handle.write(f"{cost} {k} {est}\n")
    return untimed_cell(config, cost, k, est)


@pytest.fixture
def untimed(monkeypatch, tmp_path):
    """Every cell, wherever it runs, with its timing zeroed; returns the cells measured so far.

    Dask pickles tasks even for workers in this process: the cells are logged to a file, not a list.
    """
    log = tmp_path / "cells.log"
    monkeypatch.setattr(sw, "measure_cell", functools.partial(logged_untimed_cell, str(log)))

    def measured():
        lines = log.read_text().splitlines() if log.exists() else []
        return sorted((c, float(k), e) for c, k, e in (line.split() for line in lines))

    return measured


@pytest.fixture(scope="module")
def local():
    """A two-worker cluster of threads in this process, and its scheduler's address."""
    if not dask_available():
        pytest.skip("needs pip install 'gradest[dask]'")
    threads = torch.get_num_threads()
    with cell_map(workers=2, processes=False) as cells:
        yield cells, cells.client.scheduler.address
    # the workers' threads share torch's global intra-op setting with the tests
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def serial_csv(tmp_path_factory):
    out = tmp_path_factory.mktemp("serial")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sw, "measure_cell", untimed_cell)
        sw.measure(CONFIG, out)
    return (out / sw.CSV_NAME).read_bytes()


def test_serial_map_is_lazy_and_in_order():
    seen = []
    results = serial_map(lambda x: seen.append(x) or 2 * x, [(1,), (2,), (3,)])
    assert seen == []
    assert next(results) == 2 and seen == [1]
    assert list(results) == [4, 6]


def test_workers_and_scheduler_together_are_refused(tmp_path, capsys):
    with pytest.raises(GradestError, match="not both"), cell_map(workers=2, scheduler="tcp://h:8786"):
        pass
    assert main(["sweep", "--workers", "2", "--scheduler", "tcp://h:8786", "--out", str(tmp_path)]) == 2


def test_without_dask_workers_is_one_line_with_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    assert not dask_available()
    assert main(["sweep", "--k", "1", "--estimator", "pathwise", "--samples", "10", "--workers", "2",
                 "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'gradest[dask]'" in err
    assert not (tmp_path / "sweep.csv").exists()


@needs_dask
def test_a_sweep_on_dask_writes_the_serial_csv_byte_for_byte(local, serial_csv, untimed, tmp_path):
    cells, _ = local
    rows = sw.measure(CONFIG, tmp_path, cell_map=cells)
    assert (tmp_path / sw.CSV_NAME).read_bytes() == serial_csv
    assert untimed() == sorted(CONFIG.cells()) and len(rows) == 2 * len(CONFIG.cells())


@needs_dask
def test_a_killed_client_resumes_from_its_csv(local, serial_csv, untimed, tmp_path):
    cells, _ = local
    # what a client killed after five cells leaves: the header and their ten rows
    lines = serial_csv.decode().splitlines(keepends=True)
    (tmp_path / sw.CSV_NAME).write_text("".join(lines[:11]))
    sw.measure(CONFIG, tmp_path, cell_map=cells)
    assert untimed() == sorted(CONFIG.cells()[5:])
    assert (tmp_path / sw.CSV_NAME).read_bytes() == serial_csv


@needs_dask
def test_the_cli_on_a_running_scheduler(local, untimed, tmp_path, capsys):
    _, address = local
    args = ["sweep", "--cost", "exp", "--k", "0.5,2", "--estimator", "pathwise", "--estimator", "score",
            "--samples", "500", "--seed", "1"]
    assert main([*args, "--out", str(tmp_path / "serial")]) == 0
    assert main([*args, "--out", str(tmp_path / "dask"), "--scheduler", address]) == 0
    assert (tmp_path / "dask" / "sweep.csv").read_bytes() == (tmp_path / "serial" / "sweep.csv").read_bytes()


@needs_dask
def test_advise_on_dask_gives_the_serial_numbers(local):
    cells, _ = local
    f = lambda x: x.pow(2)  # noqa: E731
    params = {"loc": torch.tensor(1.0), "scale": torch.tensor(1.0)}
    candidates = ["pathwise", "score", "enumerate"]  # a clear winner (10×) and one not applicable
    serial = select(f, torch.distributions.Normal, params, estimators=candidates, num_samples=1000, seed=2)
    dask = select(f, torch.distributions.Normal, params, estimators=candidates, num_samples=1000, seed=2,
                  cell_map=cells)
    untimed_ = lambda s: sorted(  # noqa: E731
        (c.estimator, c.applicable, c.variance, c.max_abs_z, c.biased, c.note) for c in s.candidates)
    assert untimed_(dask) == untimed_(serial)
    assert dask.recommendation == serial.recommendation == "pathwise"
    assert (dask.reference, dask.z_bound) == (serial.reference, serial.z_bound)


def _dies_once(marker: str, value: int) -> int:
    """The first call, wherever it runs, kills its worker process; every call returns its value."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return value
    os._exit(1)


@needs_dask
def test_a_killed_workers_cells_are_retried_and_yielded_once(tmp_path):
    import cloudpickle

    # worker processes cannot import this test module: its function travels by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    marker = str(tmp_path / "died")
    with cell_map(workers=2) as cells:
        assert isinstance(cells, DaskMap)
        results = list(cells(_dies_once, [(marker, i) for i in range(6)]))
    assert results == list(range(6))
    assert os.path.exists(marker)  # a worker did die


@needs_dask
def test_grouped_cells_come_back_one_by_one_in_order(local):
    cells, _ = local
    assert cells._group_size(12) == 1 and cells._group_size(1000) == 1000 // (8 * 2)
    grouped = DaskMap(cells.client, cells_per_task=5)
    assert list(grouped(_square, [(i,) for i in range(12)])) == [i * i for i in range(12)]


def _square(i: int) -> int:
    return i * i


@needs_dask
def test_an_error_in_a_cell_reaches_the_client(local):
    cells, _ = local
    with pytest.raises(GradestError, match="bad cell"):
        list(cells(_raise_on_two, [(i,) for i in range(4)]))


def _raise_on_two(i: int) -> int:
    if i == 2:
        raise GradestError("bad cell")
    return i


@needs_dask
def test_blr_on_dask_gives_the_serial_runs(local, tmp_path):
    from gradest.lab import blr

    cells, _ = local
    config = blr.BLRConfig(steps=10, log_every=5, num_samples=4, variance_samples=8)
    serial = blr.run_blr(["pathwise", "score"], config, tmp_path / "serial")
    steps = []
    dask = blr.run_blr(["pathwise", "score"], config, tmp_path / "dask", cell_map=cells,
                       on_step=lambda *a: steps.append(a))
    untimed_ = lambda r: {e: {k: v for k, v in s.items() if k != "seconds"}  # noqa: E731
                          for e, s in r.summary.items()}
    assert untimed_(dask) == untimed_(serial)
    assert steps == [("pathwise", 0, 10), ("score", 1, 10)]
    records = lambda where: [{k: v for k, v in json.loads(line).items() if k != "seconds"}  # noqa: E731
                             for line in (tmp_path / where / "monitor.jsonl").read_text().splitlines()]
    assert records("dask") == records("serial") and records("serial")
