"""Atomic file output: a reader (or a crash) never sees a half-written file.

Every file gradest writes goes through ``write_atomic``: the bytes land in a temporary file in
the target's folder, are flushed to disk, and replace the target in one ``os.replace``. A symbolic
link is written through (its target is replaced, the link stays); a special file (a device, a
pipe, ``/dev/stdout``) is refused, since replacing it would destroy it.

A command that writes several files into one output folder holds :func:`output_lock` on it for the
whole run: a second run into the same folder is refused at once (instead of both rewriting the files
and the last writer silently dropping the other's rows), and temporary files that a killed run left
behind (``.NAME.xxxxxxxx.tmp``) are removed. :func:`check_outputs` refuses, before any work, output
paths that a late write would fail on (a folder where a file goes, a file where a folder goes).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
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
    # temporaries of this target that an earlier, killed process left (--json files have no
    # output_lock to clean them); a live writer's temporary is never older than this process
    clean_stale_temps(path.parent, _PROCESS_START, name=path.name)
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """JSON with strict numbers (NaN/inf are an error: convert them to null first)."""
    return write_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")


#: the names :func:`write_atomic`'s temporary files get: ``.`` + target name + ``.`` + mkstemp's 8
#: random characters + ``.tmp``
TEMP_PATTERN = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
_SUFFIX = re.compile(r"[a-z0-9_]{8}\.tmp")


#: when this process loaded gradest.io: temporaries older than it are no live write of this process
_PROCESS_START = time.time()


def clean_stale_temps(folder: str | os.PathLike, before: float, name: str | None = None) -> list[Path]:
    """Remove the temporary files of :func:`write_atomic` in ``folder`` last modified before ``before``
    (a time.time() value): what a killed run left behind. Other files are never touched.

    ``name``: only the temporaries of the target file of that name."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not TEMP_PATTERN.match(entry.name) or (name is not None and not _SUFFIX.fullmatch(
                entry.name.removeprefix(f".{name}."))):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < before:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def _blocking_file(path: Path) -> Path | None:
    """The first of ``path``'s parents that exists and is not a folder."""
    return next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), None)


def check_outputs(folder: str | os.PathLike, names: Iterable[str], option: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot hold the files ``names``.

    Raises:
        GradestError: ``folder`` (or a parent) is a file, or one of the files is a folder or a
            special file; the message names the path and the fix. Nothing is created.
    """
    folder = Path(folder)
    blocked = folder if folder.exists() and not folder.is_dir() else _blocking_file(folder)
    if blocked is not None:
        raise GradestError(f"{option} {folder}: {blocked} is a file, not a folder; choose a folder")
    for name in names:
        path = folder / name
        if path.is_dir():
            raise GradestError(f"{option} {folder}: {path} is a folder where gradest writes a file; "
                               "remove it or choose another folder")
        target = Path(os.path.realpath(path)) if path.is_symlink() else path
        if target.exists() and not target.is_file():
            raise GradestError(f"{option} {folder}: {path} is a special file (a device or a pipe) where "
                               "gradest writes a file; remove it or choose another folder")


@contextmanager
def output_lock(folder: str | os.PathLike, option: str = "--out",
                in_use: Callable[[Path], str] | None = None) -> Iterator[Path]:
    """Hold an exclusive lock on the output ``folder`` (created if needed) for the block.

    A second run into the same folder is refused at once with a GradestError, never merged half-way.
    The lock is ``flock`` on the folder itself, so no lock file is left in it; the kernel releases it
    when the process ends, however it ends. On entry, write_atomic's temporary files older than the
    run are removed (a run killed mid-write leaves one). If the block fails and the folder was created
    here and is still empty, it (and the parents created with it) is removed again: a refused run
    leaves nothing behind. ``in_use(folder)``: the message when another process holds the lock (the run
    folders of :mod:`gradest.runs` name the command that holds it).
    """
    folder = Path(folder)
    start = time.time()
    # the folders this call creates (folder and any missing parents), innermost first
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise GradestError(f"{option} {folder}: a file stands in its path; choose a folder") from None
    except OSError as err:
        raise GradestError(f"{option} {folder}: cannot create the folder: {err.strerror}") from None
    try:
        import fcntl
    except ImportError:  # no flock (Windows): the run goes unlocked, as before
        fcntl = None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as err:
        raise GradestError(f"{option} {folder}: cannot open the folder: {err.strerror}") from None
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise GradestError(
                    in_use(folder) if in_use is not None else
                    f"{option} {folder} is in use by another gradest run; wait for it to finish, or "
                    "choose another folder (two runs into one folder would overwrite each other's files)"
                ) from None
            except OSError:  # a file system without flock (some network mounts): the run goes unlocked
                pass
        clean_stale_temps(folder, start)
        try:
            yield folder
        except BaseException:
            for made in created:
                try:
                    made.rmdir()  # only if empty
                except OSError:
                    break
            raise
    finally:
        os.close(fd)  # releases the flock
