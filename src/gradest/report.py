"""Self-contained HTML reports: one file, plots embedded as base64 PNG, no network needed.

Pages are assembled from small pieces (``section``, ``table``, ``figure``) by ``page``; the
plots are matplotlib figures rendered with the non-interactive Agg backend.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:60rem;
margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1d1d1f}
h1{font-size:1.8rem}h2{margin-top:2.2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:1rem 0;font-size:.92rem}
th,td{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th{background:#f3f3f5}td:first-child,th:first-child{text-align:left}
.math{font-family:'STIX Two Math','Cambria Math','Latin Modern Math',serif;background:#f7f7fa;
padding:.6rem 1rem;border-left:3px solid #7a8cff;white-space:pre-wrap;overflow-x:auto}
figure{margin:1rem 0}figcaption{font-size:.9rem;color:#555}
img{max-width:100%}.note{color:#555;font-size:.9rem}
"""


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
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def math(text: str) -> str:
    """A block of typeset (Unicode) mathematics."""
    return f'<div class="math">{html.escape(text)}</div>'


def paragraph(text: str) -> str:
    return f"<p>{html.escape(text)}</p>"


def section(title: str, *parts: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{''.join(parts)}</section>"


def page(title: str, *parts: str) -> str:
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n"
    )


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "—" if value is None else str(value)
