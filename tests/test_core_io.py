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


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    import time

    from gradest.io import clean_stale_temps

    stale = tmp_path / ".sweep.csv.ab12_x9z.tmp"
    fresh = tmp_path / ".sweep.csv.qq12_x9z.tmp"
    lookalikes = [tmp_path / n for n in (".sweep.csv.tmp", "sweep.csv.ab12_x9z.tmp", ".notes.ABCDEFGH.tmp",
                                         ".x.abcdefgh.tmp.bak", "sweep.csv")]
    for path in (stale, fresh, *lookalikes):
        path.write_text("x")
    start = time.time()
    os.utime(stale, (start - 10, start - 10))
    os.utime(fresh, (start + 10, start + 10))  # written after the run began: not ours to remove
    for path in lookalikes:
        os.utime(path, (start - 10, start - 10))
    assert clean_stale_temps(tmp_path, start) == [stale]
    assert not stale.exists() and fresh.exists() and all(p.exists() for p in lookalikes)


def test_a_second_lock_on_one_folder_is_refused_and_released_with_the_first(tmp_path):
    from gradest.io import output_lock

    out = tmp_path / "out"
    with output_lock(out):
        with pytest.raises(GradestError, match="in use by another gradest run"):
            with output_lock(out):
                pass
    with output_lock(out):  # released
        pass
    assert list(out.iterdir()) == []  # no lock file left behind


def test_a_failed_run_removes_the_folders_its_lock_created(tmp_path):
    from gradest.io import output_lock

    out = tmp_path / "a" / "b"
    with pytest.raises(GradestError, match="late"):
        with output_lock(out):
            raise GradestError("late")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "kept").mkdir()
    with pytest.raises(GradestError), output_lock(tmp_path / "kept"):
        raise GradestError("late")
    assert (tmp_path / "kept").is_dir()  # it existed before: left alone


def test_outputs_are_checked_before_any_work(tmp_path):
    from gradest.io import check_outputs

    (tmp_path / "out" / "report.html").mkdir(parents=True)
    with pytest.raises(GradestError, match=r"report\.html is a folder"):
        check_outputs(tmp_path / "out", ("sweep.csv", "report.html"))
    (tmp_path / "file").write_text("x")
    with pytest.raises(GradestError, match="is a file, not a folder"):
        check_outputs(tmp_path / "file" / "sub", ("sweep.csv",))
    with pytest.raises(GradestError, match="is a file, not a folder"):
        check_outputs(tmp_path / "file", ("sweep.csv",))
    fifo = tmp_path / "fifo_out"
    fifo.mkdir()
    os.mkfifo(fifo / "sweep.csv")
    with pytest.raises(GradestError, match="special file"):
        check_outputs(fifo, ("sweep.csv",))
    check_outputs(tmp_path / "new" / "folder", ("sweep.csv",))
    assert not (tmp_path / "new").exists()


def test_a_write_removes_its_targets_temporaries_from_killed_processes(tmp_path):
    # --json files have no output folder to lock: the write itself removes what a killed run left
    import time

    stale = tmp_path / ".out.json.k1ll3d_x.tmp"
    other = tmp_path / ".out.json.bak.k1ll3d_x.tmp"  # another target's temporary
    fresh = tmp_path / ".out.json.l1v3_abc.tmp"  # newer than this process: perhaps a live write
    for path in (stale, other, fresh):
        path.write_text("half")
    long_ago = time.time() - 3600
    for path in (stale, other):
        os.utime(path, (long_ago, long_ago))
    os.utime(fresh, (time.time() + 60, time.time() + 60))
    write_json(tmp_path / "out.json", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, fresh.name, "out.json"])
