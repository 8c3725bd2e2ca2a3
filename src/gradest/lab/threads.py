"""Scoped intra-op thread count for timing and training runs of small batched tensors.

The laboratory's tensors are small (a few thousand elements), so torch's intra-op thread pool
gains nothing on them, while on a busy machine its wake-ups make the same call 5–100× slower
and its timings irreproducible. Runs therefore take an explicit thread count (default 1), set
for their duration and restored afterwards; None takes the CPUs this process may use and finds
may use (:func:`gradest.limits.usable_cpus`: its affinity and cgroup quota; never more, where
torch's own default counts every core of the machine). Not fewer where the machine is busy: the
thread count changes the order of torch's parallel sums, so a default that followed the load average
would give the same seed different numbers from one run to the next. On a busy machine pass 1.
The count is bounded by :data:`gradest.limits.THREADS_MAX`: torch accepts any number and crashes
(a segmentation fault) on a pool of 100 000 threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from gradest.errors import GradestError
from gradest.limits import THREADS_MAX, usable_cpus


def check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= THREADS_MAX):
        raise GradestError(f"threads must be an integer from 1 to {THREADS_MAX} (4 per CPU core, at least "
                           f"64), or None: the CPUs this process may use; got {threads!r}")
    return threads


def default_threads() -> int:
    """torch's thread count, never more than the CPUs this process may use
    (:func:`gradest.limits.usable_cpus`: affinity, cgroup quota) — the same on every run of a machine."""
    return max(1, min(torch.get_num_threads(), usable_cpus()))


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; None: :func:`default_threads`."""
    if check_threads(threads) is None:
        threads = default_threads()
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
