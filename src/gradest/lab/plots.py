"""Figures of the laboratory: the sweep's 2 × 3 variance grid and the BLR training curves.

Matplotlib's object API only (``Figure()``), never pyplot's global state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from gradest.costs import NAMED_COSTS

PARAM_LABEL = {"loc": "μ", "scale": "σ"}


_PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"]
_DASHES = ["-", "--", ":", "-."]


def _colors(names: Sequence[str]) -> dict[str, str]:
    return {n: _PALETTE[i % len(_PALETTE)] for i, n in enumerate(names)}


def _styles(names: Sequence[str]) -> dict[str, str]:
    """A new line style each time the colours repeat: more than ten estimators stay distinct."""
    return {n: _DASHES[(i // len(_PALETTE)) % len(_DASHES)] for i, n in enumerate(names)}


def _positive(values: np.ndarray) -> np.ndarray:
    """A log axis cannot show 0 (an exact control variate): those points are left out."""
    values = np.asarray(values, dtype=float)
    return np.where(values > 0, values, np.nan)


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
                    ax.plot(ks, _positive(var), color=color, ls=styles[est], lw=1.4, label=est)
                    ks_drawn += list(ks)
                    positive |= bool(np.any(np.asarray(var, dtype=float) > 0))
                # A measured variance where the exact one is 0 (an exact control variate) is
                # rounding noise, ~1e-30: drawing it would only stretch the log axis.
                pts = [r for r in rows if r.cost == cost and r.param == param and r.estimator == est
                       and r.variance_exact != 0.0]
                if pts:
                    ax.errorbar([r.k for r in pts], _positive([r.variance for r in pts]),
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
            ax.plot(log_cols["step"], _positive(log_cols[key]) if log else log_cols[key],
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
