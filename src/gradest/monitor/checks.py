"""What the monitor checks before it runs: its JSON-lines file, tags, prefix, steps, and the memory
its repeats need."""

from __future__ import annotations

import inspect
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gradest.errors import GradestError
from gradest.monitor.records import GroupStats

if TYPE_CHECKING:
    pass




def _takes_repeats(fn: Callable[..., Any]) -> bool:
    try:
        return "repeats" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def check_jsonl(path: object) -> Path:
    """``path`` as a file the monitor can append to, or a GradestError — at construction, not at the
    first measurement minutes into training. Leaves no trace (an absent file is created and removed)."""
    if not isinstance(path, str | os.PathLike) or isinstance(os.fspath(path), bytes):
        raise GradestError(f"jsonl must be a file path (a str or a pathlib.Path), got {type(path).__name__}")
    text = os.fspath(path)
    if not text.strip() or "\0" in text:
        raise GradestError(f"jsonl={text!r} is not a file name; give one, e.g. jsonl='run/monitor.jsonl'")
    target = Path(text)
    try:
        _check_file_target(target, text)
    except OSError as err:  # a name too long, a loop of links, …
        raise GradestError(f"jsonl={text[:60]!r}: cannot write there ({err.strerror or err}); give a "
                           "writable file path") from None
    return target


def _check_file_target(target: Path, text: str) -> None:
    longest = max(target.parts, key=lambda part: len(os.fsencode(part)))
    if len(os.fsencode(longest)) > _NAME_MAX:
        raise GradestError(f"jsonl: the name {longest[:40]}… has {len(os.fsencode(longest))} bytes, more "
                           f"than the {_NAME_MAX} a file name may have; give a shorter one")
    if target.is_dir() or text.endswith(os.sep):
        raise GradestError(f"jsonl={text!r} is a folder; give a file in it, e.g. {target / 'monitor.jsonl'}")
    folder = target.absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise GradestError(f"jsonl={text!r} lies under {folder}, which is a file; give a path in a folder")
    try:
        if target.exists():
            with open(target, "a", encoding="utf-8"):
                pass
        elif target.parent.exists():
            os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
            os.unlink(target)
        elif not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except FileExistsError:  # created meanwhile by someone else: it exists, the monitor appends to it
        pass


def _check_tags(tags: object) -> dict[str, Any]:
    """Constant JSON fields; a tag named like a record field would silently overwrite it (or be lost)."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise GradestError(f"tags must be a mapping of field -> value, e.g. {{'estimator': 'score-loo'}}, "
                           f"got {type(tags).__name__}")
    out = dict(tags)
    bad = [k for k in out if not isinstance(k, str)]
    if bad:
        raise GradestError(f"tag names must be strings, got {bad[0]!r}")
    taken = [k for k in out if k in GroupStats._fields]
    if taken:
        raise GradestError(f"tag {taken[0]!r} is a field of every record ({', '.join(GroupStats._fields)}); "
                           "name the tag otherwise, e.g. 'run_" + taken[0] + "'")
    try:
        json.dumps(out, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise GradestError(f"tags must be JSON values (str, finite numbers, bool, None, lists, dicts): "
                           f"{err}") from None
    return out


def _check_prefix(prefix: object) -> str:
    if not isinstance(prefix, str) or not prefix.strip():
        raise GradestError(f"prefix (the TensorBoard tag prefix) must be a non-empty string, got {prefix!r}")
    return prefix


def _check_step(step: object) -> int:
    if isinstance(step, bool | np.bool_) or not isinstance(step, int | np.integer) or step < 0:
        raise GradestError(f"step must be the training step, an integer ≥ 0, got {step!r}")
    return int(step)


#: the longest file or folder name most file systems take, in bytes (ext4, XFS, APFS, NTFS)
_NAME_MAX = 255


#: bytes per repeat and monitored number (float64 estimates, their deviations and a copy), and per
#: pair of repeats (the Gram matrix and the batched path's identity)
_BYTES_PER_ESTIMATE, _BYTES_PER_PAIR = 32, 16


def _refuse_beyond_memory(repeats: int, numbers: int, device: torch.device) -> None:
    """Refuse ``repeats`` whose estimates could never fit in memory (the kernel would kill the run)."""
    from gradest.memory import available_gpu_memory, available_memory

    available = available_gpu_memory(device) if device.type == "cuda" else available_memory()
    if available is None:
        return
    need = repeats * numbers * _BYTES_PER_ESTIMATE + repeats**2 * _BYTES_PER_PAIR
    if need > available:
        fits = 2
        while 2 * fits * numbers * _BYTES_PER_ESTIMATE + (2 * fits) ** 2 * _BYTES_PER_PAIR <= available // 2:
            fits *= 2
        raise GradestError(f"repeats={repeats} needs about {need / 2**30:.1f} GiB for the estimates of "
                           f"{numbers} numbers, more than the {available / 2**30:.1f} GiB available; use "
                           f"repeats ≤ {fits} (128 to 256 resolve the variance well)")
