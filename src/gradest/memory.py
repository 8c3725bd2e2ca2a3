"""What memory the machine has free, and what a run holds per sample: read where a run is sized.

One home for the figures that :mod:`gradest.limits`, :mod:`gradest.compare`, the monitor and the
estimators' own checks use to refuse a run that would not fit, before it starts.
"""

from __future__ import annotations

import torch

#: measured peak memory per sample of one estimator's run (samples, per-sample gradients and the
#: autograd graph): about BASE + PER_NUMBER bytes per number held per sample (parameters + one draw)
BYTES_PER_SAMPLE_BASE, BYTES_PER_SAMPLE_PER_NUMBER = 200, 32


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes, or None where there is no such file."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def available_gpu_memory(device: torch.device) -> int | None:
    """Free memory of the GPU ``device`` in bytes, or None where CUDA cannot say."""
    try:
        return int(torch.cuda.mem_get_info(device)[0])
    except (RuntimeError, AssertionError, ValueError):
        return None
