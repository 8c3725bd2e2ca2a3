"""Self-contained HTML reports: one file, plots embedded as base64 PNG, no network needed.

Pages are assembled from small pieces (``section``, ``table``, ``figure``, ``math``) by ``page``; the
plots are matplotlib figures rendered with the non-interactive Agg backend. Formulas given as TeX are
typeset in the browser by KaTeX, shipped inside the package (``gradest/static/katex``) and inlined in
the page with its fonts, so nothing is fetched at view time; the plain-text formula stays in the page
as the fallback (no JavaScript, or a formula KaTeX cannot parse).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import re
from collections.abc import Iterable, Sequence
from importlib import resources

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:60rem;
margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1d1d1f}
h1{font-size:1.8rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1rem 0;font-size:.88rem}
th,td{border:1px solid #ccc;padding:.2rem .45rem;text-align:right}.n{white-space:nowrap}
th{background:#f3f3f5}td:first-child,th:first-child,td:not(.n){text-align:left}
.math{font-family:'STIX Two Math','Cambria Math','Latin Modern Math',serif;background:#f7f7fa;
padding:.6rem 1rem;border-left:3px solid #7a8cff;white-space:pre-wrap;overflow-x:auto}
.math.typeset{white-space:normal;font-family:inherit}
figure{margin:1rem 0}figcaption{font-size:.9rem;color:#555}
img{max-width:100%}.note{color:#555;font-size:.9rem}
pre.code{background:#f3f3f5;padding:.6rem 1rem;border-radius:4px;white-space:pre-wrap;
overflow-wrap:anywhere;font-size:.9rem}
"""


#: the reports' colours, one per series in order (every figure of every command draws from it)
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf"]


def log_positive(values: Iterable[float]):
    """Values for a log axis, which cannot show 0 (an exact control variate): those become NaN."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    return np.where(values > 0, values, np.nan)


def png_bytes(fig: Figure, dpi: int = 110) -> bytes:
    """Render a matplotlib figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def figure(png: bytes, caption: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    return f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">{cap}</figure>'


def table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(_fmt(c)) for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def math(text: str, tex: str | None = None) -> str:
    """A block of mathematics: ``text`` in Unicode, typeset from ``tex`` (KaTeX syntax) when given.

    The plain text is what a reader without JavaScript sees, and what remains if KaTeX rejects ``tex``.
    """
    if tex is None:
        return f'<div class="math">{html.escape(text)}</div>'
    return f'<div class="math" data-tex="{html.escape(tex, quote=True)}">{html.escape(text)}</div>'


def code(text: str) -> str:
    """A command to copy, set as code (it wraps at spaces rather than run past the page)."""
    return f'<pre class="code"><code>{html.escape(text)}</code></pre>'


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{''.join(parts)}</section>"


def page(title: str, *parts: str) -> str:
    """The whole HTML document; KaTeX is inlined only when a part holds TeX to typeset."""
    body = "".join(parts)
    typeset = _katex() if "data-tex=" in body else ""
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}{typeset}</body></html>\n"
    )


# Typesets every [data-tex] block in place; a formula KaTeX rejects keeps its plain-text fallback.
_RENDER = """
document.querySelectorAll('[data-tex]').forEach(function (el) {
  try {
    katex.render(el.getAttribute('data-tex'), el, {displayMode: true, throwOnError: true});
    el.classList.add('typeset');
    // a formula wider than the page is set smaller, down to 70%, rather than cut off
    for (var size = 100; el.scrollWidth > el.clientWidth && size > 70; size -= 5) {
      el.style.fontSize = size - 5 + '%';
    }
  } catch (err) {
    console.warn('formula left as plain text: ' + err.message);
  }
});
"""


@functools.cache
def _katex() -> str:
    """KaTeX's stylesheet (fonts as data URIs), script and the render call, ready to inline."""
    root = resources.files("gradest") / "static" / "katex"
    css = (root / "katex.min.css").read_text(encoding="utf-8")

    def font(match: re.Match[str]) -> str:
        data = base64.b64encode((root / "fonts" / match.group(1)).read_bytes()).decode("ascii")
        return f"url(data:font/woff2;base64,{data}) format(\"woff2\")"

    # Each @font-face lists woff2, woff and ttf; keep the woff2, inlined, and drop the others.
    css = re.sub(r'url\(fonts/([\w-]+\.woff2)\) format\("woff2"\)(,url\(fonts/[^)]+\) format\("[a-z]+"\))*',
                 font, css)
    js = (root / "katex.min.js").read_text(encoding="utf-8")
    return f"<style>{css}</style><script>{js}</script><script>{_RENDER}</script>"


#: a cell this short is a number or a name: kept on one line; a longer one wraps at its spaces only
_SHORT = 16
_EXPONENT = re.compile(r"\d[\d.]*e[-+]\d+")  # the one place a browser breaks a number: after "e-"


def _cell(text: str) -> str:
    if len(text) <= _SHORT:
        return f'<td class="n">{html.escape(text)}</td>'
    # "2.523e-31" must not break at its "-"
    return "<td>" + _EXPONENT.sub(lambda m: f'<span class="n">{m[0]}</span>', html.escape(text)) + "</td>"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)
