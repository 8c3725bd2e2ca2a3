"""Run folders: each belongs to the run, and the command, that made it, from its first write to its last.

Every command that writes a folder of results has the files it writes there listed in
:data:`OUTPUTS` (its library module takes its file list from there; tests/test_cli_runs.py checks
that each command writes exactly these) and enters :func:`claim` before its first write and leaves it
after its last one. A claim

- checks, before anything is created, that the files can be written (:func:`gradest.io.check_outputs`);
- holds the folder's lock for the whole run (:func:`gradest.io.output_lock`): a second run into it, of
  any command, is refused at once, naming the command whose files the folder holds;
- refuses a folder that belongs to another command, naming it. A folder's owner is read from what it
  holds, so no file of gradest's own is added to a run folder: a command owns a folder holding one of
  the files that it alone writes (``checkpoint.pt``, ``sweep.csv``, ``blr.png``, …, derived from
  :data:`OUTPUTS`), and a folder holding run folders belongs to ``vae compare``. So ``blr`` can never
  replace a VAE run's ``summary.json``. A folder that the same command made is that command's to
  continue (a sweep resumes, ``vae train --resume`` continues, a rerun of ``gaussian`` replaces its
  report); a new or empty folder, or one holding files no command writes, is the claimant's;
- if the run fails before writing anything, a folder the claim created is removed again, so a refused
  run leaves the disk as it found it.

:func:`check_file_target` applies the rule to single files (``--json``): a file that the folder's
owner writes is never replaced (``vae eval RUN --json RUN/eval.json`` is fine, ``RUN/summary.json``
is refused).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gradest.errors import GradestError
from gradest.io import TEMP_PATTERN, check_outputs, output_lock

#: command -> the files it writes into its run folder. A command is told by the files only it writes,
#: so each writes at least one file of its own name, or (``vae compare``) holds run folders.
OUTPUTS: dict[str, tuple[str, ...]] = {
    "gaussian": ("report.html", "variance_vs_sigma.png", "stderr_vs_samples.png", "trajectories.png",
                 "results.json"),
    "sweep": ("sweep.csv", "sweep.png", "report.html"),
    "blr": ("metrics.csv", "summary.json", "blr.png", "report.html", "monitor.jsonl"),
    "discrete": ("results.json", "discrete.png", "report.html"),
    "vae train": ("checkpoint.pt", "metrics.jsonl", "monitor.jsonl", "summary.json", "config.json",
                  "report.html"),
    "vae compare": ("report.html",),
}
#: the commands whose folder holds run folders of other commands (one vae train run per estimator)
_COLLECTIONS = {"vae compare"}


def _distinctive(command: str) -> set[str]:
    """The files only ``command`` writes: one of them in a folder says whose it is."""
    others = {name for other, files in OUTPUTS.items() if other != command for name in files}
    return set(OUTPUTS.get(command, ())) - others


def _entries(folder: Path, strict: bool = True) -> tuple[set[str], list[Path]]:
    """(names of the files in ``folder``, its subfolders); write_atomic's temporaries left out.
    ``strict``: a folder that cannot be listed is an error (else it holds nothing that is known)."""
    files, folders = set(), []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return files, folders
    except OSError as err:
        if not strict:
            return files, folders
        raise GradestError(f"cannot list {folder}: {err.strerror}") from None
    for entry in entries:
        if TEMP_PATTERN.match(entry.name):
            continue
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            folders.append(Path(entry.path))
        else:
            files.add(entry.name)
    return files, folders


def _holders(files: set[str]) -> set[str]:
    return {command for command in OUTPUTS if files & _distinctive(command)}


def owners(folder: str | os.PathLike) -> list[str]:
    """The commands whose run ``folder`` is, read from what it holds (sorted; usually one or none): the
    commands whose own files it holds, and the collecting command if it holds run folders."""
    files, subfolders = _entries(Path(folder))
    found = _holders(files)
    if any(_holders(_entries(sub, strict=False)[0]) for sub in subfolders):
        found |= _COLLECTIONS
    return sorted(found)


def _named(commands: Iterable[str]) -> str:
    return " and ".join(f"gradest {c}" for c in commands)


def _in_use(folder: Path, option: str) -> str:
    try:
        who = owners(folder)
    except GradestError:
        who = []
    running = f"a running {_named(who)}" if who else "another gradest run"
    return (f"{option} {folder} is in use by {running}; wait for it to finish, or choose another folder "
            "(two runs into one folder would overwrite each other's files)")


def _refuse_others(folder: Path, command: str, option: str) -> None:
    others = [c for c in owners(folder) if c != command]
    if others:
        raise GradestError(
            f"{option} {folder} holds a run of {_named(others)}; gradest {command} will not write into it "
            "(it would replace that run's files): choose another folder"
        )


@contextmanager
def claim(folder: str | os.PathLike, command: str, files: Iterable[str] | None = None,
          option: str = "--out") -> Iterator[Path]:
    """Hold ``folder`` as the run folder of ``command`` for the block.

    ``files``: what the command writes there (default: its :data:`OUTPUTS`).

    Raises:
        GradestError: the folder cannot hold the files, is in use by another run, or holds a run of
            another command. Nothing is created or changed then.
    """
    folder = Path(folder)
    files = tuple(OUTPUTS.get(command, ()) if files is None else files)
    check_outputs(folder, files, option)
    _refuse_others(folder, command, option)  # before the folder is created or locked
    with output_lock(folder, option, in_use=lambda f: _in_use(f, option)) as held:
        _refuse_others(held, command, option)  # again under the lock: what a run that just ended wrote
        yield held


def check_claimable(folder: str | os.PathLike, command: str, files: Iterable[str] | None = None,
                    option: str = "--out") -> None:
    """The checks of :func:`claim` without taking the folder (a process that reads but never writes it,
    as a data-parallel rank other than 0 does): same refusals, nothing written."""
    folder = Path(folder)
    check_outputs(folder, tuple(OUTPUTS.get(command, ()) if files is None else files), option)
    _refuse_others(folder, command, option)


def check_file_target(path: str | os.PathLike) -> None:
    """Refuse a single output file that would replace a file of the run in its folder.

    Raises:
        GradestError: ``path`` is one of the files that the command owning its folder writes.
    """
    path = Path(path)
    if path.is_symlink():  # write_atomic writes through a link: the file it replaces is the target
        path = Path(os.path.realpath(path))
    for command in owners(path.parent):
        if path.name in OUTPUTS[command]:
            raise GradestError(
                f"{path} is a file of the gradest {command} run in {path.parent}, which writing here would "
                "replace; give another file name"
            )


__all__ = ["OUTPUTS", "check_claimable", "check_file_target", "claim", "owners"]
