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

Every task runs with the client's intra-op thread count (Dask starts its worker processes with one
thread, torch's default here is one per core): torch splits its sums by thread, so the same count
gives the same float64 sums, and the workers' rows are those of a serial run bit for bit (on workers
with the same CPU kind and PyTorch build; on other hardware, within float64 rounding).

Failures are Dask's: a worker that dies mid-task has its tasks rescheduled on the others (up to
``distributed.scheduler.allowed-failures`` deaths per task), and since a result is consumed once,
by its position, a retried cell is written once. An error raised *by* a cell (bad input) is not
retried: it is raised here, in the client, and the cells still queued are cancelled. A client that
is killed loses only what it had not written; the sweep resumes from its CSV.

What Dask does is told, never silent: while the scheduler has no worker (none has joined yet, or all
were lost) the map says so (``on_event``: workers seen, tasks waiting) and gives up with a
:class:`GradestError` after ``worker_wait`` seconds instead of waiting forever; a worker lost or joined
mid-run is told as it happens; a scheduler that goes away is one error, naming it.

When Dask pays: a local cluster starts in seconds (its worker processes import torch and gradest;
~14 s on a loaded 2-core machine) and its workers need a core each. On a 2-core machine shared with
~10 runnable processes, ``gradest blr --steps 400`` (6 cells of ~27 s) took 252–265 s on 2 workers
against 161–163 s serially: one cell costs the same in a worker, but two workers compete with each
other for the busy cores. More workers than idle CPUs are told (``on_event``) before the cluster
starts. Cells are whole training runs or sweep cells (small ones are grouped per task), so the work
shipped per task is not what bounds it.

