r"""What the machine bounds, checked before a run starts: memory, time, threads, worker processes.

Memory: a run holding m numbers per sample (parameters, one draw, per-sample gradients and the autograd
graph) peaks at about

    need = N · (BASE + PER_NUMBER · m) bytes,

with the constants measured for :mod:`gradest.compare` (one home for them). A request beyond the
free memory is refused with the largest N that fits, instead of an allocator error deep inside an
estimator (or the kernel killing the process without a word).
"""

from __future__ import annotations

import os

from gradest.errors import GradestError

#: the most torch intra-op threads a run may ask for: 4 per CPU core (at least 64); more only
#: oversubscribe the cores, and torch crashes (a segmentation fault) on a pool of 100 000
THREADS_MAX = max(64, 4 * (os.cpu_count() or 1))
#: the most local Dask worker processes --workers may start: two per CPU core (at least 8); beyond
#: that they only oversubscribe the cores, and 100 000 of them would exhaust the machine's processes
WORKERS_MAX = max(8, 2 * (os.cpu_count() or 1))



def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, bounded by a cgroup CPU quota (cgroup v2
    ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), rounded up; at least 1. A container
    given 2 CPUs of a 64-core machine reads 2 here, where ``os.cpu_count()`` (and torch) read 64."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no affinity masks (macOS, Windows)
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota()
    if quota is not None:
        cpus = min(cpus, quota)
    return max(cpus, 1)


def idle_cpus() -> int:
    """The usable CPUs (:func:`usable_cpus`) not already kept busy by runnable processes, by the
    1-minute load average; at least 1. Threads beyond the idle CPUs do not add speed: torch's
    threads wait for each other at every operation, and one preempted thread stalls the rest (a
    digits VAE epoch took 0.07 s with one thread and 8–17 s with two on a 2-core machine at load 8)."""
    cpus = usable_cpus()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows)
        return cpus
    return max(1, min(cpus, int(cpus - load + 0.5)))


def _cgroup_quota() -> int | None:
    """CPUs allowed by the cgroup's bandwidth limit (None: no limit, or none readable)."""
    for path, parse in (("/sys/fs/cgroup/cpu.max", lambda t: t.split()[:2]),
                        ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", None)):
        try:
            with open(path, encoding="ascii") as handle:
                text = handle.read().strip()
            if parse is not None:
                quota, period = parse(text)
            else:
                with open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as handle:
                    quota, period = text, handle.read().strip()
            if quota in ("max", "-1"):
                return None
            return max(1, -(-int(quota) // int(period)))
        except (OSError, ValueError, ZeroDivisionError):
            continue
    return None


_SAMPLES_HINT = "the standard error falls like 1/√N, so 4× fewer samples only doubles it"


def refuse_beyond_memory(option: str, count: int, numbers: int = 1, *, per_item: float | None = None,
                         hint: str = _SAMPLES_HINT) -> None:
    """Raise GradestError if ``count`` samples of ``numbers`` numbers each would not fit in free memory.

    ``option`` names what to change (``--samples``, ``--variance-samples``). ``per_item``: bytes per
    counted item instead of the per-sample estimate (e.g. a training step's logged record), with its
    own ``hint``. Where free memory cannot be read (no /proc/meminfo) nothing is refused.
    """
    from gradest.memory import BYTES_PER_SAMPLE_BASE, BYTES_PER_SAMPLE_PER_NUMBER, available_memory

    available = available_memory()
    if available is None:
        return
    per_sample = (BYTES_PER_SAMPLE_BASE + BYTES_PER_SAMPLE_PER_NUMBER * max(int(numbers), 1)
                  if per_item is None else per_item)
    need = int(count) * per_sample
    if need > available:
        # half of what would fill memory: the estimate is rough and the machine runs other things
        fits = max(2, int(available // (2 * per_sample)))
        raise GradestError(
            f"{option} {count} needs about {need / 2**30:.1f} GiB, more than the {available / 2**30:.1f} "
            f"GiB available; use at most about {fits} ({hint})"
        )


#: the longest run a count may ask for: a value that cannot finish within a week even at the fastest
#: speed measured is refused, with the largest value that could (a typo of a few zeros, not a plan)
TIME_BUDGET_SECONDS = 7 * 86400


def refuse_beyond_time(option: str, count: int, seconds_each: float, *, unit: str, hint: str = "") -> None:
    """Raise GradestError if ``count`` units of at least ``seconds_each`` seconds each exceed
    :data:`TIME_BUDGET_SECONDS`: a run that would go on for weeks is refused before it starts.

    ``seconds_each`` is a lower bound (the fastest case measured), so nothing that could finish in time
    is refused; ``unit`` names one unit (``epoch``, ``step``).
    """
    if count * seconds_each <= TIME_BUDGET_SECONDS:
        return
    fits = max(1, int(TIME_BUDGET_SECONDS // seconds_each))
    days = count * seconds_each / 86400
    span = f"{days:.3g} days" if days < 3650 else f"{days / 365.25:.3g} years"
    raise GradestError(
        f"{option} {count} would run for at least {span} (≥ {seconds_each:.2g} s per {unit}); give at most "
        f"{fits}, a week's worth{f' ({hint})' if hint else ''}"
    )
