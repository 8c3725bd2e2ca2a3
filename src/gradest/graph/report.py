"""The attribution report: per-node variance bars (± 2 se), a table and the sentence they
support, as an HTML section or a page."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import torch

from gradest.errors import GradestError
from gradest.graph.attribution import attribute
from gradest.graph.model import Graph
from gradest.graph.records import Attribution, NodeGradients


def attribution_section(att: Attribution, title: str = "Which node makes the gradient noisy") -> str:
    """An HTML section: the per-node variance bars (± 2 se), a table and the sentence they support."""
    from gradest import report as html

    stderr = att.stderr or {}
    png = html.png_bytes(attribution_figure(att.nodes, stderr, att.total, stderr.get("total")))
    shares = att.shares()
    rows = [[k, v, stderr.get(k), shares[k]] for k, v in att.nodes.items()]
    rows.append(["covariance (total − Σ nodes)", att.covariance, None, None])
    rows.append(["total", att.total, stderr.get("total"), None])
    noisy = max(att.nodes, key=att.nodes.get) if att.nodes else None
    sentence = "" if noisy is None else (
        f"{noisy} contributes {shares[noisy]:.0%} of the summed per-node variance "
        f"({att.nodes[noisy]:.4g} ± {stderr.get(noisy, math.nan):.2g}), from "
        f"{att.num_samples or '?'} single-particle gradients.")
    return html.section(
        title,
        html.paragraph("Single-sample gradient variance (trace of the covariance, summed over the "
                       "parameters) of each node's term of the surrogate's gradient: a score node's "
                       "learning signal times its score, a callable node's estimate, a pathwise node's "
                       "share of the costs' gradient (the paths where θ enters through it), and θ's "
                       "direct use in the costs. ± is one standard error."),
        html.figure(png, "Per-node single-sample variance, ± 2 standard errors; the last bar is the whole "
                         "gradient's (the nodes' terms covary)."),
        html.table(["node", "variance", "± se", "share"], rows),
        html.paragraph(sentence) if sentence else "",
    )


def report(source: Graph | NodeGradients | Attribution, path: str | os.PathLike | None = None,
           params: Mapping[str, torch.Tensor] | Sequence[torch.Tensor] | None = None,
           title: str = "Per-node gradient variance") -> str:
    """The attribution as a self-contained HTML page (written atomically to ``path`` if given).

    source: a built :class:`Graph` (then ``params`` are differentiated), its :meth:`Graph.per_node`
    result, or an :func:`attribute` record.
    """
    from gradest import report as html

    if isinstance(source, Graph):
        if params is None:
            raise GradestError("report(graph) needs params: the tensors to attribute the gradient of")
        source = source.per_node(params)
    if isinstance(source, NodeGradients):
        source = attribute(source)
    if not isinstance(source, Attribution):
        raise GradestError(f"report takes a Graph, NodeGradients or Attribution, got {type(source).__name__}")
    page = html.page(title, attribution_section(source))
    if path is not None:
        from gradest.io import write_atomic

        write_atomic(path, page)
    return page


def attribution_figure(nodes: Mapping[str, float], stderr: Mapping[str, float], total: float,
                       total_stderr: float | None = None, title: str = "") -> object:
    """Per-node single-sample gradient variance (trace of the covariance) with ± 2 se, and the total.

    Args:
        nodes: group -> variance (:class:`gradest.graph.Attribution`'s ``nodes``).
        stderr: group -> standard error of that variance.
    """
    names = [*nodes, "total"]
    values = [nodes[n] for n in nodes] + [total]
    errors = [stderr.get(n, 0.0) for n in nodes] + [total_stderr or 0.0]
    errors = [2 * e if math.isfinite(e) else 0.0 for e in errors]
    from matplotlib.figure import Figure  # matplotlib only when a report is drawn

    from gradest.report import PALETTE, log_positive

    fig = Figure(figsize=(1.2 * len(names) + 3, 3.8), layout="constrained")
    ax = fig.subplots()
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(nodes))] + ["#555555"]
    positive = [v for v in values if v > 0]
    ax.bar(range(len(names)), log_positive(values), yerr=errors, color=colors, capsize=4)
    ax.set_xticks(range(len(names)), names)
    if positive and max(positive) > 100 * min(positive):
        ax.set_yscale("log")
    ax.set_ylabel("variance of one single-sample gradient")
    ax.grid(True, axis="y", alpha=0.3)
    ax.set_title(title or "Which node makes the gradient noisy: per-node variance (± 2 se)", fontsize=10)
    return fig
