"""The validation layer (gradest.cli.validate): every option of every command goes through a typed parser,
and each hostile value the command line was shown to mishandle is one `error:` line and exit 2.

The first test is the contract by construction: it walks the Typer app and fails for any option whose
value does not pass through a parser of the layer, so a new option cannot skip it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import typer

from gradest.cli import app, main
from gradest.cli import validate as v

LONG = "a" * 300  # one component over the file system's 255 bytes
VAE = ["--dataset", "digits", "--hidden", "4", "--latent", "2", "--epochs", "1", "--batch-size", "512",
       "--monitor-repeats", "0", "--iwae-k", "2"]


def _commands(command=None, path=()):
    command = command or typer.main.get_command(app)
    subs = getattr(command, "commands", None)
    if not subs:
        yield " ".join(path), command
        return
    for name, sub in subs.items():
        yield from _commands(sub, (*path, name))


def test_every_option_of_every_command_goes_through_the_layer():
    seen = 0
    for name, command in _commands():
        for param in command.params:
            if getattr(param, "is_flag", False):
                continue  # a flag has no value to parse
            parser = param.type_descriptor.parameter_info.parser
            assert isinstance(parser, v.Parser), f"gradest {name} {param.opts}: no parser of the layer"
            seen += 1
    assert seen > 80


def _one_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


# --- the parsers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["2.0", "1e3", "0x10", "1_000", "٣", "", " ", "nan", "9" * 5000, "2,"])
def test_a_count_is_an_integer_spelled_as_one(text):
    with pytest.raises(ValueError, match="must be"):
        v.Count(2)(text)


def test_a_count_in_range_and_out_of_it():
    assert v.Count(2)("+5") == 5 and v.Count(2)(7) == 7  # a default arrives typed
    with pytest.raises(ValueError, match=r"must be ≥ 2 \(an integer\), got 1$"):
        v.Count(2)("1")
    with pytest.raises(ValueError, match="write it as the integer 2"):
        v.Count(2)("2.0")
    with pytest.raises(ValueError, match="from 0 to 2"):
        v.Count(0, 2)(str(2**64))


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e309", "x", "0x1p3", "1_0", ""])
def test_a_real_is_a_finite_decimal(text):
    with pytest.raises(ValueError, match="must be"):
        v.Real()(text)


def test_a_real_in_range():
    lr = v.Real(0.0, 3.4e37, lo_open=True)
    assert lr("1e-3") == 1e-3 and lr(0.5) == 0.5
    for bad in ("0", "-1", "1e300"):
        with pytest.raises(ValueError, match=r"must be a positive finite number ≤ 3\.4e"):
            lr(bad)
    assert math.isnan(v.Real(finite=False)("nan"))


@pytest.mark.parametrize(("text", "needle"), [
    ("localhost", "no port number"), ("notaurl", "no port number"), ("tcp://", "no port number"),
    ("tcp://host:99999", "from 1 to 65535"), ("udp://host:1", "unknown protocol"),
    ("tcp://ho st:1", "not a host name"), ("", "no port number"),
])
def test_a_scheduler_address_has_a_protocol_host_and_port(text, needle):
    with pytest.raises(ValueError, match=needle):
        v.Address()(text)


def test_scheduler_addresses_that_dask_takes():
    assert v.Address()("10.0.0.5:8786") == "tcp://10.0.0.5:8786"
    assert v.Address()("tls://sched.example.org:8786") == "tls://sched.example.org:8786"
    assert v.Address()("tcp://[::1]:8786") == "tcp://[::1]:8786"
    assert v.Address()("inproc://10.0.0.5/123/1") == "inproc://10.0.0.5/123/1"


@pytest.mark.parametrize(("text", "needle"), [
    ("", "empty path"), ("a\x00b", "NUL byte"), (LONG, "300 bytes long"), (f"x/{LONG}/y", "300 bytes long"),
    ("/".join(["d" * 200] * 25), "bytes long; this file system takes paths"), ("a\udcffb", "not valid UTF-8"),
])
def test_a_path_is_refused_where_the_file_system_would_refuse_it(text, needle):
    with pytest.raises(ValueError, match=needle):
        v.check_path(text)


def test_special_files(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ValueError, match="not a regular file"):
        v.InFile()(str(tmp_path / "pipe"))  # reading it would block forever
    with pytest.raises(ValueError, match="not a regular file"):
        v.InFile()("/dev/zero")  # reading it would never end
    with pytest.raises(ValueError, match="special file"):
        v.OutFile()(str(tmp_path / "pipe"))
    with pytest.raises(ValueError, match="is a folder"):
        v.OutFile()(str(tmp_path))
    with pytest.raises(ValueError, match="is a file, not a folder"):
        v.OutDir()(str(tmp_path / "pipe"))


def test_numbers_and_assignments():
    assert v.Numbers(v.Real())("0.1, 1,10") == (0.1, 1.0, 10.0)
    with pytest.raises(ValueError, match="empty entry"):
        v.Numbers(v.Real())("1,,2")
    with pytest.raises(ValueError, match=r"takes integers from 1 to 1000 \(whole numbers\)"):
        v.Numbers(v.Count(1, 1000))("2.5")
    name, value = v.Assignment()("loc=[0,1]")
    assert name == "loc" and torch.equal(value, torch.tensor([0.0, 1.0], dtype=torch.float64))
    deep = "loc=" + "[" * 40 + "1" + "]" * 40
    for bad in ("loc", "=1", "loc=[1,2", "loc=true", "loc=\"1\"", "loc=[]", deep):
        with pytest.raises(ValueError):
            v.Assignment()(bad)


# --- the command line, item by item of issue 23 -----------------------------------------------------------


def test_samples_written_as_a_decimal_is_refused(capsys):
    assert main(["compare", "--samples", "2.0"]) == 2
    _one_error(capsys, "--samples must be ≥ 2 (an integer), got '2.0'", "write it as the integer 2")


@pytest.mark.parametrize("command", [["compare", "--samples", "64"], ["sweep"], ["gaussian"],
                                     ["vae", "train"], ["vae", "compare"]])
def test_device_cpu_1_is_refused(capsys, tmp_path, command):
    assert main([*command, "--device", "cpu:1", *(["--out", str(tmp_path / "o")] if command[0] != "compare"
                                                   else [])]) == 2
    _one_error(capsys, "--device 'cpu:1': there is one CPU device")
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", [["gaussian"], ["sweep"], ["blr"], ["discrete"], ["vae", "train"],
                                     ["vae", "compare"]])
def test_an_empty_out_is_refused_not_the_current_folder(capsys, tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--out", ""]) == 2
    _one_error(capsys, "--out '' is an empty path")
    assert list(tmp_path.iterdir()) == []


#: the places a path is given, each with a component over 255 bytes: one line, exit 2, nothing written
LONG_PATHS = [
    ["compare", "--samples", "64", "--json", f"{LONG}/x.json"],
    ["compare", "--samples", "64", "--json", LONG],
    ["advise", "--samples", "64", "--json", LONG],
    ["compare", "--samples", "64", "--cost", f"{LONG}.py:f"],
    ["advise", "--samples", "64", "--cost", f"{LONG}.py:f"],
    ["gaussian", "--out", LONG],
    ["gaussian", "--data", LONG],
    ["sweep", "--out", f"ok/{LONG}"],
    ["blr", "--out", LONG],
    ["discrete", "--out", LONG],
    ["vae", "train", "--out", LONG],
    ["vae", "train", "--dataset", f"mnist:{LONG}"],
    ["vae", "compare", "--out", LONG],
    ["vae", "compare", "--dataset", f"mnist:{LONG}"],
    ["vae", "eval", LONG],
    ["vae", "eval", "run", "--json", LONG],
]


@pytest.mark.parametrize("argv", LONG_PATHS, ids=lambda a: " ".join(w if len(w) < 20 else "LONG" for w in a))
def test_a_path_component_over_255_bytes_is_one_error_line(capsys, tmp_path, monkeypatch, argv):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    assert main(argv) == 2
    _one_error(capsys, "bytes long; this file system takes names of at most")
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


@pytest.mark.parametrize("address", ["localhost", "notaurl"])
@pytest.mark.parametrize("command", ["sweep", "advise", "blr"])
def test_a_scheduler_address_without_a_port_is_one_error_line(capsys, tmp_path, command, address):
    out = ["--out", str(tmp_path / "o")] if command != "advise" else []
    assert main([command, "--scheduler", address, *out]) == 2
    _one_error(capsys, f"--scheduler '{address}' has no port number")
    assert not (tmp_path / "o").exists()


def test_discrete_samples_beyond_memory_are_refused_with_the_size_that_fits(capsys, tmp_path):
    assert main(["discrete", "--samples", "100000000000000", "--out", str(tmp_path / "o")]) == 2
    _one_error(capsys, "--samples 100000000000000 needs about", "use at most about")
    assert not (tmp_path / "o").exists()


def test_a_learning_rate_adam_cannot_take_is_refused(capsys, tmp_path):
    assert main(["vae", "train", *VAE, "--lr", "1e300", "--out", str(tmp_path / "o")]) == 2
    _one_error(capsys, "--lr must be a positive finite number ≤ 3.4e+37")


def test_epochs_that_cannot_end_are_refused(capsys, tmp_path):
    assert main(["vae", "train", *VAE[:-8], "--epochs", "1000000000000000", "--monitor-repeats", "0",
                 "--out", str(tmp_path / "o")]) == 2
    _one_error(capsys, "--epochs 1000000000000000 would run for at least", "a week's worth")
    assert not (tmp_path / "o").exists()


def test_blr_steps_that_cannot_end_are_refused(capsys, tmp_path):
    huge = str(10**12)
    assert main(["blr", "--steps", huge, "--log-every", huge, "--out", str(tmp_path / "o")]) == 2
    _one_error(capsys, "--steps 1000000000000 would run for at least")


def test_a_user_cost_whose_warning_precedes_its_failure_is_still_one_line(capsys):
    """math:cos makes torch warn before it fails: the warning used to come first on stderr."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("default")  # as a user's interpreter shows them (the tests turn them to errors)
        assert main(["compare", "--samples", "64", "--cost", "math:cos"]) == 2
    _one_error(capsys, "cost math:cos failed")


