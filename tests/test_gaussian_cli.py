"""`gradest gaussian` from the command line: smoke runs (tiny --steps), results.json, bad input."""

import json
import re
from html import unescape

import pytest

from gradest.cli import main

FILES = {"report.html", "results.json", "variance_vs_sigma.png", "stderr_vs_samples.png", "trajectories.png"}


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """`gradest gaussian --steps 30` with no data argument, run in an empty folder."""
    folder = tmp_path_factory.mktemp("default")
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        code = main(["gaussian", "--steps", "30", "--samples-per-step", "8"])
    return code, folder / "gradest-out" / "gaussian"


def test_no_argument_run_writes_every_file(default_run):
    code, out = default_run
    assert code == 0
    assert {p.name for p in out.iterdir()} == FILES
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # self-contained: every plot embedded
    for heading in ("The question", "Derivation", "Gradient check", "Variance", "Fits by SGD", "Conclusions"):
        assert heading in html
    # the answer comes before the working: the short answer sits between the question and the derivation
    assert html.index("The question") < html.index("Short answer") < html.index("Derivation")
    answer = html[html.index("Short answer"):html.index("Derivation")]
    assert "For σ in particular" in answer and "nll with exact" in answer
    # nothing fetched from the network: no external src/href/url()
    # (the inlined KaTeX script mentions URLs it never loads)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?(https?:)?//""", html)
    assert "data-tex=" in html and "katex.render" in html  # the derivation typeset by the KaTeX inlined


def test_results_json_has_the_issue_keys(default_run):
    _, out = default_run
    result = json.loads((out / "results.json").read_text())
    assert {"n", "mean", "var_mle"} <= set(result["data"])
    assert result["data"]["n"] == 100
    assert len(result["gradient_check"]) >= 4
    assert any(row["sigma"] <= 0.1 for row in result["gradient_check"])
    for row in result["gradient_check"]:
        assert {"mu", "sigma", "samples", "exact", "pathwise", "score"} <= set(row)
        assert set(row["exact"]) == {"mu", "sigma"}
        for est in ("pathwise", "score"):
            for p in ("mu", "sigma"):
                assert {"mean", "stderr"} <= set(row[est][p])
    for row in result["variance"]:
        assert {"mu", "sigma", "pathwise", "score", "score-baseline"} <= set(row)
        for est in ("pathwise", "score", "score-baseline"):
            for p in ("mu", "sigma"):
                assert {"exact", "empirical"} <= set(row[est][p])
    fits = {(f["objective"], f["estimator"]) for f in result["fits"]}
    assert {("squared", "pathwise"), ("crps", "pathwise"), ("elbo", "pathwise"), ("nll", "exact")} <= fits
    assert any(f["objective"] == "squared" and f["estimator"].startswith("score") for f in result["fits"])
    for f in result["fits"]:
        assert {"objective", "estimator", "mu", "sigma", "steps_to_1pct", "target"} <= set(f)
        assert set(f["target"]) == {"mu", "sigma"}
    assert result["conclusions"] and all(isinstance(c, str) for c in result["conclusions"])


def test_data_run_on_a_csv(tmp_path, capsys):
    data = tmp_path / "heights.csv"
    values = [170.1, 165.3, 180.2, 175.5, 160.0, 172.4, 168.8, 177.0]
    data.write_text("id,cm\n" + "".join(f"{i},{v}\n" for i, v in enumerate(values)))
    out = tmp_path / "report"
    code = main(["gaussian", "--data", str(data), "--column", "cm", "--out", str(out), "--steps", "20",
                 "--samples-per-step", "4", "--seed", "3"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == FILES
    result = json.loads((out / "results.json").read_text())
    assert result["data"]["n"] == len(values)
    assert result["data"]["mean"] == pytest.approx(sum(values) / len(values))
    assert "n = 8" in capsys.readouterr().out


BAD = [
    ("missing.csv", None, None, "data file not found"),
    ("a,b\n1,2\n3,4\n", "c", None, "no column 'c'"),
    ("x\n1\nabc\n", None, None, "is not a number"),
    ("x\n1\nnan\n2\n", None, None, "not finite"),
    ("x\n1\ninf\n2\n", None, None, "not finite"),
    ("x\n1\n", None, None, "need at least 2"),
    ("x\n3\n3\n3\n", None, None, "all values equal"),
    ("a,b\n1,2\n3,4\n", None, None, "pick one with --column"),
    (None, "x", None, "give --data too"),
]


@pytest.mark.parametrize(("text", "column", "_", "message"), BAD)
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, text, column, _, message):
    args = ["gaussian", "--out", str(tmp_path / "out"), "--steps", "5"]
    if text is not None:
        path = tmp_path / "data.csv"
        if text != "missing.csv":
            path.write_text(text)
        args += ["--data", str(path)]
    if column is not None:
        args += ["--column", column]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [["--steps", "0"], ["--samples-per-step", "1"]])
def test_bad_settings_exit_2(tmp_path, args):
    assert main(["gaussian", "--out", str(tmp_path / "out"), *args]) == 2
    assert not (tmp_path / "out").exists()


def test_help_teaches(capsys):
    assert main(["gaussian", "--help"]) == 0
    text = capsys.readouterr().out
    for option in ("--data", "--column", "--out", "--seed", "--steps", "--samples-per-step"):
        assert option in text


@pytest.mark.parametrize("under", [False, True])
def test_out_on_a_file_exits_2_before_any_work(tmp_path, capsys, under):
    blocker = tmp_path / "taken"
    blocker.write_text("keep")
    out = blocker / "sub" if under else blocker
    assert main(["gaussian", "--out", str(out), "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --out") and err.count("\n") == 1
    assert blocker.read_text() == "keep"


def test_one_step_run_completes(tmp_path, capsys):
    # the shortest run: no SGD scatter to compare, and σ has not yet collapsed
    out = tmp_path / "out"
    assert main(["gaussian", "--out", str(out), "--steps", "1", "--samples-per-step", "2"]) == 0
    result = json.loads((out / "results.json").read_text())
    text = " ".join(result["conclusions"])
    assert "still falling" in text and "not within 1 step" in text and "None" not in text


def test_headerless_file_reproduces_without_a_column(tmp_path):
    data = tmp_path / "my data.csv"
    data.write_text("".join(f"{v}\n" for v in (1.2, 0.7, 2.5, 1.9, 1.1)))
    out = tmp_path / "out"
    assert main(["gaussian", "--data", str(data), "--out", str(out), "--steps", "5",
                 "--samples-per-step", "2"]) == 0
    html = unescape((out / "report.html").read_text())
    assert "no header row" in html and "--column" not in html.split("Reproduce")[-1]
    assert f"--data '{data}'" in html  # quoted: the path has a space
    assert json.loads((out / "results.json").read_text())["data"]["n"] == 5
