r"""Independent cells on Dask: a local cluster or an existing scheduler, results in the cells' order.

A sweep's cells and the advisor's pilots are independent computations, each seeded by its own
arguments (never by the worker that runs it), so they can run anywhere and in any order and give
the same numbers. A :class:`CellMap` is how the library runs them: ``cell_map(fn, items)`` yields
``fn(*item)`` for every item, **in the order of the items**, as soon as each is available. The
serial map computes them one after the other, here; :class:`DaskMap` submits them all as Dask
tasks (consecutive small cells grouped into one task, since a task costs Dask milliseconds) and
buffers results that finish out of order until the ones before them are in, so a caller
that writes each result as it comes (the sweep's resumable CSV) writes the same file a serial run
writes, prefix by prefix.

Failures are Dask's: a worker that dies mid-task has its tasks rescheduled on the others (up to
``distributed.scheduler.allowed-failures`` deaths per task), and since a result is consumed once,
by its position, a retried cell is written once. An error raised *by* a cell (bad input) is not
retried: it is raised here, in the client, and the cells still queued are cancelled. A client that
is killed loses only what it had not written; the sweep resumes from its CSV.

Dask (``dask[distributed]``) is an optional dependency, imported only when a cluster is asked for.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from gradest.errors import GradestError
from gradest.limits import WORKERS_MAX

INSTALL_HINT = "pip install 'gradest[dask]'"
#: the prefix :func:`gradest.costs.load_cost` gives modules loaded from a FILE.py, which no worker
#: can import: functions from them travel by value
_FILE_MODULE_PREFIX = "_gradest_cost_"


class CellMap(Protocol):
    """``cell_map(fn, items)``: ``fn(*item)`` for each item, yielded in the items' order."""

    def __call__(self, fn: Callable[..., Any], items: Sequence[tuple]) -> Iterator[Any]: ...


def serial_map(fn: Callable[..., Any], items: Sequence[tuple]) -> Iterator[Any]:
    """The cells one after the other, in this process (lazily: each when the caller asks for it)."""
    for item in items:
        yield fn(*item)


def _distributed():
    try:
        import distributed
    except ImportError:
        raise GradestError(f"running on Dask (--workers, --scheduler) needs Dask: {INSTALL_HINT}") from None
    return distributed


def dask_available() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        return False
    return True


#: tasks per worker when cells are grouped: enough for the load to balance, few enough that Dask's
#: few milliseconds per task do not outweigh small cells
TASKS_PER_WORKER = 8


def _run_group(fn: Callable[..., Any], items: Sequence[tuple]) -> list[Any]:
    return [fn(*item) for item in items]


class DaskMap:
    """A :class:`CellMap` over a ``distributed.Client``: cells grouped into tasks, results in cell order.

    Args:
        client: a connected ``distributed.Client``.
        cells_per_task: consecutive cells run as one task. Default: as many as give each worker
            about :data:`TASKS_PER_WORKER` tasks (one cell per task for fewer cells than that), since
            a Dask task costs milliseconds while a small sweep cell takes about as long.
    """

    def __init__(self, client, cells_per_task: int | None = None) -> None:
        if cells_per_task is not None and cells_per_task < 1:
            raise GradestError(f"cells_per_task must be ≥ 1, got {cells_per_task}")
        self.client = client
        self.cells_per_task = cells_per_task

    def _group_size(self, cells: int) -> int:
        if self.cells_per_task is not None:
            return self.cells_per_task
        workers = max(len(self.client.scheduler_info().get("workers", {})), 1)
        return max(cells // (TASKS_PER_WORKER * workers), 1)

    def __call__(self, fn: Callable[..., Any], items: Sequence[tuple]) -> Iterator[Any]:
        distributed = _distributed()
        _ship_file_modules_by_value()
        size = self._group_size(len(items))
        groups = [items[i:i + size] for i in range(0, len(items), size)]
        # pure=False: two equal groups are still two tasks (a rerun must not be served from a cache)
        futures = [self.client.submit(_run_group, fn, group, pure=False) for group in groups]
        position = {fut.key: i for i, fut in enumerate(futures)}
        ready: dict[int, list[Any]] = {}
        following = 0
        try:
            for fut in distributed.as_completed(futures):
                # .result() re-raises the cell's own error here, in the client
                ready[position[fut.key]] = fut.result()
                fut.release()  # the worker may forget it: the client holds the only copy now
                while following in ready:
                    yield from ready.pop(following)
                    following += 1
        finally:
            # a consumer that stops early (an error, Ctrl-C, a closed generator) leaves no work queued
            self.client.cancel([f for f in futures if not f.done()])


def _ship_file_modules_by_value() -> None:
    import cloudpickle

    # every such module, whatever wraps its functions (a partial for --k, the contract check)
    for name, module in list(sys.modules.items()):
        if name.startswith(_FILE_MODULE_PREFIX):
            cloudpickle.register_pickle_by_value(module)


@contextmanager
def cell_map(
    workers: int | None = None,
    scheduler: str | None = None,
    processes: bool = True,
) -> Iterator[CellMap]:
    """The map to run cells with: serial (neither argument), a local Dask cluster, or a scheduler.

    Args:
        workers: start a ``distributed.LocalCluster`` of this many single-threaded workers for the
            duration of the block. Worker processes by default, so that each has its own torch
            thread pool and interpreter lock; ``processes=False`` runs them as threads of this
            process (faster to start; what the tests use).
        scheduler: the address of a running Dask scheduler (``tcp://host:8786``), whose workers
            must have this version of gradest installed.

    Raises:
        GradestError: both arguments, a worker count outside 1..WORKERS_MAX, Dask not installed, or
            no scheduler at the address.
    """
    if workers is not None and scheduler is not None:
        raise GradestError("give --workers N (a local Dask cluster) or --scheduler ADDRESS, not both")
    if workers is None and scheduler is None:
        yield serial_map
        return
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or not 1 <= workers <= WORKERS_MAX):
        raise GradestError(f"--workers must be an integer from 1 to {WORKERS_MAX} (two per CPU core, at "
                           f"least 8), got {workers!r}")
    distributed = _distributed()
    if scheduler is not None:
        try:
            client = distributed.Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as err:
            raise GradestError(f"no Dask scheduler answered at {scheduler}: {err}") from None
        with client:
            yield DaskMap(client)
        return
    with (
        # the scheduler's HTTP server on a free port: 8787 may be another cluster's
        distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                                 dashboard_address=":0") as cluster,
        distributed.Client(cluster) as client,
    ):
        yield DaskMap(client)
