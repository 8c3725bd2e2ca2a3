"""Figures of the laboratory: the sweep's 2 × 3 variance grid and the BLR training curves.

Matplotlib's object API only (``Figure()``), never pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from gradest.costs import NAMED_COSTS
from gradest.report import PALETTE, log_positive

PARAM_LABEL = {"loc": "μ", "scale": "σ"}


_DASHES = ["-", "--", ":", "-."]


def _colors(names: Sequence[str]) -> dict[str, str]:
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _styles(names: Sequence[str]) -> dict[str, str]:
    """A new line style each time the colours repeat: more than ten estimators stay distinct."""
    return {n: _DASHES[(i // len(PALETTE)) % len(_DASHES)] for i, n in enumerate(names)}


def sweep_figure(rows, curves: Mapping, costs: Sequence[str], estimators: Sequence[str]) -> Figure:
    """Rows μ and σ, one column per cost: exact variance curves over k, measured points on top.

    Args:
        rows: :class:`gradest.lab.sweep.SweepRow` records of one configuration.
        curves: (cost, param, estimator) -> (k grid, exact variance), from ``exact_curves``.
    """
    colors, styles = _colors(estimators), _styles(estimators)
    fig = Figure(figsize=(4.2 * len(costs), 7.2), layout="constrained")
    axes = fig.subplots(2, len(costs), squeeze=False)
    for j, cost in enumerate(costs):
        for i, param in enumerate(("loc", "scale")):
            ax = axes[i][j]
            ks_drawn, positive = [], False
            for est in estimators:
                color = colors[est]
                if (cost, param, est) in curves:
                    ks, var = curves[cost, param, est]
                    ax.plot(ks, log_positive(var), color=color, ls=styles[est], lw=1.4, label=est)
                    ks_drawn += list(ks)
                    positive |= bool(np.any(np.asarray(var, dtype=float) > 0))
                # A measured variance where the exact one is 0 (an exact control variate) is
                # rounding noise, ~1e-30: drawing it would only stretch the log axis.
                pts = [r for r in rows if r.cost == cost and r.param == param and r.estimator == est
                       and r.variance_exact != 0.0]
                if pts:
                    ax.errorbar([r.k for r in pts], log_positive([r.variance for r in pts]),
                                yerr=np.nan_to_num([2 * r.variance_stderr for r in pts]), fmt="o", ms=4,
                                color=color, mfc="white", lw=0.8, capsize=2,
                                label=None if (cost, param, est) in curves else est)
                    ks_drawn += [r.k for r in pts]
                    positive |= any(r.variance > 0 for r in pts)
            # log axes only where they can show the data: a grid with k ≤ 0 gets a linear k axis,
            # a panel whose variances are all 0 (constant f at k = 0) a linear variance axis
            # the linear part of a symlog axis ends at the smallest positive k of the grid itself
            positive_ks = [r.k for r in rows if r.cost == cost and r.k > 0] or [k for k in ks_drawn if k > 0]
            if ks_drawn and min(ks_drawn) > 0:
                ax.set_xscale("log")
            elif positive_ks and max(positive_ks) > 10 * min(positive_ks):
                # k = 0 beside a wide positive range: linear near 0, logarithmic beyond
                ax.set_xscale("symlog", linthresh=min(positive_ks))
            if positive:
                ax.set_yscale("log")
            _floor_zeros(ax, rows, cost, param, estimators, colors)
            ax.grid(True, which="major", alpha=0.3)
            formula = NAMED_COSTS.get(cost, cost)
            ax.set_title(f"f(x) = {formula}: ∂/∂{PARAM_LABEL[param]}", fontsize=10)
            ax.set_xlabel("k")
            if j == 0:
                ax.set_ylabel(f"variance of one sample, ∂/∂{PARAM_LABEL[param]}")
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle("Single-sample gradient variance, x ~ N(μ, σ²): lines exact, points measured (±2 se)",
                 fontsize=11)
    return fig


def _floor_zeros(ax, rows, cost: str, param: str, estimators: Sequence[str],
                 colors: Mapping[str, str]) -> None:
    """Cells whose exact variance is 0 (an exact control variate) as ▼ on the axis floor, labelled: a log
    axis has no 0, and a legend entry with nothing drawn reads as a missing estimator."""
    zeros = {est: [r.k for r in rows if r.cost == cost and r.param == param and r.estimator == est
                   and r.variance_exact == 0.0] for est in estimators}
    zeros = {est: ks for est, ks in zeros.items() if ks}
    if not zeros:
        return
    ax.autoscale_view()
    floor = ax.get_ylim()[0]
    for i, (est, ks) in enumerate(zeros.items()):
        ax.plot(ks, [floor] * len(ks), "v", color=colors[est], ms=8, clip_on=False, zorder=5)
        ax.annotate(f"{est}: exactly 0", (ks[0], floor), xytext=(6, 6 + 12 * i), textcoords="offset points",
                    color=colors[est], fontsize=8)
    ax.set_ylim(bottom=floor)


def blr_figure(logs: Mapping[str, Mapping[str, np.ndarray]]) -> Figure:
    """ELBO, accuracy and gradient variances (mean and max over dimensions) against the step.

    Args:
        logs: estimator -> columns ``step, elbo, accuracy, var_mean_loc, var_max_loc,
            var_mean_logscale, var_max_logscale``.
    """
    colors = _colors(list(logs))
    panels = [("elbo", "ELBO (full data)", False), ("accuracy", "training accuracy", False),
              ("var_mean_loc", "gradient variance, mean over dims: μ", True),
              ("var_max_loc", "gradient variance, max over dims: μ", True),
              ("var_mean_logscale", "gradient variance, mean over dims: log σ", True),
              ("var_max_logscale", "gradient variance, max over dims: log σ", True)]
    fig = Figure(figsize=(12, 10), layout="constrained")
    axes = fig.subplots(3, 2).ravel()
    for ax, (key, title, log) in zip(axes, panels, strict=True):
        for est, log_cols in logs.items():
            ax.plot(log_cols["step"], log_positive(log_cols[key]) if log else log_cols[key],
                    color=colors[est], lw=1.2, label=est)
        if log:
            ax.set_yscale("log")
        if key == "elbo":
            lows = [np.nanpercentile(c["elbo"], 5) for c in logs.values() if len(c["elbo"])]
            highs = [np.nanmax(c["elbo"]) for c in logs.values() if len(c["elbo"])]
            if lows:
                span = max(highs) - min(lows)
                ax.set_ylim(min(lows) - 0.05 * span, max(highs) + 0.05 * span)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Bayesian logistic regression by VI: training curves per estimator", fontsize=11)
    return fig


#: one marker shape per estimator, beside its colour: ten estimators stay apart in print and for colour-blind
#: readers
_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">"]


def discrete_figure(rows, t: float | None = None) -> Figure:
    """The REBAR toy at one target t (every target, stacked, when t is None): single-sample variance and
    |bias| (± 2 se) against D, the probability of the right sign against the number of samples m at the
    largest D, and a legend panel; each estimator a colour and a marker shape, biased ones dashed.

    Args:
        rows: :class:`gradest.lab.discrete.DiscreteRow` records.
        t: the target to draw; None draws each target's 2 × 2 panels one below the other.
    """
    targets = list(dict.fromkeys(r.t for r in rows)) if t is None else [t]
    fig = Figure(figsize=(11, 8.5 * len(targets)), layout="constrained")
    subfigs = [fig] if len(targets) == 1 else list(fig.subfigures(len(targets), 1))
    for sub, target in zip(subfigs, targets, strict=True):
        _discrete_panels(sub, [r for r in rows if r.t == target], target)
    return fig


def _discrete_panels(fig, rows, t: float) -> None:
    estimators = list(dict.fromkeys(r.estimator for r in rows))
    colors = _colors(estimators)
    markers = {n: _MARKERS[i % len(_MARKERS)] for i, n in enumerate(estimators)}
    (ax_var, ax_bias), (ax_sign, ax_key) = fig.subplots(2, 2)
    largest = max(r.bits for r in rows)
    for est in estimators:
        cells = sorted((r for r in rows if r.estimator == est), key=lambda r: r.bits)
        style = {"color": colors[est], "ls": "--" if cells[0].biased else "-", "lw": 1.5,
                 "marker": markers[est], "ms": 6}
        bits = [r.bits for r in cells]
        label = f"{est} (biased)" if cells[0].biased else est
        # a variance at float rounding (an estimator exact on this cost) would only stretch the axis
        ax_var.errorbar(bits, log_positive([r.variance if r.variance > (1e-13 * r.bits) ** 2 else 0.0
                                         for r in cells]),
                        yerr=[2 * r.variance_stderr for r in cells], label=label, capsize=2, **style)
        ax_bias.errorbar(bits, log_positive([abs(r.bias) for r in cells]),
                         yerr=[2 * r.bias_stderr for r in cells], capsize=2, **style)
        exact = [(r.bits, r.variance_exact) for r in cells if r.variance_exact is not None]
        if exact:
            ax_var.plot([b for b, _ in exact], [v for _, v in exact], color=colors[est], ls=":", lw=2.5,
                        alpha=0.6)
        top = next((r for r in cells if r.bits == largest), None)
        if top is not None:
            ax_sign.errorbar([s.samples for s in top.sign], [s.probability for s in top.sign],
                             yerr=[2 * (s.stderr if np.isfinite(s.stderr) else 0.0) for s in top.sign],
                             capsize=2, **style)
    for ax in (ax_var, ax_bias):
        ax.set_xscale("log")
        if _has_positive(ax):  # every estimator exact here: nothing to draw on a log axis
            ax.set_yscale("log")
        ax.set_xlabel("bits D")
        ax.grid(True, which="major", alpha=0.3)
    ax_var.set_title("single-sample variance per coordinate\n(dotted: exact; 0 not drawn)")
    ax_bias.set_title("|bias| per coordinate (± 2 se; 0 not drawn)")
    ax_sign.set_xscale("log")
    ax_sign.set_ylim(-0.02, 1.02)
    ax_sign.axhline(0.5, color="#888", lw=0.8, ls="--")
    ax_sign.set_xlabel("samples m averaged")
    ax_sign.set_title(f"D = {largest}: P(sign of the mean of m is right)")
    ax_sign.grid(True, alpha=0.3)
    ax_key.axis("off")
    handles, labels = ax_var.get_legend_handles_labels()
    ax_key.legend(handles, labels, loc="center", fontsize=11, frameon=False, title="estimator",
                  title_fontsize=11)
    fig.suptitle(f"t = {t:g}: E[Σᵢ (bᵢ − t)²], b ~ Bernoulli(σ(θ)), every discrete estimator against the "
                 "closed form", fontsize=12)


def _has_positive(ax) -> bool:
    """Whether any line of ``ax`` has a finite positive y value (a log axis needs one)."""
    for line in ax.get_lines():
        y = np.asarray(line.get_ydata(), dtype=float)
        if np.any(np.isfinite(y) & (y > 0)):
            return True
    return False
