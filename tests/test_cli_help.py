"""Every command's --help at 80 columns: what a user types, in full, and no Python type labels."""

from __future__ import annotations

import re

import pytest
import typer
from rich.cells import cell_len
from typer.testing import CliRunner

from gradest.cli import app


def _commands(command=None, path=()):
    """(words, click command) for the root, every group and every command."""
    command = typer.main.get_command(app) if command is None else command
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = list(_commands())


@pytest.mark.parametrize(("words", "command"), COMMANDS, ids=[" ".join(w) or "gradest" for w, _ in COMMANDS])
def test_help_fits_80_columns_and_names_every_option(words, command):
    result = CliRunner().invoke(app, [*words, "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    text = result.output
    assert max(cell_len(line) for line in text.splitlines()) <= 80  # terminal cells (b̃ is one)
    labels = re.findall(r"<[A-Za-z_][\w\[\], |]*>", text)
    assert labels == [], f"Python type labels in the help: {labels}"
    shown = re.sub(r"[│╭╮╰╯─\s]+", " ", text)  # the panel's frame and line breaks out of the way
    for param in command.params:
        for name in (*param.opts, *param.secondary_opts):
            if name.startswith("--"):
                assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", shown), f"{name} not shown in full"
    assert "…" not in re.sub(r"\(pathwise, score function, …\)|Beta, …\)|[NX],…", "", text)


def test_help_keeps_the_parser_names():
    """The help shows one name per option; the other names still parse."""
    runner = CliRunner()
    runner.invoke(app, ["vae", "train", "--help"], env={"COLUMNS": "80"})
    train = typer.main.get_command(app).commands["vae"].commands["train"]
    repeats = next(p for p in train.params if p.name == "var_repeats")
    assert "--var-repeats" in repeats.opts and "--monitor-repeats" in repeats.opts
    resume = next(p for p in train.params if p.name == "resume")
    assert resume.secondary_opts == ["--no-resume"]