Dask (``dask[distributed]``) is an optional dependency, imported only when a cluster is asked for.
"""

from __future__ import annotations

import logging
import queue
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

from gradest.errors import GradestError
from gradest.limits import THREADS_MAX, WORKERS_MAX, idle_cpus

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


#: seconds a map waits without a worker before giving up, unless told otherwise
WORKER_WAIT = 60.0
#: how often the map looks at the scheduler's workers while results are awaited
WATCH_SECONDS = 1.0
#: how often a wait for workers is told again
TELL_EVERY = 10.0
#: seconds to reach a scheduler: Dask's own timeout, and the bound on a handshake it leaves unbounded
CONNECT_SECONDS = 10.0


def _run_group(fn: Callable[..., Any], items: Sequence[tuple], threads: int) -> list[Any]:
    from gradest.lab.threads import intra_op_threads

    with intra_op_threads(threads):  # the client's count: the serial run's float sums
        return [fn(*item) for item in items]


class _Watch:
    """The scheduler's workers as the map sees them: told on ``on_event`` as they change; a scheduler
    without workers for ``wait`` seconds is a :class:`GradestError`."""

    def __init__(self, client, wait: float, on_event: Callable[[str], None]) -> None:
        self.client, self.wait, self.on_event = client, wait, on_event
        self.address = getattr(client.scheduler, "address", "the scheduler")
        self.known: set[str] = set()
        self.seen = 0  # workers seen in all
        self.empty_since: float | None = None
        self.told = 0.0
        self.checked = 0.0

    def _workers(self) -> set[str]:
        try:
            return set(self.client.nthreads())
        except (OSError, TimeoutError) as err:
            raise GradestError(f"lost the connection to the Dask scheduler at {self.address} ({err}); "
                               "rerun the same command to resume once it is back") from None

    def check(self, waiting: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.checked < WATCH_SECONDS:
            return
        self.checked = now
        workers = self._workers()
        for gone in sorted(self.known - workers):
            self.on_event(f"Dask worker {gone} was lost ({len(workers)} left); its unfinished tasks "
                          "are rerun on the others")
        joined = workers - self.known
        if joined and self.empty_since is not None:
            self.on_event(f"{len(workers)} Dask worker(s) connected; {waiting} task(s) to go")
        self.seen += len(joined)
        self.known = workers
        if workers:
            self.empty_since = None
            return
        if self.empty_since is None:
            self.empty_since, self.told = now, 0.0
        waited = now - self.empty_since
        if waited >= self.wait:
            raise GradestError(
                f"no Dask worker at {self.address} for {self.wait:g} s ({waiting} task(s) waiting, "
                f"{self.seen} worker(s) seen); start workers with: dask worker {self.address} (or run "
                "with --workers N for a local cluster)")
        if now - self.told >= TELL_EVERY or self.told == 0.0:
            self.told = now
            self.on_event(f"waiting for a Dask worker at {self.address}: none connected "
                          f"({self.seen} seen so far), {waiting} task(s) waiting; giving up in "
                          f"{self.wait - waited:.0f} s")


class DaskMap:
    """A :class:`CellMap` over a ``distributed.Client``: cells grouped into tasks, results in cell order.

    Args:
        client: a connected ``distributed.Client``.
        cells_per_task: consecutive cells run as one task. Default: as many as give each worker
            about :data:`TASKS_PER_WORKER` tasks (one cell per task for fewer cells than that), since
            a Dask task costs milliseconds while a small sweep cell takes about as long.
        worker_wait: seconds to wait while the scheduler has no worker before giving up.
        on_event: told what Dask does that the caller should see (waiting for workers, a worker lost).
    """

    def __init__(self, client, cells_per_task: int | None = None, worker_wait: float = WORKER_WAIT,
                 on_event: Callable[[str], None] | None = None) -> None:
        if cells_per_task is not None and cells_per_task < 1:
            raise GradestError(f"cells_per_task must be ≥ 1, got {cells_per_task}")
        self.client = client
        self.cells_per_task = cells_per_task
        self.worker_wait = worker_wait
        self.on_event = on_event or (lambda text: None)

    def _group_size(self, cells: int) -> int:
        if self.cells_per_task is not None:
            return self.cells_per_task
        workers = max(len(self.client.nthreads()), 1)
        return max(cells // (TASKS_PER_WORKER * workers), 1)

    def __call__(self, fn: Callable[..., Any], items: Sequence[tuple]) -> Iterator[Any]:
        _distributed()
        import torch

        _ship_file_modules_by_value()
        size = self._group_size(len(items))
        groups = [items[i:i + size] for i in range(0, len(items), size)]
        threads = min(torch.get_num_threads(), THREADS_MAX)
        # pure=False: two equal groups are still two tasks (a rerun must not be served from a cache)
        futures = [self.client.submit(_run_group, fn, group, threads, pure=False) for group in groups]
        position = {fut.key: i for i, fut in enumerate(futures)}
        finished: queue.Queue = queue.Queue()
        for fut in futures:
            fut.add_done_callback(finished.put)
        watch = _Watch(self.client, self.worker_wait, self.on_event)
        ready: dict[int, list[Any]] = {}
        following = 0
        try:
            watch.check(len(futures), force=True)
            for remaining in range(len(futures), 0, -1):
                while True:
                    try:
                        fut = finished.get(timeout=WATCH_SECONDS)
                        break
                    except queue.Empty:
                        watch.check(remaining)
                ready[position[fut.key]] = self._result(fut, watch, remaining)
                fut.release()  # the worker may forget it: the client holds the only copy now
                watch.check(remaining - 1)
                while following in ready:
                    yield from ready.pop(following)
                    following += 1
            watch.check(0, force=True)  # a worker lost after the last check is told too
        finally:
            # a consumer that stops early (an error, Ctrl-C, a closed generator) leaves no work queued
            try:
                self.client.cancel([f for f in futures if not f.done()])
            except (OSError, TimeoutError, RuntimeError):  # the scheduler is gone: nothing is queued there
                pass

    @staticmethod
    def _result(fut, watch: _Watch, remaining: int) -> list[Any]:
        """The task's cells; .result() re-raises a cell's own error here, in the client.

        A finished task's result can be lost with its worker before it is fetched (Dask then computes
        it again): the fetch waits in steps, watching the workers, instead of waiting forever.
        """
        while True:
            if fut.cancelled():
                raise GradestError(f"the Dask scheduler at {watch.address} dropped the run's tasks (it was "
                                   "stopped or restarted); rerun the same command to resume")
            try:
                return fut.result(timeout=WATCH_SECONDS)
            except TimeoutError:
                watch.check(remaining)


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
    worker_wait: float = WORKER_WAIT,
    on_event: Callable[[str], None] | None = None,
) -> Iterator[CellMap]:
    """The map to run cells with: serial (neither argument), a local Dask cluster, or a scheduler.

    Args:
        workers: start a ``distributed.LocalCluster`` of this many single-threaded workers for the
            duration of the block. Worker processes by default, so that each has its own torch
            thread pool and interpreter lock; ``processes=False`` runs them as threads of this
            process (faster to start; what the tests use).
        scheduler: the address of a running Dask scheduler (``tcp://host:8786``), whose workers
            must have this version of gradest installed.
        worker_wait: seconds to wait while the scheduler has no worker before giving up.
        on_event: told what Dask does (waiting for workers, a worker lost); Dask's own log lines
            below ERROR are kept off the console meanwhile, so the caller's words are the only ones.

    Raises:
        GradestError: both arguments, a worker count outside 1..WORKERS_MAX, Dask not installed, no
            scheduler at the address, or no worker for ``worker_wait`` seconds.
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
    if not worker_wait > 0:
        raise GradestError(f"the wait for Dask workers must be a positive number of seconds, got "
                           f"{worker_wait!r}")
    distributed = _distributed()
    idle = idle_cpus()
    if workers is not None and processes and workers > idle and on_event is not None:
        on_event(f"{workers} Dask workers on {idle} idle CPU{'s' if idle != 1 else ''} of this machine: they "
                 "will compete for cores, and a serial run is likely faster (drop --workers)")
    with _quiet_dask():
        if scheduler is not None:
            client = _connect(distributed, scheduler)
            with client:
                yield DaskMap(client, worker_wait=worker_wait, on_event=on_event)
            return
        with (
            # the scheduler's HTTP server on a free port: 8787 may be another cluster's
            distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                                     dashboard_address=":0") as cluster,
            distributed.Client(cluster) as client,
        ):
            yield DaskMap(client, worker_wait=worker_wait, on_event=on_event)


