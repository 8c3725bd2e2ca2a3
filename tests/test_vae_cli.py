"""`gradest vae train | eval | compare` smoke tests with tiny settings, and their error messages."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from gradest.cli import main

TINY = [
    "--dataset",
    "digits",
    "--hidden",
    "16",
    "--epochs",
    "2",
    "--batch-size",
    "256",
    "--var-repeats",
    "3",
    "--iwae-k",
    "8",
]


def test_train_eval_and_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert (
        main(
            [
                "vae",
                "train",
                *TINY,
                "--latent",
                "2",
                "--estimator",
                "iwae-dreg",
                "--k",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    for name in ("metrics.jsonl", "summary.json", "checkpoint.pt", "config.json", "report.html"):
        assert (out / name).is_file(), name
    page = (out / "report.html").read_text()
    # Self-contained: every picture is inline, nothing is fetched.
    assert not re.search(r"""(src|href)=["']?https?:""", page)
    # curves, variance, monitor, reconstructions, samples, latent
    assert page.count("data:image/png;base64,") == 6
    assert "Latent space" in page and "Gradient monitor" in page
    assert main(["vae", "eval", str(out), "--iwae-k", "16", "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["iwae_k"] == 16 and result["estimator"] == "iwae-dreg"
    assert {"test_neg_elbo", "test_nll_iwae", "kl", "active_units"} <= set(result)


def test_resume_from_the_command_line(tmp_path: Path) -> None:
    out = str(tmp_path / "run")
    assert main(["vae", "train", *TINY, "--epochs", "1", "--out", out]) == 0
    assert main(["vae", "train", "--epochs", "2", "--resume", "--out", out]) == 0
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def test_compare_renders_all_estimators(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    assert (
        main(
            [
                "vae",
                "compare",
                *TINY,
                "--epochs",
                "1",
                "--estimator",
                "pathwise",
                "--estimator",
                "score",
                "--estimator",
                "vimco:3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    page = (out / "report.html").read_text()
    for label in ("pathwise", "score", "vimco:3"):
        assert f'<td class="n">{label}</td>' in page
    assert (out / "vimco-k3" / "summary.json").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--estimator", "vimco"], "needs --k ≥ 2"),
        (["--binarize", "sometimes"], "--binarize must be one of"),
        (["--dataset", "mnist:/nonexistent"], "is not a directory"),
        (["--dataset", "cifar"], "choose digits, mnist5k or mnist:DIR"),
        (["--estimator", "vimco:5"], "write --estimator vimco --k 5"),
        (["--device", "cuda:x"], "is not a device"),
        (["--monitor-every", "0"], "--monitor-every must be ≥ 1"),
        (["--monitor-repeats", "1"], "--monitor-repeats must be 0 (off) or ≥ 2"),
    ],
)
def test_train_errors_are_one_line(tmp_path: Path, capsys, args: list[str], message: str) -> None:
    assert main(["vae", "train", *TINY, *args, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_cuda_unavailable_is_a_clear_error(tmp_path: Path, capsys) -> None:
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert main(["vae", "train", *TINY, "--device", "cuda", "--out", str(tmp_path / "x")]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_eval_of_a_folder_without_a_run(tmp_path: Path, capsys) -> None:
    assert main(["vae", "eval", str(tmp_path)]) == 2
    assert "holds no checkpoint.pt" in capsys.readouterr().err


def test_compare_estimator_needing_k(tmp_path: Path, capsys) -> None:
    assert main(["vae", "compare", *TINY, "--estimator", "score-loo", "--out", str(tmp_path)]) == 2
    assert "write score-loo:5" in capsys.readouterr().err


def test_resume_refuses_options_that_differ_from_the_saved_run(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "run")
    assert main(["vae", "train", *TINY, "--epochs", "1", "--var-repeats", "0", "--out", out]) == 0
    capsys.readouterr()
    assert main(["vae", "train", "--resume", "--epochs", "2", "--estimator", "score", "--out", out]) == 2
    assert "--estimator score differs from the run's saved pathwise" in capsys.readouterr().err
    assert main(["vae", "train", "--resume", "--epochs", "2", "--monitor-every", "3", "--out", out]) == 2
    assert "--monitor-every 3 differs from the run's saved once per epoch" in capsys.readouterr().err
    # The saved options themselves, repeated, are accepted.
    assert main(["vae", "train", "--resume", *TINY, "--var-repeats", "0", "--out", out]) == 0


def test_monitor_options_are_saved_and_checked_on_resume(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = ["vae", "train", *TINY, "--monitor-every", "4", "--out", str(out)]
    assert main([*args[:-4], "--epochs", "1", *args[-4:]]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"gradient monitor: R = 3 estimates every 4 steps on 128 images took [\d.]+% of the "
                     r"training time", printed)
    saved = json.loads((out / "config.json").read_text())
    assert (saved["monitor_every"], saved["var_repeats"]) == (4, 3)
    for option, value, was in (("--monitor-every", "2", "4"), ("--monitor-repeats", "5", "3")):
        assert main(["vae", "train", "--resume", "--epochs", "2", option, value, "--out", str(out)]) == 2
        assert f"{option} {value} differs from the run's saved {was}" in capsys.readouterr().err
    same = ["--monitor-every", "4", "--monitor-repeats", "3"]
    assert main(["vae", "train", "--resume", "--epochs", "2", *same, "--out", str(out)]) == 0
    rows = [json.loads(line) for line in (out / "monitor.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["group"] == "all"] == [4, 8, 12]
    assert {r["group"] for r in rows} == {"encoder", "decoder", "all"}
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["monitor_share"] < 1
    assert "gradient monitor: R = 3 estimates every 4 steps" in capsys.readouterr().out


def test_compare_into_a_used_folder_names_the_fix(tmp_path: Path, capsys) -> None:
    args = ["vae", "compare", *TINY, "--epochs", "1", "--estimator", "pathwise", "--out", str(tmp_path)]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already holds a run; choose another --out" in err and "--resume" not in err
    # A single run's folder is not a comparison's: its report.html would be overwritten.
    single = tmp_path / "pathwise"
    assert main(["vae", "compare", *TINY, "--estimator", "score", "--out", str(single)]) == 2
    assert f"{single} already holds a run" in capsys.readouterr().err


def test_eval_json_into_a_folder_is_a_clear_error(tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "run")
    assert main(["vae", "train", *TINY, "--epochs", "1", "--var-repeats", "0", "--out", out]) == 0
    capsys.readouterr()
    assert main(["vae", "eval", out, "--iwae-k", "1", "--json", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in capsys.readouterr().err


def test_compare_reports_the_others_when_one_estimator_diverges(tmp_path: Path, monkeypatch, capsys) -> None:
    from gradest.vae import objectives

    real = objectives.OBJECTIVES["score"]

    def diverging(model, x, k, generator, baseline=None):
        est = real.fn(model, x, k, generator, baseline)
        return est._replace(loss=est.loss * float("inf"))

    monkeypatch.setitem(objectives.OBJECTIVES, "score", real._replace(fn=diverging))
    out = tmp_path / "cmp"
    args = ["--epochs", "1", "--estimator", "pathwise", "--estimator", "score", "--out", str(out)]
    assert main(["vae", "compare", *TINY, *args]) == 0
    assert "score stopped" in capsys.readouterr().out
    page = (out / "report.html").read_text()
    assert '<td class="n">pathwise</td>' in page and '<td class="n">score</td>' in page
    assert "Stopped runs" in page and "the score loss became" in page


def test_eval_with_the_runs_iwae_k_reproduces_its_summary(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["vae", "train", *TINY, "--epochs", "1", "--var-repeats", "0", "--out", str(out)]) == 0
    assert main(["vae", "eval", str(out), "--iwae-k", "8", "--json", str(tmp_path / "e.json")]) == 0
    summary, again = (json.loads(p.read_text()) for p in (out / "summary.json", tmp_path / "e.json"))
    for key in ("test_neg_elbo", "test_nll_iwae", "iwae_k", "kl", "active_units"):
        assert again[key] == summary[key], key


@pytest.mark.parametrize("steps", [3, 8])  # an epoch is 6 steps: Ctrl-C in epoch 1, then in epoch 2
def test_interrupt_says_how_to_resume(tmp_path: Path, monkeypatch, capsys, steps: int) -> None:
    from gradest.vae import objectives

    pathwise, calls = objectives.OBJECTIVES["pathwise"], []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == steps:
            raise KeyboardInterrupt
        return pathwise.fn(*args, **kwargs)

    monkeypatch.setitem(objectives.OBJECTIVES, "pathwise", pathwise._replace(fn=interrupted))
    out = str(tmp_path / "run")
    assert main(["vae", "train", *TINY, "--out", out]) == 130
    printed = capsys.readouterr().out
    if steps < 6:  # no checkpoint yet: --resume would fail, so it is not advised
        assert "--resume" not in printed and "nothing was saved" in printed
        assert not (tmp_path / "run" / "config.json").exists()
    else:
        assert f"gradest vae train --resume --epochs 2 --out {out}" in printed


def test_summary_table_shows_null_figures_as_dashes() -> None:
    """JSON null (a NaN/inf figure) renders as a dash instead of failing the command at its end."""
    from gradest.cli.vae import _summary_table

    row = {"k": 1, "test_neg_elbo": None, "test_nll_iwae": 90.0, "iwae_k": 5, "kl": None, "active_units": 0}
    cells = list(_summary_table({"pathwise": row}).columns[2].cells)
    assert cells == ["—"]


def test_compare_where_every_estimator_diverges_fails_after_its_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "cmp"
    args = [
        "--epochs",
        "1",
        "--lr",
        "1e30",
        "--estimator",
        "pathwise",
        "--estimator",
        "stl",
        "--out",
        str(out),
    ]
    assert main(["vae", "compare", *TINY, *args]) == 1  # warnings are errors here: no empty legend either
    assert "Stopped runs" in (out / "report.html").read_text()
    assert "stl stopped" in capsys.readouterr().out


def test_resume_without_epochs_finishes_the_runs_own_epochs(tmp_path: Path, monkeypatch) -> None:
    """Stopped in epoch 2 of 2, `--resume` alone trains epoch 2 and stops there (not at the default 30)."""
    from gradest.vae import objectives

    real = objectives.OBJECTIVES["pathwise"]
    calls = []

    def stop_in_epoch_two(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6 + 2:  # epoch 1: 6 steps (variance tracking does not call fn); then into epoch 2
            raise KeyboardInterrupt
        return real.fn(*args, **kwargs)

    monkeypatch.setitem(objectives.OBJECTIVES, "pathwise", real._replace(fn=stop_in_epoch_two))
    out = tmp_path / "run"
    assert main(["vae", "train", *TINY, "--out", str(out)]) == 130
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
    monkeypatch.setitem(objectives.OBJECTIVES, "pathwise", real)
    assert main(["vae", "train", "--resume", "--out", str(out)]) == 0
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


def _untimed(value):
    if isinstance(value, dict):
        return {k: _untimed(v) for k, v in value.items() if "seconds" not in k and k != "monitor_share"}
    return [_untimed(v) for v in value] if isinstance(value, list) else value


def _run_numbers(folder: Path) -> dict:
    files = {name: _untimed([json.loads(line) for line in (folder / name).read_text().splitlines()])
             for name in ("metrics.jsonl", "monitor.jsonl")}
    files["summary"] = _untimed(json.loads((folder / "summary.json").read_text()))
    files["config"] = json.loads((folder / "config.json").read_text())
    files["weights"] = torch.load(folder / "checkpoint.pt", weights_only=True)["model"]
    return files


def test_compare_on_dask_writes_the_serial_runs(tmp_path: Path, capsys) -> None:
    """One Dask task per estimator (2 in-process workers): the run folders of a serial compare."""
    from gradest.parallel import cell_map, dask_available

    if not dask_available():
        pytest.skip("needs pip install 'gradest[dask]'")
    args = [*TINY, "--epochs", "1", "--estimator", "pathwise", "--estimator", "vimco:2"]
    threads = torch.get_num_threads()
    with cell_map(workers=2, processes=False) as cells:
        address = cells.client.scheduler.address
        assert main(["vae", "compare", *args, "--scheduler", address, "--out", str(tmp_path / "dask")]) == 0
    torch.set_num_threads(threads)  # the workers' threads share torch's global setting
    printed = capsys.readouterr().out
    assert printed.index("pathwise: trained") < printed.index("vimco:2: trained")  # in the given order
    assert main(["vae", "compare", *args, "--out", str(tmp_path / "serial")]) == 0
    for label in ("pathwise", "vimco-k2"):
        dask, serial = _run_numbers(tmp_path / "dask" / label), _run_numbers(tmp_path / "serial" / label)
        weights = dask.pop("weights"), serial.pop("weights")
        assert dask == serial, label
        assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[1])
    assert "vimco:2" in (tmp_path / "dask" / "report.html").read_text()


def test_collapse_note_threshold() -> None:
    from gradest.vae.report import collapse_note

    expected = "posterior collapse: only 1 of 20 latent units active (KL 0.11 nats)"
    assert collapse_note(1, 20, 0.11).startswith(expected)
    assert "Var_x E_q[z_u] > 0.01" in collapse_note(9, 20, 1.0) and "below 50%" in collapse_note(9, 20, 1.0)
    assert collapse_note(10, 20, 5.0) == "" and collapse_note(None, 20, None) == ""


def test_posterior_collapse_is_said_on_the_console_and_in_the_report(tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    args = [*TINY, "--epochs", "1", "--latent", "20", "--var-repeats", "0", "--out", str(out)]
    assert main(["vae", "train", *args]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["active_units"] < 10  # one epoch on 8×8 digits: the latent code is barely used
    units, kl = summary["active_units"], summary["kl"]
    said = f"posterior collapse: only {units} of 20 latent units active (KL {kl:.2f}"
    assert said in " ".join(capsys.readouterr().out.split())
    assert said in (out / "report.html").read_text()
    assert main(["vae", "eval", str(out), "--iwae-k", "8"]) == 0
    assert said in " ".join(capsys.readouterr().out.split())


def test_a_run_folder_with_markup_characters_is_printed_as_given(tmp_path: Path, capsys) -> None:
    out = tmp_path / "v[/]w"
    assert main(["vae", "train", *TINY, "--latent", "2", "--epochs", "1", "--out", str(out)]) == 0
    printed = "".join(capsys.readouterr().out.split())  # rich may wrap the long line anywhere
    assert "".join(f"wrote {out}/metrics.jsonl".split()) in printed
