"""The documentation cannot drift from the code: every page's Python runs, every public symbol is documented.

Each page's ```python blocks run in order in one namespace (a tutorial builds on its earlier blocks),
with small settings that are the page's own. ``mkdocs build --strict`` itself runs in ``.ci/run``.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

import gradest
from gradest.estimators import registry

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(p for p in DOCS.rglob("*.md") if "```python" in p.read_text(encoding="utf-8"))


def test_the_tutorials_have_code():
    names = {p.relative_to(DOCS).as_posix() for p in PAGES}
    assert {"index.md", "question.md", "tutorials/choosing.md", "tutorials/training.md",
            "tutorials/discrete.md", "tutorials/monitoring.md", "tutorials/extending.md"} <= names


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(DOCS).as_posix())
def test_page_runs(page, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # anything a page writes lands in a temporary folder
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))  # a page may register one
    namespace = {"__name__": "docs"}
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), flags=re.S)
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page.name} block {i}", "exec"), namespace)


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


def test_the_api_reference_covers_every_public_symbol():
    """Each name of ``gradest.__all__`` is rendered by a ``::: module.name`` directive of docs/reference."""
    directives = set(re.findall(r"^::: ([\w.]+)$", "\n".join(
        p.read_text(encoding="utf-8") for p in (DOCS / "reference").glob("*.md")), flags=re.M))
    rendered = {d.rsplit(".", 1)[-1] for d in directives} | {d for d in directives}
    missing = [n for n in gradest.__all__ if n != "__version__" and n not in rendered
               and f"gradest.{n}" not in rendered]
    assert missing == [], f"public symbols missing from docs/reference: {missing}"


def test_the_site_builds_strictly(tmp_path):
    """``mkdocs build --strict``: a docstring the API reference cannot parse fails here, not only in CI."""
    import os
    import subprocess
    import sys

    mkdocs = Path(sys.executable).with_name("mkdocs")
    if not mkdocs.exists():
        pytest.skip("mkdocs not installed (pip install -e '.[docs]')")
    done = subprocess.run([str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=DOCS.parent, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
