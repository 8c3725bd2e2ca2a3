"""Atomic writes: complete files or nothing, and bad destinations as one-line errors."""

import os

import pytest

from gradest.errors import GradestError
from gradest.io import write_atomic, write_json


def test_writes_complete_file_with_ordinary_mode_and_no_leftovers(tmp_path):
    target = tmp_path / "a" / "b" / "out.json"
    write_json(target, {"x": [1, 2]})
    assert target.read_text() == '{\n  "x": [\n    1,\n    2\n  ]\n}\n'
    assert oct(os.stat(target).st_mode & 0o777) == oct(0o666 & ~_umask())
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    write_atomic(target, "old")
    with pytest.raises(ValueError, match="Out of range float values"):
        write_json(target, {"x": float("nan")})
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_bad_destinations_are_gradest_errors(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(GradestError, match="it is a folder"):
        write_atomic(tmp_path, "x")
    with pytest.raises(GradestError, match="a file stands in its path"):
        write_atomic(tmp_path / "file" / "sub" / "out.txt", "x")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_symlink_is_written_through_and_stays_a_link(tmp_path):
    target = tmp_path / "real.json"
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_atomic(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_text() == "new"


def test_a_special_file_is_refused_not_replaced(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(GradestError, match="special file"):
        write_atomic(fifo, "x")
    assert fifo.exists() and not fifo.is_file()
    # a link to a special file (as /dev/stdout is) is refused the same way
    link = tmp_path / "stdout"
    link.symlink_to(fifo)
    with pytest.raises(GradestError, match="special file"):
        write_atomic(link, "x")
    assert link.is_symlink()