def test_warnings_of_a_successful_run_are_still_shown(capsys, tmp_path):
    import warnings

    (tmp_path / "costs.py").write_text("import warnings\n\ndef f(x):\n    warnings.warn('from the cost')\n"
                                       "    return (x ** 2).reshape(x.shape[0], -1).sum(1)\n")
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        assert main(["compare", "--samples", "64", "--estimator", "pathwise", "--cost",
                     f"{tmp_path / 'costs.py'}:f"]) == 0
    assert "from the cost" in capsys.readouterr().err


def test_gaussian_column_named_twice_is_refused(capsys, tmp_path):
    data = tmp_path / "two.csv"
    data.write_text("x,y,x\n1,2,3\n4,5,6\n7,8,9\n")
    assert main(["gaussian", "--data", str(data), "--column", "x", "--out", str(tmp_path / "o")]) == 2
    _one_error(capsys, "has 2 columns named 'x' (columns 1, 3)")
    assert not (tmp_path / "o").exists()


def test_idx_gz_files_that_are_not_gzip_are_one_error_line(capsys, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (folder / f"{stem}.gz").write_bytes(b"\x1f\x8b\x08\x00not deflate data at all")
    assert main(["vae", "train", *VAE[2:], "--dataset", f"mnist:{folder}", "--out", str(tmp_path / "o")]) == 2
    _one_error(capsys, "corrupt gzip data")
    assert not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "run"
    assert main(["vae", "train", *VAE, "--out", str(out)]) == 0
    return out


def _damaged(vae_run: Path, tmp_path: Path, edit=None, **save) -> Path:
    import shutil

    out = Path(shutil.copytree(vae_run, tmp_path / "run"))
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    if edit is not None:
        edit(state)
    torch.save(state, out / "checkpoint.pt", **save)
    return out


def test_a_checkpoint_with_a_negative_epoch_is_damaged_not_resumed(vae_run, tmp_path, capsys):
    out = _damaged(vae_run, tmp_path, lambda s: s.update(epoch=-5))
    assert main(["vae", "train", "--resume", "--epochs", "2", "--out", str(out)]) == 2
    _one_error(capsys, "records epoch -5", "the file is damaged")


def test_a_protocol_4_checkpoint_is_one_line_without_torchs_warning(vae_run, tmp_path, capsys):
    import warnings

    out = _damaged(vae_run, tmp_path, pickle_protocol=4, _use_new_zipfile_serialization=False)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        code = main(["vae", "train", "--resume", "--epochs", "2", "--out", str(out)])
    assert code == 2
    _one_error(capsys)


def test_nan_weights_with_resume_are_one_error_line_exit_2(vae_run, tmp_path, capsys):
    out = _damaged(vae_run, tmp_path, lambda s: s["model"][next(iter(s["model"]))].fill_(float("nan")))
    assert main(["vae", "train", "--resume", "--epochs", "2", "--out", str(out)]) == 2
    _one_error(capsys, "holds NaN or inf weights")
    assert "stopped" not in capsys.readouterr().out


def test_an_idx_header_announcing_more_than_memory_is_refused_before_reading(capsys, tmp_path):
    import gzip
    import struct

    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem, ndim in (("train-images-idx3-ubyte", 3), ("train-labels-idx1-ubyte", 1),
                       ("t10k-images-idx3-ubyte", 3), ("t10k-labels-idx1-ubyte", 1)):
        header = bytes([0, 0, 0x08, ndim]) + struct.pack(f">{ndim}I", *[2**31] * ndim)
        (folder / f"{stem}.gz").write_bytes(gzip.compress(header + b"\x00" * 1000))
    assert main(["vae", "train", *VAE[2:], "--dataset", f"mnist:{folder}", "--out", str(tmp_path / "o")]) == 2
    _one_error(capsys, "its header announces", "GiB available")


@pytest.mark.parametrize("name", ["run\nsecond line", "run\u2028sep", "run\x1b[31mred"])
def test_an_error_naming_a_path_with_a_line_break_stays_one_line(capsys, tmp_path, name):
    """Found by the fuzz: the library's message printed the path as given, line break and all."""
    assert main(["vae", "eval", str(tmp_path / name), "--iwae-k", "2"]) == 2
    line = _one_error(capsys, "holds no checkpoint.pt")
    assert "\x1b" not in line


def test_discrete_with_exact_estimators_only_writes_its_report(tmp_path, capsys):
    """Found by the long fuzz: every variance and bias exactly 0 left the figure a log axis with no data
    (a matplotlib traceback; fixed in gradest.lab.plots)."""
    out = tmp_path / "o"
    assert main(["discrete", "--samples", "80", "--bits", "1", "--t", "0.45", "--sign-samples", "1",
                 "--relax-steps", "0", "--estimator", "enumerate", "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {"results.json", "discrete.png", "report.html"}
