"""Scoped intra-op thread count for timing and training runs of small batched tensors.

The laboratory's tensors are small (a few thousand elements), so torch's intra-op thread pool
gains nothing on them, while on a busy machine its wake-ups make the same call 5–100× slower
and its timings irreproducible. Runs therefore take an explicit thread count (default 1), set
for their duration and restored afterwards. The count is bounded by :data:`gradest.limits.THREADS_MAX`: torch
accepts any number and crashes (a segmentation fault) on a pool of 100 000 threads.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from gradest.errors import GradestError
from gradest.limits import THREADS_MAX


def check_threads(threads: int | None) -> int | None:
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or not 1 <= threads <= THREADS_MAX):
        raise GradestError(f"threads must be an integer from 1 to {THREADS_MAX} (4 per CPU core, at least "
                           f"64), or None: torch's setting; got {threads!r}")
    return threads


@contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(threads)``; None leaves torch's setting alone."""
    if check_threads(threads) is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
