"""The command line's contract, for every command: bad input -> one `error:` line, exit 2, nothing written.

Range and usage errors from the option parser (`--samples 0`, `--seed -1`, an unknown option), the
one seed rule shared by every command, and a user's cost that fails in any way (SystemExit included).
"""

import subprocess
import sys

import pytest

from gradest.cli import main
from gradest.cli.options import SEED_MAX

# (command words, whether it takes --out): each command's usage errors are checked with a fresh --out
COMMANDS = {
    "compare": (["compare"], False),
    "gaussian": (["gaussian"], True),
    "sweep": (["sweep"], True),
    "advise": (["advise"], False),
    "blr": (["blr"], True),
    "vae train": (["vae", "train"], True),
    "vae compare": (["vae", "compare"], True),
}

SEEDS_REFUSED = ["-1", str(SEED_MAX + 1), str(2**64), "1.5", "x"]

# (command, bad arguments): range checks of the parser and unknown options
RANGE_ERRORS = [
    ("compare", ["--samples", "0"]),
    ("compare", ["--samples", "1"]),
    ("gaussian", ["--steps", "0"]),
    ("gaussian", ["--samples-per-step", "1"]),
    ("sweep", ["--samples", "0"]),
    ("sweep", ["--threads", "-1"]),
    ("sweep", ["--workers", "0"]),
    ("advise", ["--samples", "1"]),
    ("advise", ["--threads", "-1"]),
    ("blr", ["--steps", "0"]),
    ("blr", ["--batch", "0"]),
    ("blr", ["--samples", "1"]),
    ("blr", ["--log-every", "0"]),
    ("blr", ["--variance-samples", "1"]),
    *[(name, ["--no-such-option"]) for name in COMMANDS],
    *[(name, ["--seed"]) for name in COMMANDS],  # an option without its value
]


def _run(capsys, tmp_path, name: str, extra: list[str]) -> tuple[int, str, str]:
    words, takes_out = COMMANDS[name]
    out = tmp_path / "out"
    argv = [*words, *extra, *(["--out", str(out)] if takes_out else [])]
    code = main(argv)
    captured = capsys.readouterr()
    assert not out.exists() or not any(out.iterdir()), f"{argv} wrote into --out"
    return code, captured.out, captured.err


