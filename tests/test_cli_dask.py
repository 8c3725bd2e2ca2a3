"""Dask never hangs and never goes silent (gradest.parallel): a scheduler without workers is waited
for a bounded time, with a message, then one error line; a worker lost mid-run is told; cells run with the
client's thread count, so the workers' CSV is the serial one byte for byte."""

from __future__ import annotations

import csv
import io
import time

import pytest
import torch

from gradest.cli import main
from gradest.errors import GradestError
from gradest.parallel import DaskMap, dask_available

pytestmark = pytest.mark.skipif(not dask_available(), reason="needs pip install 'gradest[dask]'")

SWEEP = ["sweep", "--samples", "64", "--cost", "square", "--k", "1", "--estimator", "pathwise"]


@pytest.fixture
def no_workers():
    """A scheduler in this process that has no worker."""
    import distributed

    threads = torch.get_num_threads()
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster:
        yield cluster
    torch.set_num_threads(threads)


def test_a_scheduler_without_workers_is_waited_for_then_one_error_line(no_workers, tmp_path, capsys):
    start = time.perf_counter()
    code = main([*SWEEP, "--scheduler", no_workers.scheduler_address, "--worker-wait", "1.5",
                 "--out", str(tmp_path / "out")])
    assert code == 2 and time.perf_counter() - start < 30
    captured = capsys.readouterr()
    assert "waiting for a Dask worker" in captured.out and "1 task(s) waiting" in captured.out
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no Dask worker at"), captured.err
    assert "dask worker" in lines[0] and "--workers N" in lines[0]
    assert not (tmp_path / "out").exists()


def _slow(i: int) -> int:
    time.sleep(0.3)
    return i


def test_workers_that_leave_mid_run_are_told_and_none_left_is_an_error():
    import distributed

    threads = torch.get_num_threads()
    events: list[str] = []
    try:
        with distributed.LocalCluster(n_workers=2, processes=False, threads_per_worker=1,
                                      dashboard_address=":0") as cluster, \
                distributed.Client(cluster) as client:
            cells = DaskMap(client, cells_per_task=1, worker_wait=1.0, on_event=events.append)
            results = cells(_slow, [(i,) for i in range(12)])
            assert next(results) == 0
            first, second = (cluster.workers[name] for name in sorted(cluster.workers))
            gone = first.address
            cluster.sync(first.close)
            time.sleep(1.5)
            assert next(results) == 1
            assert any(f"Dask worker {gone} was lost (1 left)" in e for e in events), events
            cluster.sync(second.close)  # the last one: its computed, unfetched results are lost with it
            with pytest.raises(GradestError, match=r"no Dask worker at .* for 1 s \(\d+ task\(s\) waiting"):
                list(results)
            assert any("none connected" in e for e in events), events
    finally:
        torch.set_num_threads(threads)


def _rows(path):
    with open(path, newline="") as fh:
        return [{k: v for k, v in row.items() if k != "seconds_per_sample"} for row in csv.DictReader(fh)]


def test_workers_write_the_serial_csv_with_torchs_default_threads(tmp_path, capsys):
    """--threads 0 (torch's default: one per core here, one in a Dask worker) summed in another order:
    the rows differed in the last digits (≤ 2e-13 relative measured) before the cells took the client's
    thread count."""
    args = ["sweep", "--samples", "100000", "--cost", "cos", "--k", "0.5,3", "--estimator", "pathwise",
            "--estimator", "score", "--threads", "0"]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main([*args, "--out", str(tmp_path / "serial")]) == 0
        assert main([*args, "--out", str(tmp_path / "dask"), "--workers", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    assert _rows(tmp_path / "dask" / "sweep.csv") == _rows(tmp_path / "serial" / "sweep.csv")
    capsys.readouterr()


def test_dask_log_lines_stay_off_stderr_when_an_error_ends_the_run(no_workers, tmp_path, capsys):
    buffer = io.StringIO()
    assert main(["advise", "--samples", "64", "--estimator", "pathwise", "--scheduler",
                 no_workers.scheduler_address, "--worker-wait", "0.5"]) == 2
    err = capsys.readouterr().err + buffer.getvalue()
    assert len(err.strip().splitlines()) == 1, err


def test_a_server_that_is_not_a_dask_scheduler_is_one_error_line_not_a_hang(tmp_path, capsys, monkeypatch):
    """Dask bounds the TCP connection, not the handshake: a server that accepts and never answers held
    the client forever."""
    import socket

    import gradest.parallel as parallel

    monkeypatch.setattr(parallel, "CONNECT_SECONDS", 1.0)
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        start = time.perf_counter()
        assert main([*SWEEP, "--scheduler", f"tcp://127.0.0.1:{port}", "--out", str(tmp_path / "out")]) == 2
        assert time.perf_counter() - start < 20
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "did not answer as a Dask scheduler" in lines[0], lines
    assert not (tmp_path / "out").exists()
