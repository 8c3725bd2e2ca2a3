"""Where the tensors of a run live: the ``--device`` of every command, checked in one place.

``resolve_device("cuda")`` on a machine without CUDA raises :class:`GradestError`, which the
command line turns into one ``error: …`` line and exit code 2, before any work is done.
"""

from __future__ import annotations

import torch

from gradest.errors import GradestError

#: what ``--device`` accepts, in the words of the help and the errors
DEVICES = "cpu, cuda or cuda:N"


def resolve_device(name: str | torch.device) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a :class:`torch.device`, checked to exist on this machine."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise GradestError(f"--device {name!r} is not a device; use {DEVICES}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise GradestError(
            f"--device {name}: CUDA is not available (this PyTorch build or machine has no GPU); "
            "use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise GradestError(f"--device {name!r}: only cpu and cuda are supported")
    if device.type == "cpu" and device.index not in (None, 0):
        # torch accepts cpu:N for any N, and every such device is the one CPU: a typo for cuda:N
        raise GradestError(f"--device {name!r}: there is one CPU device, cpu (for a GPU: cuda:N)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise GradestError(
            f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}"
        )
    return device


def device_of(tensors, default: str | torch.device = "cpu") -> torch.device:
    """The one device of ``tensors`` (an iterable of tensors); ``default`` when there are none."""
    devices = {t.device for t in tensors}
    if not devices:
        return torch.device(default)
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise GradestError(f"the parameters are on different devices ({names}); put them on one device")
    return devices.pop()
