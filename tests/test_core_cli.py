"""`gradest compare` smoke tests: the issue's command line, JSON shape, custom costs, bad input."""

import json
import subprocess
import sys

import pytest

from gradest.cli import main

ISSUE_FORM = ["compare", "--dist", "normal", "--param", "loc=1", "--param", "scale=1", "--cost", "cos",
              "--k", "2", "--estimator", "pathwise", "--estimator", "score", "--estimator", "score-loo",
              "--samples", "20000", "--seed", "0"]


def test_compare_issue_form_writes_json(tmp_path, capsys):
    out = tmp_path / "out.json"
    assert main([*ISSUE_FORM, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert set(result["exact"]) == {"loc", "scale"}
    assert set(result["estimators"]) == {"pathwise", "score", "score-loo"}
    for estimator, est in result["estimators"].items():
        assert est["seconds_per_sample"] > 0
        for name in ("loc", "scale"):
            stats = est[name]
            assert {"mean", "variance", "stderr", "z", "snr"} <= set(stats)
            # the z-score is consistent with the other numbers, and within 5 standard errors
            assert stats["z"] == pytest.approx((stats["mean"] - result["exact"][name]) / stats["stderr"])
            assert abs(stats["z"]) < 5
            naive = (stats["variance"] / 20000) ** 0.5
            if estimator == "score-loo":  # 16 independent batches: a stderr with 15 degrees of freedom
                assert 0.45 < stats["stderr"] / naive < 1.7
            else:
                assert stats["stderr"] == pytest.approx(naive)
    assert "pathwise" in capsys.readouterr().out


def test_same_seed_same_json(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    main([*ISSUE_FORM, "--json", str(a)])
    main([*ISSUE_FORM, "--json", str(b)])
    strip = lambda d: {k: {p: v for p, v in e.items() if p != "seconds_per_sample"}  # noqa: E731
                       for k, e in d["estimators"].items()}
    assert strip(json.loads(a.read_text())) == strip(json.loads(b.read_text()))


def test_vector_parameters_serialise_as_lists(tmp_path):
    out = tmp_path / "v.json"
    assert main(["compare", "--param", "loc=[0, 1, 2]", "--param", "scale=[1, 1, 0.5]", "--cost", "square",
                 "--estimator", "pathwise", "--samples", "1000", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert len(result["exact"]["loc"]) == 3
    assert len(result["estimators"]["pathwise"]["scale"]["mean"]) == 3


def test_custom_cost_from_file_and_module(tmp_path, monkeypatch):
    (tmp_path / "mycost.py").write_text("import torch\ndef f(x, k=1.0):\n    return torch.sin(k * x)\n")
    out = tmp_path / "c.json"
    assert main(["compare", "--cost", f"{tmp_path / 'mycost.py'}:f", "--k", "1.5", "--estimator", "score",
                 "--samples", "2000", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(out.read_text())["exact_method"] == "quadrature"
    assert abs(result["estimators"]["score"]["loc"]["z"]) < 5
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["compare", "--cost", "mycost:f", "--estimator", "pathwise", "--samples", "100"]) == 0


def test_other_families(tmp_path):
    out = tmp_path / "g.json"
    assert main(["compare", "--dist", "gamma", "--param", "concentration=2", "--param", "rate=1",
                 "--cost", "square", "--estimator", "pathwise", "--estimator", "score-loo",
                 "--samples", "1000", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["exact"] is None
    out = tmp_path / "b.json"
    assert main(["compare", "--dist", "bernoulli", "--param", "probs=[0.2, 0.6]", "--cost", "linear",
                 "--estimator", "score-loo", "--samples", "1000", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["exact_method"] == "enumeration"
    assert result["exact"]["probs"] == pytest.approx([1.0, 1.0], abs=1e-12)


@pytest.mark.parametrize("args,message", [
    (["--dist", "bernoulli", "--param", "probs=0.3", "--estimator", "pathwise"], "no rsample"),
    (["--param", "loc=0", "--param", "scale=-1"], "must be > 0"),
    (["--param", "loc=nan", "--param", "scale=1"], "not a number"),
    (["--param", "loc=0"], "takes parameters"),
    (["--dist", "gausian"], "unknown family"),
    (["--estimator", "pathwise", "--estimator", "magic"], "unknown estimator"),
    (["--cost", "nofile.py:f"], "not found"),
    (["--cost", "nomodule_xyz:f"], "could not import"),
    (["--param", "loc"], "NAME=VALUE"),
    (["--param", "loc=[]", "--param", "scale=[]"], "is empty"),
    (["--param", "loc=true", "--param", "scale=1"], "not a number"),
    (["--param", "loc=1", "--param", "loc=2", "--param", "scale=1"], "given twice"),
    (["--param", "loc=[0,1]", "--param", "scale=[1,1,1]"],
     "do not broadcast: loc [2], scale [3]; give them one shape"),
    (["--estimator", "score-const=nan"], "must be a finite number"),
])
def test_bad_input_exit_2_one_line_nothing_written(tmp_path, capsys, args, message):
    out = tmp_path / "never.json"
    assert main(["compare", *args, "--samples", "100", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_console_script_and_module_entry_points():
    proc = subprocess.run([sys.executable, "-m", "gradest", "compare", "--help"], capture_output=True,
                          text=True, check=False)
    assert proc.returncode == 0 and "--estimator" in proc.stdout
    proc = subprocess.run([sys.executable, "-m", "gradest", "compare", "--dist", "nope"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown family")


COSTS_PY = """
import torch
def wrong_shape(x):
    return x
def raises(x):
    raise RuntimeError("boom")
def as_numpy(x):
    return x.detach().numpy()
def no_k(x):
    return x ** 2
def log(x):
    return torch.log(x)
"""


@pytest.mark.parametrize("args,message", [
    (["--cost", "{p}:wrong_shape", "--param", "loc=[0,1]", "--param", "scale=[1,1]"],
     "returned shape [100, 2] for samples of shape [100, 2]"),
    (["--cost", "{p}:raises"], "failed on samples of shape [100]: RuntimeError: boom"),
    (["--cost", "{p}:as_numpy"], "returned ndarray; it must return a torch tensor"),
    (["--cost", "{p}:no_k", "--k", "2"], "takes no parameter named k"),
    (["--cost", "exp", "--k", "-1"], "E f is not finite"),
    (["--dist", "uniform", "--param", "low=0", "--param", "high=2", "--estimator", "pathwise",
      "--estimator", "score-loo"], "support of Uniform moves with its parameters"),
])
def test_cost_and_pair_errors_exit_2_in_one_line(tmp_path, capsys, args, message):
    path = tmp_path / "costs.py"
    path.write_text(COSTS_PY)
    out = tmp_path / "never.json"
    args = [a.format(p=path) for a in args]
    assert main(["compare", *args, "--samples", "100", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_uniform_with_pathwise_runs(tmp_path):
    # E (x − 1)² for x ~ U(a, b) is ((b − 1)³ − (a − 1)³) / (3(b − a)); at (0, 2): ∂a = −1/3, ∂b = 1/3
    out = tmp_path / "u.json"
    assert main(["compare", "--dist", "uniform", "--param", "low=0", "--param", "high=2", "--cost", "square",
                 "--estimator", "pathwise", "--samples", "20000", "--json", str(out)]) == 0
    est = json.loads(out.read_text())["estimators"]["pathwise"]
    for name, truth in (("low", -1 / 3), ("high", 1 / 3)):
        assert abs(est[name]["mean"] - truth) <= 5 * est[name]["stderr"]  # 5 standard errors


def test_cost_undefined_in_the_far_tails_has_no_exact_gradient(tmp_path, capsys):
    path = tmp_path / "costs.py"
    path.write_text(COSTS_PY)
    out = tmp_path / "log.json"
    assert main(["compare", "--cost", f"{path}:log", "--param", "loc=10", "--param", "scale=1",
                 "--estimator", "pathwise", "--samples", "100", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["exact"] is None and "NaN or inf at" in result["exact_note"]


def test_samples_beyond_memory_are_refused_before_running(tmp_path, capsys, monkeypatch):
    import gradest.compare

    monkeypatch.setattr(gradest.compare, "available_memory", lambda: 2**30)  # 1 GiB free
    out = tmp_path / "never.json"
    assert main(["compare", "--samples", "100000000", "--json", str(out)]) == 2
    err = capsys.readouterr().err
    assert "more than the 1.0 GiB available; use at most about" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
    assert main(["compare", "--samples", "1000", "--estimator", "pathwise"]) == 0


@pytest.mark.parametrize("target", ["folder", "under-file"])
def test_json_path_that_cannot_be_a_file_exits_2_before_running(tmp_path, capsys, target):
    blocker = tmp_path / "taken"
    blocker.write_text("keep")
    path = tmp_path if target == "folder" else blocker / "out.json"
    assert main(["compare", "--samples", "100", "--json", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --json") and len(err.strip().splitlines()) == 1
    assert blocker.read_text() == "keep"


def test_seed_beyond_64_bits_is_a_usage_error_not_a_traceback(capsys):
    assert main(["compare", "--seed", str(2**64), "--samples", "100"]) == 2
    assert "Traceback" not in capsys.readouterr().err
