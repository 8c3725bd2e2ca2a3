"""Thread counts: the CPUs this process may use (affinity, cgroup quota), and the scoped setting."""

from __future__ import annotations

import builtins
import io
import os

import pytest
import torch

from gradest import limits
from gradest.lab.threads import default_threads, intra_op_threads


def _files(monkeypatch, contents: dict[str, str]) -> None:
    real = builtins.open

    def fake(path, *args, **kwargs):
        if str(path).startswith("/sys/fs/cgroup"):
            if str(path) not in contents:
                raise FileNotFoundError(path)
            return io.StringIO(contents[str(path)])
        return real(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", fake)


@pytest.mark.parametrize(("contents", "quota"), [
    ({"/sys/fs/cgroup/cpu.max": "150000 100000\n"}, 2),  # 1.5 CPUs: two threads, rounded up
    ({"/sys/fs/cgroup/cpu.max": "100000 100000\n"}, 1),
    ({"/sys/fs/cgroup/cpu.max": "max 100000\n"}, None),
    ({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "300000", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"}, 3),
    ({"/sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1", "/sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"}, None),
    ({}, None),
    ({"/sys/fs/cgroup/cpu.max": "garbage"}, None),
])
def test_the_cgroup_quota_bounds_the_usable_cpus(monkeypatch, contents, quota):
    _files(monkeypatch, contents)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    assert limits.usable_cpus() == (8 if quota is None else quota)


def test_the_affinity_mask_bounds_the_usable_cpus(monkeypatch):
    _files(monkeypatch, {"/sys/fs/cgroup/cpu.max": "800000 100000"})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert limits.usable_cpus() == 1


@pytest.mark.parametrize(("load", "idle"), [(0.0, 4), (1.2, 3), (2.6, 1), (9.0, 1)])
def test_busy_cpus_are_not_counted_idle(monkeypatch, load, idle):
    monkeypatch.setattr(limits, "usable_cpus", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    assert limits.idle_cpus() == idle


def test_no_more_threads_than_usable_cpus_by_default_whatever_the_load(monkeypatch):
    monkeypatch.setattr("gradest.lab.threads.usable_cpus", lambda: 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    before = torch.get_num_threads()
    assert default_threads() == 1
    with intra_op_threads(None):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with intra_op_threads(2):
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before


def test_more_local_workers_than_idle_cpus_are_told(monkeypatch):
    pytest.importorskip("distributed")
    from gradest import parallel

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    monkeypatch.setattr(parallel, "idle_cpus", lambda: 1)
    monkeypatch.setattr(parallel, "_quiet_dask", stop)  # before any cluster starts
    events: list[str] = []
    with pytest.raises(Stop), parallel.cell_map(workers=2, on_event=events.append):
        pass
    assert len(events) == 1 and "2 Dask workers on 1 idle CPU" in events[0]
    events.clear()
    monkeypatch.setattr(parallel, "idle_cpus", lambda: 2)
    with pytest.raises(Stop), parallel.cell_map(workers=2, on_event=events.append):
        pass
    assert events == []


def test_the_default_does_not_follow_the_load(monkeypatch):
    # the thread count changes torch's parallel sums: a load-dependent default would change the numbers
    monkeypatch.setattr("gradest.lab.threads.usable_cpus", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    counts = set()
    for load in (0.0, 9.0):
        monkeypatch.setattr(os, "getloadavg", lambda load=load: (load, load, load))
        counts.add(default_threads())
    assert counts == {2}
