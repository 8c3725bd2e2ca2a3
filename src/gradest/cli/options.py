"""Options shared by several commands: one definition, one help text, one parser each
(:mod:`gradest.cli.validate`)."""

from __future__ import annotations

from typing import Annotated

from typer.models import OptionInfo

from gradest.cli.validate import SEED_MAX, SEED_RANGE, Address, Count, DeviceName, Real, Seed, option
from gradest.limits import THREADS_MAX, WORKERS_MAX

__all__ = [
    "SEED_MAX",
    "SEED_RANGE",
    "THREADS_HELP",
    "Device",
    "Scheduler",
    "WorkerWait",
    "Workers",
    "seed_option",
    "threads_option",
]

Device = Annotated[str, option(
    DeviceName(),
    "Where the tensors live: cpu, cuda (the current GPU) or cuda:N; cuda needs a PyTorch build with "
    "CUDA and a GPU. Same seed, same numbers on a given device.")]


def seed_option(text: str) -> OptionInfo:
    """``--seed`` with help ``text``, and the seed rule every command shares (refused outside it, exit 2)."""
    return option(Seed(), f"{text} {SEED_RANGE[0].upper()}{SEED_RANGE[1:]}.")


#: --threads of the commands whose tensors are large enough for threads to pay (default 0)
THREADS_HELP = ("torch intra-op threads; 0 (the default): the CPUs this process may use (its affinity "
                "mask and cgroup CPU quota), the same on every run, since the count changes torch's "
                "sums in the last digits. On a busy machine give 1: more threads than idle CPUs can "
                "make a step tens of times slower.")


def threads_option(text: str) -> OptionInfo:
    """``--threads``: 0 (the CPUs this process may use) or 1 … THREADS_MAX; torch crashes on a pool of
    100 000."""
    return option(Count(0, THREADS_MAX, meaning=" (0: the CPUs this process may use; 4 per CPU "
                                                "core, at least 64)"),
                  f"{text} At most {THREADS_MAX}.")


Workers = Annotated[int | None, option(
    Count(1, WORKERS_MAX, meaning=" (two per CPU core, at least 8)"),
    "Run the cells as tasks on a local Dask cluster of this many worker processes (one thread each); "
    "same rows, same order as a serial run. Pays only with an idle core per worker and cells of "
    "seconds or more: the cluster takes seconds to start, and on a busy machine the workers compete "
    "for its cores (slower than a serial run). Needs pip install 'gradest[dask]'.")]
Scheduler = Annotated[str | None, option(
    Address(),
    "Run the cells on an existing Dask scheduler, e.g. tcp://10.0.0.5:8786 (its workers need gradest "
    "installed); same rows, same order as a serial run.")]
#: how long a run on --scheduler waits while the scheduler has no worker, before it gives up
WORKER_WAIT = 60.0
WorkerWait = Annotated[float, option(
    Real(0.0, 86400.0, lo_open=True, meaning=" seconds"),
    "With --scheduler: how long to wait, in seconds, while the scheduler has no worker (at the start, or "
    "after losing them all) before giving up with an error.")]