def _assert_one_error_line(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert not any(c in err for c in "╭╰│"), "a framed box, not one line"
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _id(value):
    return " ".join(value) if isinstance(value, list) else value


@pytest.mark.parametrize(("name", "extra"), RANGE_ERRORS, ids=_id)
def test_range_and_usage_errors_are_one_line_exit_2(capsys, tmp_path, name, extra):
    code, _, err = _run(capsys, tmp_path, name, extra)
    # the line names what to fix: the option, and where its allowed values are documented
    _assert_one_error_line(code, err, extra[0], f"see gradest {' '.join(COMMANDS[name][0])} --help")


@pytest.mark.parametrize("seed", SEEDS_REFUSED)
@pytest.mark.parametrize("name", COMMANDS)
def test_one_seed_rule_for_every_command(capsys, tmp_path, name, seed):
    code, _, err = _run(capsys, tmp_path, name, [f"--seed={seed}"])
    _assert_one_error_line(code, err, "--seed")
    if seed.lstrip("-").isdigit():  # a whole number out of range: the range is named
        assert "0 to 2^63 − 1" in err


def test_vae_eval_seed_follows_the_rule(capsys, tmp_path):
    code = main(["vae", "eval", str(tmp_path), "--seed", "-1"])
    _assert_one_error_line(code, capsys.readouterr().err, "--seed", "0 to 2^63 − 1")


def test_the_largest_seed_runs_with_room_for_the_stream_offsets(capsys, tmp_path):
    # the largest accepted seed plus every command's fixed offsets (vae: + 4, advise: + 7919, the
    # gaussian checks: + 1000 + k) is still a seed torch takes
    from gradest.rng import make_generator

    for offset in (0, 4, 1000 + 64, 7919):
        make_generator(SEED_MAX + offset)
    assert main(["compare", "--seed", str(SEED_MAX), "--samples", "100", "--estimator", "pathwise"]) == 0
    assert main(["advise", "--seed", str(SEED_MAX), "--samples", "100", "--estimator", "pathwise",
                 "--estimator", "score"]) == 0
    capsys.readouterr()


def test_unknown_command_is_one_line(capsys):
    _assert_one_error_line(main(["no-such-command"]), capsys.readouterr().err, "see gradest --help")


def test_help_is_unchanged_and_exits_0(capsys):
    assert main(["compare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "Usage: gradest compare" in out and "--seed" in out and "2^63" in out
    # no arguments at all: the help, on stdout, as before
    assert main(["vae"]) == 2
    captured = capsys.readouterr()
    assert "Usage: gradest vae" in captured.out and captured.err == ""


def test_console_script_prints_one_line_not_a_box(tmp_path):
    argv = [sys.executable, "-m", "gradest", "blr", "--steps", "0", "--out", str(tmp_path / "o")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: ")
    assert not (tmp_path / "o").exists()


# --- a user's cost that fails in any way ------------------------------------------------------------

COST_BODIES = {
    "sys-exit-code": ("import sys\ndef f(x):\n    sys.exit(3)\n", "SystemExit: 3"),
    "sys-exit-none": ("import sys\ndef f(x):\n    sys.exit()\n", "SystemExit"),
    "system-exit-message": ("def f(x):\n    raise SystemExit('bye')\n", "SystemExit: bye"),
    "value-error": ("def f(x):\n    raise ValueError('bad\\nvalue')\n", "ValueError: bad value"),
    "base-exception": ("class Odd(BaseException):\n    pass\ndef f(x):\n    raise Odd('odd')\n", "Odd: odd"),
    "exit-on-import": ("import sys\nsys.exit(4)\ndef f(x):\n    return x.sum(-1)\n", "SystemExit: 4"),
    "raise-on-import": ("raise RuntimeError('at import')\n", "RuntimeError: at import"),
}


@pytest.mark.parametrize("command", ["compare", "advise"])
@pytest.mark.parametrize("body", COST_BODIES, ids=str)
def test_failing_cost_is_one_line_exit_2(capsys, tmp_path, command, body):
    source, shown = COST_BODIES[body]
    path = tmp_path / "usercost.py"
    path.write_text(source)
    out = tmp_path / "result.json"
    code = main([command, "--cost", f"{path}:f", "--samples", "100", "--json", str(out)])
    err = capsys.readouterr().err
    _assert_one_error_line(code, err, f"cost {path}:f failed", shown)
    assert not out.exists()


def test_failing_cost_from_a_module(capsys, tmp_path, monkeypatch):
    (tmp_path / "exiting_cost_mod.py").write_text("import sys\nsys.exit(5)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["compare", "--cost", "exiting_cost_mod:f", "--samples", "100"])
    _assert_one_error_line(code, capsys.readouterr().err, "cost exiting_cost_mod:f failed", "SystemExit: 5")


def test_keyboard_interrupt_from_a_cost_is_not_swallowed(tmp_path):
    from gradest.costs import load_cost

    path = tmp_path / "interrupt.py"
    path.write_text("def f(x):\n    raise KeyboardInterrupt\n")
    f = load_cost(f"{path}:f")
    import torch

    with pytest.raises(KeyboardInterrupt):
        f(torch.zeros(3, 2))


def test_cost_failing_only_on_some_shapes_is_reported_per_candidate(capsys, tmp_path):
    # the probe passes (2 samples), so advise still ranks what works and names the failure in its row
    path = tmp_path / "picky.py"
    path.write_text("def f(x):\n    if x.shape[0] == 1:\n        raise SystemExit('one')\n    return x\n")
    assert main(["advise", "--cost", f"{path}:f", "--samples", "100", "--estimator", "pathwise",
                 "--estimator", "score-delta"]) == 0
    out = capsys.readouterr().out
    assert "SystemExit" in out and "recommendation: pathwise" in out


@pytest.mark.parametrize("command", ["compare", "advise"])
def test_nan_cost_or_k_is_refused_like_compare(capsys, tmp_path, command):
    path = tmp_path / "nancost.py"
    path.write_text("def f(x):\n    return x * float('nan')\n")
    for args in (["--cost", f"{path}:f"], ["--k", "nan"]):
        code = main([command, *args, "--samples", "100", "--json", str(tmp_path / "r.json")])
        _assert_one_error_line(code, capsys.readouterr().err)
    assert not (tmp_path / "r.json").exists()


# --- output folders: one writer at a time, failed runs keep the others', user strings shown as given ---

LOCKED_RUNS = {
    "sweep": ["sweep", "--samples", "100", "--cost", "square", "--k", "1", "--estimator", "pathwise"],
    "blr": ["blr", "--steps", "1", "--estimator", "pathwise", "--variance-samples", "10"],
    "gaussian": ["gaussian", "--steps", "1"],
}


@pytest.fixture(scope="module")
def held_folders(tmp_path_factory):
    """One folder per command, each held by output_lock in another process (a first run) for the tests."""
    root = tmp_path_factory.mktemp("held")
    folders = {command: root / command for command in LOCKED_RUNS}
    holder = subprocess.Popen(
        [sys.executable, "-c", "import contextlib, sys\nfrom gradest.io import output_lock\n"
         f"with contextlib.ExitStack() as stack:\n"
         f"    for folder in {[str(f) for f in folders.values()]!r}:\n"
         "        stack.enter_context(output_lock(folder))\n"
         "    print('locked', flush=True)\n    sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    yield folders
    holder.communicate("", timeout=60)
    assert holder.returncode == 0


@pytest.mark.parametrize("command", LOCKED_RUNS)
def test_a_second_run_into_a_folder_in_use_is_refused(capsys, held_folders, command):
    # another process (a first run) holds the folder; the second run is refused at once and writes
    # nothing, instead of both rewriting the files and the last writer dropping the other's rows
    out = held_folders[command]
    code = main([*LOCKED_RUNS[command], "--out", str(out)])
    _assert_one_error_line(code, capsys.readouterr().err, f"--out {out} is in use by another gradest run")
    assert list(out.iterdir()) == []


def test_a_diverged_blr_run_keeps_the_others(capsys, tmp_path):
    import json

    out = tmp_path / "blr"
    code = main(["blr", "--lr", "0.01", "--steps", "30", "--log-every", "10", "--variance-samples", "10",
                 "--estimator", "pathwise", "--estimator", "score", "--out", str(out)])
    captured = capsys.readouterr()
    # score diverges at step 3 at this rate: named in the one error line, pathwise's run kept
    _assert_one_error_line(code, captured.err, "score: training with score diverged", "--lr", str(out))
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["summary"]) == ["pathwise"] and list(summary["failed"]) == ["score"]
    assert summary["summary"]["pathwise"]["steps"] == 30
    assert {line.split(",")[0] for line in (out / "metrics.csv").read_text().splitlines()[1:]} == {"pathwise"}
    assert "pathwise" in captured.out


def test_user_strings_are_printed_as_given_not_as_markup(capsys, tmp_path):
    out = tmp_path / "x[/]y"
    assert main([*LOCKED_RUNS["sweep"], "--out", str(out)]) == 0
    assert f"wrote {out / 'sweep.csv'}" in " ".join(capsys.readouterr().out.split())
    data = tmp_path / "h.csv"
    data.write_text("height [cm],w\n170,1\n180,2\n175,3\n")
    assert main(["gaussian", "--data", str(data), "--column", "height [cm]", "--steps", "1",
                 "--out", str(tmp_path / "g[bold]")]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert "column 'height [cm]'" in printed and "g[bold]" in printed


def test_a_diverged_blr_run_on_dask_keeps_the_others_too(tmp_path):
    pytest.importorskip("distributed")
    from gradest.lab.blr import BLRConfig, run_blr
    from gradest.parallel import cell_map

    config = BLRConfig(steps=30, lr=0.01, log_every=10, variance_samples=10)
    with cell_map(2, processes=False) as cells:
        result = run_blr(["pathwise", "score"], config, tmp_path, cell_map=cells)
    assert list(result.summary) == ["pathwise"] and list(result.failed) == ["score"]
    assert "diverged at step 3" in result.failed["score"]