def _connect(distributed, scheduler: str):
    """A client of the scheduler at ``scheduler``, or a GradestError within about CONNECT_SECONDS.

    Dask bounds the TCP connection but not the handshake after it: a server that accepts the connection
    and never answers (not a Dask scheduler: a web server, a port forwarded nowhere) would hold the
    client forever. The client is made on a thread of its own, which is given up after the bound.
    """
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        try:
            outcome["client"] = distributed.Client(scheduler, timeout=f"{CONNECT_SECONDS:g}s")
        except BaseException as err:  # handed to the caller's thread, which decides
            outcome["error"] = err

    thread = threading.Thread(target=attempt, name="gradest-dask-connect", daemon=True)
    thread.start()
    bound = 1.5 * CONNECT_SECONDS  # Dask's own timeout first, with room to say so
    thread.join(bound)
    if thread.is_alive():
        raise GradestError(f"the server at {scheduler} accepted the connection but did not answer as a Dask "
                           f"scheduler within {bound:g} s; give the address dask scheduler prints "
                           "(tcp://HOST:8786)")
    err = outcome.get("error")
    if isinstance(err, OSError | TimeoutError | ValueError):
        reason = " ".join(str(err).split()) or type(err).__name__
        raise GradestError(f"no Dask scheduler answered at {scheduler}: {reason[:300]}") from None
    if err is not None:
        raise err
    return outcome["client"]


@contextmanager
def _quiet_dask() -> Iterator[None]:
    """Dask's warnings (a worker that died, a connection retried) off the console for the block: the
    map tells them in its own words, and an error must stay the one line the command ends with."""
    names = ["distributed", *(n for n in logging.root.manager.loggerDict if n.startswith("distributed."))]
    levels = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
