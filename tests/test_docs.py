"""The documentation cannot drift from the code: every page's Python runs and prints what the page
shows, every public symbol is documented, and the site builds with warnings as errors.

Each page's ```python blocks run in order in one namespace (a tutorial builds on its earlier blocks),
with small settings that are the page's own. A block that prints is followed on the page by a
```text block with its output, compared line by line: ``…`` inside a line stands for any text (a
time, a machine's choice), a line of ``…`` alone for any number of lines. Blocks written as
```{code-block} python are shown and not run (they need an optional extra; their behaviour has
tests of its own). The site is built as ``.ci/run`` builds it (conftest's ``docs_site``).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from pathlib import Path

import pytest
import torch

import gradest
from gradest.estimators import registry

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "```python" in p.read_text(encoding="utf-8"))
# a python block, then (after blank lines only) the text block that shows its output, if any
BLOCK = re.compile(r"```python\n(.*?)```\n(?:\n*```text\n(.*?)```\n)?", flags=re.S)


def shown_matches(shown: str, printed: str) -> bool:
    """Whether ``printed`` is what the page's output block ``shown`` says (``…`` as described above)."""
    pattern = []
    for line in shown.rstrip("\n").split("\n"):
        if line.strip() == "…":
            pattern.append(r"(?:[^\n]*\n)*?")
        else:
            pattern.append(".*?".join(map(re.escape, line.rstrip().split("…"))) + r"\n")
    lines = "\n".join(s.rstrip() for s in printed.rstrip("\n").split("\n")) + "\n"
    return re.fullmatch("".join(pattern), lines) is not None


def test_the_tutorials_have_code():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"index.md", "question.md", "tutorials/choosing.md", "tutorials/training.md",
            "tutorials/discrete.md", "tutorials/monitoring.md", "tutorials/extending.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_runs_and_prints_what_it_shows(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything a page writes lands in a temporary folder
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # a page may register one
    torch.set_default_dtype(torch.float32)  # as a reader runs the page (conftest restores float64)
    namespace = {"__name__": "docs"}
    for i, (block, shown) in enumerate(BLOCK.findall(page.read_text(encoding="utf-8"))):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(block, f"{page.name} block {i}", "exec"), namespace)
        printed = printed.getvalue()
        assert printed or not shown, f"{page.name} block {i} shows output but prints nothing"
        assert shown or not printed, (f"{page.name} block {i} prints but the page shows no output; "
                                      f"add a ```text block after it:\n{printed}")
        assert not printed or shown_matches(shown, printed), (
            f"{page.name} block {i} printed\n{printed}\nwhere the page shows\n{shown}")


def test_the_output_comparison_can_fail():
    assert shown_matches("a 1.0\nb …\n…\nz\n", "a 1.0\nb 3 µs\nc\nd\nz\n")
    assert not shown_matches("a 1.0\n", "a 1.1\n")
    assert not shown_matches("a …\n", "a 1\nextra line\n")
    assert not shown_matches("a\n…\nz\n", "a\nb\n")


def _undocumented(obj, name: str) -> list[str]:
    missing = [] if (inspect.getdoc(obj) or "").strip() else [name]
    if inspect.isclass(obj):
        for attr in dir(obj):
            if attr.startswith("_"):
                continue
            raw = inspect.getattr_static(obj, attr)
            method = callable(raw) or isinstance(raw, property | classmethod | staticmethod)
            if inspect.isclass(raw) or not method:
                continue
            if issubclass(obj, tuple) and attr in ("count", "index"):
                continue  # NamedTuple's own
            if not (inspect.getdoc(getattr(obj, attr)) or "").strip():
                missing.append(f"{name}.{attr}")
    return missing


def test_every_public_symbol_has_a_docstring():
    missing = []
    for name in gradest.__all__:
        obj = getattr(gradest, name)
        if inspect.ismodule(obj) or inspect.isclass(obj) or inspect.isroutine(obj):
            missing += _undocumented(obj, name)
    assert missing == [], f"public symbols without a docstring: {missing}"


def test_the_docstring_check_can_fail():
    class Bare:
        def method(self):
            pass

    assert _undocumented(Bare, "Bare") == ["Bare", "Bare.method"]


def test_the_site_builds_with_warnings_as_errors(docs_site):
    """A docstring the API reference cannot parse fails here, not only in CI; no source is published."""
    assert (docs_site / "index.html").is_file()
    assert (docs_site / "_static" / "katex" / "katex.min.js").is_file()  # served from the site, offline
    published = [p.relative_to(docs_site).as_posix() for p in docs_site.rglob("*") if p.is_file()]
    assert [p for p in published if p.endswith(".py") or p.startswith("_sources/")] == []


def test_the_api_reference_covers_every_public_symbol(docs_site):
    """Each name of ``gradest.__all__`` has an entry (an anchor) on a page of the API reference."""
    anchors = set(re.findall(r'id="(?:module-)?(gradest[\w.]*)"', "\n".join(
        p.read_text(encoding="utf-8") for p in (docs_site / "reference").glob("*.html"))))
    short = {a.rsplit(".", 1)[-1] for a in anchors}
    missing = [n for n in gradest.__all__
               if n != "__version__" and n not in short and f"gradest.{n}" not in anchors]
    assert missing == [], f"public symbols missing from docs/reference: {missing}"
    assert "gradest.monitor_lightning.MonitorCallback" in anchors


def test_a_summary_reads_as_the_pages_show_it():
    """``str(ParamStats)``: the mean to its standard error's second digit; one line per tensor element."""
    from gradest.diagnostics import param_stats

    samples = torch.tensor([[1.0, 10.0], [3.0, 30.0], [2.0, 20.0], [2.0, 20.0]], dtype=torch.float64)
    stats = param_stats(samples, exact=torch.tensor([2.0, 20.0], dtype=torch.float64))
    assert str(stats) == ("[0]: mean 2.00 ± 0.41, variance 0.6667, SNR 2.45, z +0.00\n"
                          "[1]: mean 20.0 ± 4.1, variance 66.67, SNR 2.45, z +0.00")
    assert str(param_stats(samples[:, 0])) == "mean 2.00 ± 0.41, variance 0.6667, SNR 2.45"
