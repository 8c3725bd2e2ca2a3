r"""The walkthrough as files: report.html (self-contained worked answer), the plots as PNG, results.json.

Everything is rendered in memory first and only then written, each file atomically
(:mod:`gradest.io`), so a failure leaves no half-written output.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from gradest import report as html
from gradest.errors import GradestError
from gradest.gaussian import closed_form as cf
from gradest.gaussian.conclusions import fmt_at
from gradest.gaussian.fits import DIVERGENCE_BOUND
from gradest.gaussian.results import Results
from gradest.io import write_atomic, write_json

COLOURS = {"pathwise": "#1f77b4", "score": "#d62728", "score-baseline": "#ff7f0e",
           "score-loo": "#9467bd", "exact": "#2ca02c"}
LABELS = {"pathwise": "pathwise (reparameterized)", "score": "score function, no baseline",
          "score-baseline": "score function, best constant baseline",
          "score-loo": "score function, leave-one-out baseline", "exact": "exact gradient"}
SYMBOL = {"mu": "μ", "sigma": "σ"}


def variance_figure(results: Results) -> Figure:
    sweep = results.sweep
    fig = Figure(figsize=(10, 4))
    for ax, param in zip(fig.subplots(1, 2), cf.PARAMS, strict=True):
        for name in cf.ESTIMATORS:
            ax.plot(sweep.sigmas, sweep.exact[name][param], color=COLOURS[name],
                    label=f"{LABELS[name]} (exact)")
            ax.plot(sweep.measured_at, sweep.measured[name][param], "o", color=COLOURS[name], mfc="none",
                    label="measured" if name == "pathwise" else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("σ")
        ax.set_ylabel(f"Var of one estimate of ∂E f/∂{SYMBOL[param]}")
        ax.axvline(results.data.sd, color="grey", lw=0.8, ls=":")
        ax.set_title(f"∂/∂{SYMBOL[param]} at μ = {sweep.mu:.3g} (dotted: σ = √v)")
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def stderr_figure(results: Results) -> Figure:
    curve = results.curve
    fig = Figure(figsize=(10, 4))
    for ax, param in zip(fig.subplots(1, 2), cf.PARAMS, strict=True):
        for name in cf.ESTIMATORS:
            ax.plot(curve.sizes, curve.exact[name][param], color=COLOURS[name], label=LABELS[name])
            ax.plot(curve.sizes, curve.measured[name][param], "o", color=COLOURS[name], mfc="none", ms=4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("samples N")
        ax.set_ylabel(f"standard error of ∂E f/∂{SYMBOL[param]}")
        ax.set_title(f"∂/∂{SYMBOL[param]} at μ = {curve.mu:.3g}, σ = {curve.sigma:.3g}")
    fig.axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def trajectory_figure(results: Results) -> Figure:
    names = list(dict.fromkeys(r.objective for r in results.fits))
    fig = Figure(figsize=(10, 2.6 * len(names)))
    axes = np.atleast_2d(fig.subplots(len(names), 2, squeeze=False))
    for row, name in zip(axes, names, strict=True):
        fits = [r for r in results.fits if r.objective == name]
        for r in fits:
            steps = np.arange(1, r.mu_path.shape[0] + 1)  # step t is drawn at t + 1 on the log axis
            colour = COLOURS.get(r.estimator, "k")
            label = LABELS.get(r.estimator)
            if r.diverged_at is not None:
                label = f"{label}: diverged at step {r.diverged_at}"
            row[0].plot(steps, r.mu_path, color=colour, lw=0.9, label=label)
            row[1].plot(steps, r.sigma_path, color=colour, lw=0.9)
            if r.diverged_at is not None:  # where it left the bound: its curve ends off the frame
                for ax in row:
                    ax.axvline(r.diverged_at + 1, color=colour, lw=0.9, ls=":")
        target = fits[0].target
        row[0].axhline(target.mu, color="k", ls="--", lw=0.8, label="target")
        row[1].axhline(target.sigma, color="k", ls="--", lw=0.8)
        if name == "squared":
            row[1].set_yscale("log")  # geometric collapse of σ is a straight line here
        # a fit that diverged or ended far off would flatten the others: frame the axes on the rest
        sane = [r for r in fits if r.diverged_at is None and r.error(results.data.sd) < 10.0]
        if sane and len(sane) < len(fits):
            for ax, attr in ((row[0], "mu_path"), (row[1], "sigma_path")):
                _frame(ax, np.concatenate([getattr(r, attr) for r in sane]))
        row[0].set_ylabel(f"{name}: μ")
        row[1].set_ylabel(f"{name}: σ")
        row[0].legend(fontsize=7)
    for ax in axes.ravel():
        ax.set_xscale("log")  # the fast start and the slow noisy finish, both visible
    for ax in axes[-1]:
        ax.set_xlabel("SGD step + 1")
    fig.tight_layout()
    return fig


def _frame(ax, values: np.ndarray) -> None:
    values = values[np.isfinite(values)]
    if ax.get_yscale() == "log":
        values = values[values > 0]
        if values.size:
            ax.set_ylim(values.min() / 2, values.max() * 2)
    elif values.size:
        pad = 0.05 * (values.max() - values.min()) + 1e-12
        ax.set_ylim(values.min() - pad, values.max() + pad)


def _fmt_est(e) -> str:
    return f"{e.mean:.5g} ± {e.stderr:.3g} (z = {e.z:+.2f})"


def _question(results: Results) -> str:
    d = results.data
    return html.section(
        "The question",
        html.paragraph(
            "Data x₁…xₙ are assumed to come from N(μ, σ²). A stochastic node y ~ N(μ, σ²) feeds the loss "
            "f(y) = Σᵢ (y − xᵢ)². Is the gradient of the expectation, ∇θ E[f(y)], the same as the "
            "reparameterized gradient E_ε[∇θ f(μ + σε)], for μ and for σ? Why does σ² not come out of this "
            "loss, and which objectives recover it by SGD through the same stochastic node? Is the "
            "reparameterized estimate really less noisy than the score-function one — by how much, where, "
            "and why — and what does that do to SGD?"),
        html.paragraph(f"Data: {d.n} values from {d.described}; x̄ = {fmt_at(d.mean, d.sd)}, "
                       f"v = (1/n)Σ(xᵢ − x̄)² = {d.var_mle:.6g} (so √v = {d.sd:.6g})."),
    )


#: the conclusions that answer the question's three parts, by their opening words, in the question's order
SHORT_ANSWER = ("For σ in particular", "squared:", "nll with", "crps with", "elbo with",
                "Single-sample variance for μ", "squared with score")


def _short_answer(results: Results) -> str:
    """The conclusions that answer the question, first of each kind, before the working that backs them."""
    picked = [next((c for c in results.conclusions if c.startswith(opening)), None)
              for opening in SHORT_ANSWER]
    items = "".join(f"<li>{html.paragraph(c)}</li>" for c in picked if c is not None)
    return html.section(
        "Short answer",
        html.paragraph("Computed from this run; the sections below derive and check each number."),
        f"<ul>{items}</ul>",
    )


def _derivation() -> str:
    return html.section(
        "Derivation",
        html.paragraph("Differentiate the expectation itself (left-hand side). With d = μ − x̄:"),
        html.math("E f = Σᵢ E(y − xᵢ)² = Σᵢ [(μ − xᵢ)² + σ²] = n (d² + σ²) + n v\n"
                  "∂E f/∂μ = 2n(μ − x̄),        ∂E f/∂σ = 2nσ        (∂E f/∂σ² = n)",
                  r"\begin{aligned}\mathbb{E} f &= \textstyle\sum_i \mathbb{E}(y - x_i)^2"
                  r" = \sum_i \left[(\mu - x_i)^2 + \sigma^2\right] = n(d^2 + \sigma^2) + n v \\"
                  r"\frac{\partial\, \mathbb{E} f}{\partial \mu} &= 2n(\mu - \bar x), \qquad"
                  r" \frac{\partial\, \mathbb{E} f}{\partial \sigma} = 2n\sigma"
                  r" \qquad \Big(\frac{\partial\, \mathbb{E} f}{\partial \sigma^2} = n\Big)\end{aligned}"),
        html.paragraph("Differentiate inside the expectation (right-hand side), y = g(ε; μ, σ) = μ + σε:"),
        html.math("∂f/∂μ = Σᵢ 2(μ + σε − xᵢ) = 2n(d + σε)             → E_ε = 2nd\n"
                  "∂f/∂σ = Σᵢ 2(μ + σε − xᵢ) ε = 2n(d + σε) ε        → E_ε = 2n(d E ε + σ E ε²) = 2nσ",
                  r"\begin{aligned}\frac{\partial f}{\partial \mu} &= \textstyle\sum_i"
                  r" 2(\mu + \sigma\varepsilon - x_i) = 2n(d + \sigma\varepsilon)"
                  r" &&\Rightarrow\ \mathbb{E}_\varepsilon = 2nd \\"
                  r"\frac{\partial f}{\partial \sigma} &= \textstyle\sum_i 2(\mu + \sigma\varepsilon - x_i)"
                  r"\,\varepsilon = 2n(d + \sigma\varepsilon)\,\varepsilon &&\Rightarrow"
                  r"\ \mathbb{E}_\varepsilon = 2n(d\,\mathbb{E}\varepsilon + \sigma\,\mathbb{E}\varepsilon^2)"
                  r" = 2n\sigma\end{aligned}"),
        html.paragraph(
            "Both sides agree for σ as well: the step that is easy to miss is E[ε] = 0 and E[ε²] = 1 after "
            "differentiating through y = μ + σε. Setting the gradients to zero gives μ = x̄ and σ = 0: the "
            "σ-gradient 2nσ is positive for every σ > 0, so this loss prefers a point mass at x̄. It is not "
            "a likelihood; it cannot recover σ² = mean(x²) − x̄². Objectives that can: the negative "
            "log-likelihood (its minimiser is σ̂² = v), a proper scoring rule such as the CRPS, whose "
            "−½E|y − y′| term rewards spread, and the ELBO of a Bayesian model of the data."),
        html.paragraph("Single-sample variances (E ε² = 1, E ε⁴ = 3, E ε⁶ = 15, E ε⁸ = 105). The score "
                       "function of N(μ, σ²) is (ε/σ, (ε² − 1)/σ); write f − b = c + Bε + Cε² with "
                       "c = n(d² + v) − b, B = 2ndσ, C = nσ²:"),
        html.math("pathwise:      Var ĝ_μ = 4n²σ²                     Var ĝ_σ = 4n²(d² + 2σ²)\n"
                  "score, b:      Var ĝ_μ = (c² + 6cC + 2B² + 15C²)/σ²\n"
                  "               Var ĝ_σ = (2c² + 20cC + 10B² + 74C²)/σ²\n"
                  "best b:        b*_μ = n(d² + v) + 3nσ²               b*_σ = n(d² + v) + 5nσ²\n"
                  "               Var ĝ_μ = 8n²d² + 6n²σ²              Var ĝ_σ = 40n²d² + 24n²σ²",
                  r"\begin{aligned}&\text{pathwise:} && \operatorname{Var}\hat g_\mu = 4n^2\sigma^2"
                  r" && \operatorname{Var}\hat g_\sigma = 4n^2(d^2 + 2\sigma^2) \\"
                  r"&\text{score, } b\text{:} && \operatorname{Var}\hat g_\mu"
                  r" = (c^2 + 6cC + 2B^2 + 15C^2)/\sigma^2"
                  r" && \operatorname{Var}\hat g_\sigma = (2c^2 + 20cC + 10B^2 + 74C^2)/\sigma^2 \\"
                  r"&\text{best } b\text{:} && b^*_\mu = n(d^2 + v) + 3n\sigma^2"
                  r" && b^*_\sigma = n(d^2 + v) + 5n\sigma^2 \\"
                  r"& && \operatorname{Var}\hat g_\mu = 8n^2d^2 + 6n^2\sigma^2"
                  r" && \operatorname{Var}\hat g_\sigma = 40n^2d^2 + 24n^2\sigma^2\end{aligned}"),
        html.paragraph(
            "So the score-function estimator is noisier even with its best constant baseline: 1.5× (μ) and "
            "3× (σ) at d = 0, growing like d²/σ² away from the data; without a baseline the c²/σ² term "
            "makes it explode for small σ and for data far from 0. The pathwise variance of ĝ_μ, 4n²σ², "
            "does not depend on where μ is. The tests check every formula against Gauss–Hermite "
            "quadrature and against the measured variances."),
    )


def _checks(results: Results) -> str:
    rows = []
    for label, pc in results.checks:
        for p in cf.PARAMS:
            ests = pc.estimates
            rows.append([label, fmt_at(pc.mu, results.data.sd), f"{pc.sigma:.4g}", f"∂/∂{SYMBOL[p]}",
                         f"{getattr(pc.exact, p):.5g}", _fmt_est(ests["pathwise"][p]),
                         _fmt_est(ests["score"][p]), _fmt_est(ests["score-baseline"][p])])
    samples = results.checks[0][1].samples
    return html.section(
        "Gradient check: exact vs Monte Carlo",
        html.paragraph(f"Each estimate is the mean of {samples} single-sample estimates (one y each), "
                       "± its standard error; z = (estimate − exact)/stderr should look like N(0, 1)."),
        html.table(["point", "μ", "σ", "gradient", "exact", "pathwise", "score", "score, best baseline"],
                   rows),
    )


def _variances(results: Results, pngs: dict[str, bytes]) -> str:
    rows = []
    for label, pc in results.checks:
        for p in cf.PARAMS:
            e = pc.estimates
            pw = e["pathwise"][p].exact_variance
            rows.append([label, f"∂/∂{SYMBOL[p]}"]
                        + [f"{e[n][p].exact_variance:.4g} / {e[n][p].variance:.4g}" for n in cf.ESTIMATORS]
                        + [f"{e['score'][p].exact_variance / pw:.3g}×",
                           f"{e['score-baseline'][p].exact_variance / pw:.3g}×"])
    return html.section(
        "Variance: exact vs measured",
        html.paragraph("Single-sample variance, exact (closed form) / measured, and the ratio to pathwise."),
        html.table(["point", "gradient", "pathwise", "score", "score, best baseline",
                    "score ÷ pathwise", "best-baseline ÷ pathwise"], rows),
        html.figure(pngs["variance_vs_sigma.png"],
                    "Single-sample variance against σ (log–log); lines exact, circles measured."),
        html.figure(pngs["stderr_vs_samples.png"],
                    "Standard error of the N-sample mean against N; lines √(Var/N), circles measured "
                    "(RMS error over disjoint batches)."),
    )


def _fits(results: Results, pngs: dict[str, bytes]) -> str:
    s = results.settings
    sd = results.data.sd
    rows = [_fit_row(r, sd) for r in results.fits]
    return html.section(
        "Fits by SGD through the stochastic node",
        html.math(
            "squared: (1/n) E Σᵢ (y − xᵢ)²,  y ~ N(μ, σ²);  target (x̄, 0)\n"
            "crps:    (1/n) Σᵢ E|y − xᵢ| − ½ E|y − y′|,  y, y′ ~ N(μ, σ²);\n"
            "         target: the minimiser of the closed-form CRPS of N(μ, σ²) averaged over the data\n"
            "elbo:    −ELBO/n for xᵢ ~ N(m, s²) with weak priors on m and ℓ = log s,\n"
            "         q = N(μ_m, σ_m²) N(μ_ℓ, σ_ℓ²) over (m, ℓ);  (μ, σ) = (μ_m, exp μ_ℓ);\n"
            "         target (E[m | x], exp E[log s | x]) from the exact posterior\n"
            "nll:     −(1/n) Σᵢ log N(xᵢ; μ, σ²), exact gradient;  target the MLE (x̄, √v)",
            r"\begin{aligned}&\text{squared:} && \tfrac1n\,\mathbb{E}\textstyle\sum_i (y - x_i)^2,"
            r"\quad y \sim \mathcal N(\mu, \sigma^2); \quad\text{target } (\bar x, 0) \\"
            r"&\text{crps:} && \tfrac1n \textstyle\sum_i \mathbb{E}|y - x_i| - \tfrac12\,\mathbb{E}|y - y'|,"
            r"\quad y, y' \sim \mathcal N(\mu, \sigma^2); \quad\text{target: the minimiser of the closed-form"
            r" CRPS} \\"
            r"&\text{elbo:} && -\mathrm{ELBO}/n \text{ for } x_i \sim \mathcal N(m, s^2),\ \ell = \log s,"
            r"\ q = \mathcal N(\mu_m, \sigma_m^2)\,\mathcal N(\mu_\ell, \sigma_\ell^2);"
            r" \quad (\mu, \sigma) = (\mu_m, e^{\mu_\ell}) \\"
            r"&\text{nll:} && -\tfrac1n \textstyle\sum_i \log \mathcal N(x_i; \mu, \sigma^2),"
            r"\ \text{exact gradient}; \quad\text{target the MLE } (\bar x, \sqrt v)\end{aligned}"),
        html.paragraph(
            f"Each stochastic objective is fitted with {', '.join(s.fit_estimators)}"
            + "".join(f", and {o} also with {e}" for o, e in s.extra_fits)
            + f", at {s.samples_per_step} "
            f"samples per step for {s.steps} steps (constant step size η = {s.eta:g} times a fixed "
            "per-parameter scale; σ projected above 10⁻⁴√v). Final values are averages of the latter half "
            "of the iterates, ± their standard error from the SGD noise (batch means; none when fewer "
            "than 20 steps are averaged); "
            "the error and 'steps to 1%' are measured in units of √v (steps after which "
            "μ and σ stay within 1% of √v of the target). A fit has diverged at the first step whose "
            f"iterate is not finite or lies more than {DIVERGENCE_BOUND:g} √v from the target; it stops "
            "there and has no final values."),
        html.table(["objective", "estimator", "μ", "σ", "target μ", "target σ", "error", "steps to 1%"],
                   rows),
        html.figure(pngs["trajectories.png"],
                    "Trajectories of μ and σ (raw iterates, log step axis); dashed: the target; dotted: "
                    "the step at which a fit diverged (the axes are framed on the fits that did not)."),
    )


def _se(se: float) -> str:
    """`` ± se``; nothing where the run was too short for batch means (fewer than 20 averaged steps)."""
    return f" ± {se:.2g}" if np.isfinite(se) else ""


def _fit_row(r, sd: float) -> list[str]:
    """One row of the fit table; a diverged fit has no final values, only the step it left at."""
    if r.diverged_at is not None:
        return [r.objective, r.estimator, f"diverged at step {r.diverged_at}", "—", fmt_at(r.target.mu, sd),
                f"{r.target.sigma:.5g}", "—", "—"]
    return [r.objective, r.estimator, fmt_at(r.mu, sd) + _se(r.mu_se), f"{r.sigma:.5g}" + _se(r.sigma_se),
            fmt_at(r.target.mu, sd), f"{r.target.sigma:.5g}", f"{100 * r.error(sd):.3g}%",
            "—" if r.steps_to_1pct is None else r.steps_to_1pct]


def render(results: Results) -> dict[str, bytes | str]:
    """All output files by name, rendered in memory."""
    pngs = {"variance_vs_sigma.png": html.png_bytes(variance_figure(results)),
            "stderr_vs_samples.png": html.png_bytes(stderr_figure(results)),
            "trajectories.png": html.png_bytes(trajectory_figure(results))}
    s = results.settings
    default = results.data.source.startswith("<default")
    data_arg = "" if default else f" --data {shlex.quote(results.data.source)}"
    if data_arg and results.data.column is not None:
        data_arg += f" --column {shlex.quote(results.data.column)}"
    reproduce = (f"gradest gaussian{data_arg}"
                 f" --seed {s.seed} --steps {s.steps} --samples-per-step {s.samples_per_step}"
                 + ("" if s.device == "cpu" else f" --device {s.device}"))
    page = html.page(
        "The reparameterization trick, worked on fitting N(μ, σ²)",
        _question(results),
        _short_answer(results),
        _derivation(),
        _checks(results),
        _variances(results, pngs),
        _fits(results, pngs),
        html.section("Conclusions (computed from the numbers above)",
                     "<ul>" + "".join(f"<li>{html.paragraph(c)}</li>" for c in results.conclusions)
                     + "</ul>"),
        html.section("Reproduce", html.code(reproduce),
                     html.paragraph(f"Computing took {results.seconds:.1f} s (from the data to the "
                                    "conclusions; the command's wall time adds Python's start-up, "
                                    "the imports, the plots and the writing of these files).")),
    )
    return {**pngs, "report.html": page}


def check_out_dir(out_dir: str | Path) -> Path:
    """Refuse, before any work, an ``out_dir`` that is a file, lies under a file, or is not writable."""
    out_dir = Path(out_dir)
    existing = out_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == out_dir else f"lies under {existing}, which is a file"
        raise GradestError(f"--out {out_dir} {where}; give a folder (new or existing) for the report")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise GradestError(f"--out {out_dir}: cannot write in {existing}; give a writable folder")
    return out_dir


def write_outputs(results: Results, out_dir: str | Path) -> list[Path]:
    """Render, then write every file atomically into ``out_dir``; returns the paths written."""
    out_dir = check_out_dir(out_dir)
    files = render(results)
    payload = results.to_dict()
    try:
        written = [write_atomic(out_dir / name, data) for name, data in files.items()]
        written.append(write_json(out_dir / "results.json", payload))
    except OSError as err:
        raise GradestError(f"could not write the report into {out_dir}: {err}") from None
    return written

