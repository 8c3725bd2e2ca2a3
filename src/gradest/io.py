"""Atomic file output: a reader (or a crash) never sees a half-written file.

Every file gradest writes goes through ``write_atomic``: the bytes land in a temporary file in
the target's folder, are flushed to disk, and replace the target in one ``os.replace``. A symbolic
link is written through (its target is replaced, the link stays); a special file (a device, a
pipe, ``/dev/stdout``) is refused, since replacing it would destroy it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from gradest.errors import GradestError


def write_atomic(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically, creating parent folders.

    Raises:
        GradestError: the path is a folder, a file stands where a parent folder must be, or the
            folder cannot be written; nothing is left behind.
    """
    path = Path(path)
    if path.is_dir():
        raise GradestError(f"cannot write {path}: it is a folder; give a file path")
    if path.is_symlink():
        path = Path(os.path.realpath(path))  # write through the link: the link stays a link
    if path.exists() and not path.is_file():
        raise GradestError(
            f"cannot write {path}: it is a special file (a device or a pipe), which an atomic write "
            "would replace; give a regular file path"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise GradestError(
            f"cannot create the folder {path.parent}: a file stands in its path; choose another location"
        ) from None
    except OSError as err:
        raise GradestError(f"cannot create the folder {path.parent}: {err.strerror}") from None
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise GradestError(f"cannot write in {path.parent}: {err.strerror}") from None
    try:
        # mkstemp creates 0600 files; give the result the mode an ordinary open() would
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON with strict numbers (NaN/inf are an error: convert them to null first)."""
    return write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
