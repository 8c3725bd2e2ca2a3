"""Run folders are owned (gradest.runs): a folder belongs to the run, and the command, that made it.

One tiny run of each command that writes a run folder is made once; every test works on copies. Another
command into a run's folder is refused with one error line naming the owner, and the run's files are
unchanged byte for byte; a run holds its folder from its first write to its last (``vae train``'s report
included); ``--json`` never replaces a run's file; a refused run leaves nothing behind.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path

import pytest

from gradest.cli import main
from gradest.runs import OUTPUTS, owners

VAE = ["vae", "train", "--dataset", "digits", "--hidden", "4", "--latent", "2", "--epochs", "1",
       "--batch-size", "512", "--monitor-repeats", "0", "--iwae-k", "2"]
RUNS = {
    "vae train": VAE,
    "sweep": ["sweep", "--samples", "64", "--cost", "square", "--k", "1", "--estimator", "pathwise"],
    "blr": ["blr", "--steps", "2", "--estimator", "pathwise", "--variance-samples", "8", "--log-every", "1",
            "--samples", "4"],
    "discrete": ["discrete", "--samples", "80", "--bits", "1", "--t", "0.45", "--estimator", "score",
                 "--sign-samples", "1", "--relax-steps", "0"],
}
#: the commands as a second run into a folder: each refused before any work when the folder is not theirs
INTO = {
    "blr": RUNS["blr"],
    "sweep": RUNS["sweep"],
    "discrete": RUNS["discrete"],
    "gaussian": ["gaussian", "--steps", "2", "--samples-per-step", "2"],
    "vae train": VAE,
    "vae compare": ["vae", "compare", *VAE[2:], "--estimator", "pathwise"],
}


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    """command -> its run folder, made once by the command line."""
    root = tmp_path_factory.mktemp("runs")
    folders = {}
    for command, argv in RUNS.items():
        folders[command] = root / command.replace(" ", "-")
        assert main([*argv, "--out", str(folders[command])]) == 0, command
    return folders


@pytest.fixture
def runs(made, tmp_path):
    return {command: Path(shutil.copytree(folder, tmp_path / folder.name))
            for command, folder in made.items()}


def _one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_each_command_writes_the_files_it_declares_and_no_other(made):
    for command, folder in made.items():
        written = {p.name for p in folder.iterdir()}
        # a VAE run without its gradient monitor (--monitor-repeats 0) writes no monitor.jsonl
        assert written | ({"monitor.jsonl"} if command == "vae train" else set()) == set(OUTPUTS[command])
        assert owners(folder) == [command]


@pytest.mark.parametrize("owner", list(RUNS))
@pytest.mark.parametrize("other", list(INTO))
def test_another_command_into_a_run_folder_is_refused_and_the_run_kept(runs, capsys, owner, other):
    if other == owner:
        pytest.skip("the same command continues or replaces its own run")
    before = _digest(runs[owner])
    capsys.readouterr()
    assert main([*INTO[other], "--out", str(runs[owner])]) == 2
    if (other, owner) == ("vae compare", "vae train"):  # vae compare's own check comes first
        _one_error(capsys, f"{runs[owner]} already holds a run")
    else:
        _one_error(capsys, f"holds a run of gradest {owner}", f"gradest {other} will not write into it")
    assert _digest(runs[owner]) == before


def test_json_never_replaces_a_file_of_a_run(runs, capsys):
    before = _digest(runs["vae train"])
    for command in (["compare", "--samples", "64", "--estimator", "pathwise"],
                    ["vae", "eval", str(runs["vae train"]), "--iwae-k", "2"]):
        assert main([*command, "--json", str(runs["vae train"] / "summary.json")]) == 2
        _one_error(capsys, "is a file of the gradest vae train run", "give another file name")
    assert _digest(runs["vae train"]) == before
    # a file of its own beside the run's is fine (the README's vae eval RUN --json RUN/eval.json)
    assert main(["vae", "eval", str(runs["vae train"]), "--iwae-k", "2", "--json",
                 str(runs["vae train"] / "eval.json")]) == 0
    assert {k: h for k, h in _digest(runs["vae train"]).items() if k != "eval.json"} == before


def test_json_through_a_link_into_a_run_is_refused_too(runs, tmp_path, capsys):
    link = tmp_path / "link.json"
    link.symlink_to(runs["vae train"] / "summary.json")
    before = _digest(runs["vae train"])
    assert main(["compare", "--samples", "64", "--estimator", "pathwise", "--json", str(link)]) == 2
    _one_error(capsys, "is a file of the gradest vae train run")
    assert _digest(runs["vae train"]) == before


def test_the_same_command_continues_its_own_run(runs, capsys):
    assert main(["vae", "train", "--resume", "--epochs", "2", "--out", str(runs["vae train"])]) == 0
    assert len((runs["vae train"] / "metrics.jsonl").read_text().splitlines()) == 2
    before = _digest(runs["sweep"])
    assert main([*RUNS["sweep"], "--out", str(runs["sweep"])]) == 0  # resumed: every cell is there already
    assert _digest(runs["sweep"])["sweep.csv"] == before["sweep.csv"]


def test_vae_train_holds_its_folder_until_its_report_is_written(tmp_path, monkeypatch, capsys):
    """The lock used to end before run_report: blr, gaussian, sweep, discrete were accepted then."""
    import gradest.vae.report

    real, seen = gradest.vae.report.run_report, []

    def report_while_another_command_tries(out, device="cpu"):
        fd = os.open(out, os.O_RDONLY)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
        seen.append(main([*INTO["blr"], "--out", str(out)]))
        return real(out, device)

    monkeypatch.setattr(gradest.vae.report, "run_report", report_while_another_command_tries)
    assert main([*VAE, "--out", str(tmp_path / "run")]) == 0
    assert seen == [2]
    err = capsys.readouterr().err
    assert "holds a run of gradest vae train" in err or "is in use by" in err


def test_a_vae_compare_folder_belongs_to_vae_compare_and_its_runs_to_vae_train(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main([*INTO["vae compare"], "--out", str(out)]) == 0
    assert owners(out) == ["vae compare"] and owners(out / "pathwise") == ["vae train"]
    capsys.readouterr()
    assert main([*VAE, "--out", str(out)]) == 2
    _one_error(capsys, "holds a run of gradest vae compare")
    assert main(["vae", "train", "--resume", "--epochs", "2", "--out", str(out / "pathwise")]) == 0


def test_a_refused_run_leaves_nothing_behind(runs, tmp_path, capsys):
    new = tmp_path / "new" / "folder"
    assert main([*RUNS["blr"], "--estimator", "nope", "--out", str(new)]) == 2
    capsys.readouterr()
    assert not (tmp_path / "new").exists()
    assert main([*VAE, "--epochs", str(10**15), "--out", str(new)]) == 2
    _one_error(capsys, "--epochs", "a week's worth")
    assert not (tmp_path / "new").exists()


def test_a_folder_of_files_no_command_writes_is_usable(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep\n")
    assert main([*RUNS["sweep"], "--out", str(out)]) == 0
    assert (out / "notes.txt").read_text() == "keep\n" and owners(out) == ["sweep"]


def test_the_bit_limit_of_the_command_line_is_the_librarys():
    import typer

    from gradest.cli import app
    from gradest.lab.discrete import MAX_BITS

    command = typer.main.get_command(app).commands["discrete"]
    bits = next(p for p in command.params if p.name == "bits")
    assert bits.type_descriptor.parameter_info.parser.item.hi == MAX_BITS
