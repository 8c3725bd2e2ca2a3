"""Sphinx configuration of the documentation site: ``sphinx-build -W --keep-going -b html docs <out>``.

Markdown pages through MyST, the API reference through autodoc + napoleon from the docstrings (written
in reST roles, Google-style sections), math typeset in the browser by the KaTeX the package ships
(src/gradest/static/katex): nothing is fetched from the network, and the ``html`` builder writes one
``page.html`` per page, so the site opened from disk (``file://``) navigates.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from docutils import nodes

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the checkout's gradest, not an installed one

import gradest  # noqa: E402

project = "gradest"
author = "gradest contributors"
copyright = "gradest contributors"
release = version = gradest.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: $…$ and $$…$$ math, heading anchors for links such as page.md#section
myst_enable_extensions = ["dollarmath"]
myst_heading_anchors = 3

# autodoc + napoleon: Google-style sections, members in source order, __init__'s arguments on the class
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autoclass_content = "both"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
add_module_names = False  # "class Estimator", not the module path it happens to live in
toc_object_entries_show_parents = "hide"
autodoc_mock_imports = ["lightning", "pytorch_lightning"]  # MonitorCallback documented without Lightning

html_theme = "pydata_sphinx_theme"
html_title = "gradest"
html_static_path = ["_static", str(ROOT / "src" / "gradest" / "static")]  # -> _static/katex/
html_css_files = ["katex/katex.min.css", "gradest.css"]
html_js_files = ["katex/katex.min.js", "math.js"]
html_math_renderer = "katex"  # registered in setup() below
html_copy_source = False
html_show_sourcelink = False
html_sidebars = {page: [] for page in ("index", "question", "ARCHITECTURE")}  # no section to navigate
html_theme_options = {
    "navbar_align": "left",
    "show_toc_level": 2,
    "navigation_with_keys": False,
    # the page's table of contents beside the long reference pages; elsewhere the code blocks get the room
    "secondary_sidebar_items": {"reference/*": ["page-toc"]},
    "footer_start": [],
    "footer_end": [],
}


# ── math: Sphinx's math nodes written as \(…\) / \[…\] for docs/_static/math.js to typeset with KaTeX ──

def _visit_math(self, node):
    self.body.append(self.starttag(node, "span", "", CLASS="math notranslate nohighlight"))
    self.body.append(r"\(" + self.encode(node.astext()) + r"\)</span>")
    raise nodes.SkipNode


def _visit_displaymath(self, node):
    self.body.append(self.starttag(node, "div", CLASS="math notranslate nohighlight"))
    self.body.append(r"\[" + self.encode(node.astext()) + r"\]</div>" + "\n")
    raise nodes.SkipNode


# ── docstrings: the project's record convention, read as what it means ──

_FIELD = re.compile(r"^([A-Za-z_][\w.]*(?:, ?[A-Za-z_][\w.]*)*): (\S.*)$")
_COLON = "\ue000"  # a private-use character: a colon napoleon must not read


def _fields_as_lists(app, what, name, obj, options, lines):
    """A paragraph of ``name: what it is`` lines (continuations indented) becomes a list of fields.

    The docstrings describe a record's fields and a function's keyword arguments this way; as plain
    reST the lines would run together into one paragraph (or, with continuations, a stray block quote).
    """
    start = 0
    while start < len(lines):
        end = start
        while end < len(lines) and lines[end].strip():
            end += 1
        block = lines[start:end]
        if block and _FIELD.match(block[0]) and all(_FIELD.match(s) or s[:1].isspace() for s in block):
            lines[start:end] = [f"* **{m[1]}** – {m[2]}" if (m := _FIELD.match(s)) else "  " + s.strip()
                                for s in block]
        start = end + 1


def _hide_colons(app, what, name, obj, options, lines):
    """An attribute's first line is prose ("X: what it holds"), not napoleon's inline "type: text"."""
    if what in ("attribute", "data", "property") and lines:
        lines[0] = lines[0].replace(": ", _COLON + " ")


def _restore_colons(app, what, name, obj, options, lines):
    lines[:] = [s.replace(_COLON, ":") for s in lines]


def _drop_namedtuple_boilerplate(app, what, name, obj, options, lines):
    """NamedTuple's generated texts ("Create new instance of …", "Alias for field number 0") say nothing."""
    if what == "class":
        lines[:] = [s for s in lines if not re.match(r"Create new instance of \w+\(", s)]
    if lines and lines[0].startswith("Alias for field number"):
        lines[:] = []


def _skip_described_fields(app, what, name, obj, skip, options):
    """A NamedTuple field its class's docstring describes is not listed a second time, bare."""
    if not (getattr(obj, "__doc__", None) or "").startswith("Alias for field number"):
        return None
    for module in [m for n, m in sys.modules.items() if n.startswith("gradest")]:
        for owner in vars(module).values():
            if isinstance(owner, type) and issubclass(owner, tuple) and vars(owner).get(name) is obj:
                described = rf"(^|[\s;(]){re.escape(name)}: |``{re.escape(name)}``"
                return re.search(described, owner.__doc__ or "", flags=re.M) is not None or None
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _hide_colons, priority=400)  # before napoleon (500)
    app.connect("autodoc-process-docstring", _restore_colons, priority=550)
    app.connect("autodoc-process-docstring", _fields_as_lists, priority=600)  # after napoleon
    app.connect("autodoc-process-docstring", _drop_namedtuple_boilerplate, priority=300)
    app.connect("autodoc-skip-member", _skip_described_fields)
    app.add_html_math_renderer("katex", (_visit_math, None), (_visit_displaymath, None))
