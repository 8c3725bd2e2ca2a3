"""Smoke tests of `gradest sweep`, `gradest advise` and `gradest blr` with tiny settings."""

import json

from gradest.cli import main


def test_sweep_command_and_resume(tmp_path, capsys):
    args = ["sweep", "--cost", "exp", "--k", "0.5,2", "--param", "loc=1", "--param", "scale=1",
            "--estimator", "pathwise", "--estimator", "score", "--samples", "1000", "--out", str(tmp_path)]
    assert main(args) == 0
    first = (tmp_path / "sweep.csv").read_text()
    assert len(first.splitlines()) == 1 + 2 * 2 * 2
    assert main(args) == 0  # resumed: nothing new, identical file
    assert (tmp_path / "sweep.csv").read_text() == first
    assert (tmp_path / "report.html").is_file() and (tmp_path / "sweep.png").is_file()


def test_advise_command(tmp_path, capsys):
    path = tmp_path / "advice.json"
    assert main(["advise", "--param", "loc=1", "--param", "scale=1", "--cost", "cos", "--k", "2",
                 "--estimator", "pathwise", "--estimator", "score", "--estimator", "mvd", "--samples", "2000",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "recommendation:" in out and "efficiency" in out
    advice = json.loads(path.read_text())
    best = min((c for c in advice["candidates"] if c["usable"]), key=lambda c: c["efficiency"])
    assert advice["recommendation"] == best["estimator"]


def test_blr_command(tmp_path):
    assert main(["blr", "--estimator", "pathwise", "--steps", "6", "--log-every", "3", "--samples", "4",
                 "--variance-samples", "8", "--out", str(tmp_path)]) == 0
    assert (tmp_path / "report.html").is_file()


def test_bad_input_exits_2(tmp_path, capsys):
    assert main(["sweep", "--k", "abc", "--out", str(tmp_path)]) == 2
    assert "--k takes numbers" in capsys.readouterr().err
    assert main(["sweep", "--param", "loc=[1,2]", "--out", str(tmp_path)]) == 2
    assert main(["advise", "--dist", "normal", "--param", "loc=1", "--param", "scale=-1"]) == 2


def test_bad_outputs_and_families_exit_2_with_the_fix(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["sweep", "--k", "1", "--estimator", "pathwise", "--samples", "10", "--out", str(afile)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "sweep.csv").write_bytes(b"\xff\xfeforeign")
    assert main(["sweep", "--k", "1", "--estimator", "pathwise", "--samples", "10",
                 "--out", str(tmp_path / "foreign")]) == 2
    assert "not a sweep CSV" in capsys.readouterr().err
    assert main(["sweep", "--cost", "exp", "--k=-1", "--out", str(tmp_path / "neg")]) == 2
    assert "k ≥ 0" in capsys.readouterr().err
    assert main(["advise", "--dist", "gamma"]) == 2
    assert "--param concentration=VALUE --param rate=VALUE" in capsys.readouterr().err
    assert main(["advise", "--param", "loc=[0,1]", "--param", "scale=[1,1,1]"]) == 2
    assert "do not broadcast" in capsys.readouterr().err
    assert main(["blr", "--estimator", "score", "--estimator", "score", "--out", str(tmp_path / "b")]) == 2
    assert "given twice" in capsys.readouterr().err


def test_outputs_blocked_by_files_or_folders_exit_2_before_any_work(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["blr", "--estimator", "pathwise", "--steps", "2", "--out", str(afile / "sub")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert main(["advise", "--estimator", "pathwise", "--samples", "100", "--json", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    blocked = str(afile / "x.json")
    assert main(["advise", "--estimator", "pathwise", "--samples", "100", "--json", blocked]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
