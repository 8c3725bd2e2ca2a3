"""HTML reports of the laboratory (sweep, BLR): self-contained pages built with :mod:`gradest.report`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from gradest import report as rp
from gradest.lab.findings import Finding


def findings_table(findings: Sequence[Finding]) -> str:
    return rp.table(("claim of Mohamed et al. (2020)", "ours", "evidence"),
                    [(f.claim, f.verdict, f.evidence) for f in findings])


def sweep_page(config, rows: Sequence, figure_png: bytes, findings: Sequence[Finding],
               seconds: float | None) -> str:
    """The sweep's report: setting, figure, findings, and every row against its exact values."""
    zs = [abs(r.variance_z) for r in rows if r.variance_z is not None]
    zg = [abs(r.z) for r in rows if math.isfinite(r.z)]
    checks = (
        f"{len(rows)} rows. Gradient means against the exact gradient: max |z| = "
        f"{max(zg, default=float('nan')):.2f} standard errors. Measured single-sample variances "
        f"against the numerical integrals: max |z| = {max(zs, default=float('nan')):.2f} standard "
        "errors of the variance estimate, √((m₄ − s⁴)/N)."
    )
    timing = "" if seconds is None else rp.paragraph(f"This run took {seconds:.1f} s.")
    table_rows = [
        (r.cost, f"{r.k:g}", r.param, r.estimator, r.exact_grad, r.mean, r.z, r.variance_exact,
         r.variance, r.variance_ratio, r.variance_z, 1e6 * r.seconds_per_sample)
        for r in rows
    ]
    return rp.page(
        "Variance sweep on Gaussian costs",
        rp.section(
            "Setting",
            rp.math(f"x ~ N(μ = {config.loc:g}, σ² = {config.scale:g}²),  costs "
                    f"{', '.join(config.costs)},  k ∈ {{{', '.join(f'{k:g}' for k in config.ks)}}}",
                    _setting_tex(config)),
            rp.paragraph(f"Estimators: {', '.join(config.estimators)}; N = {config.samples} samples "
                         f"per cell, seed {config.seed}"
                         + ("" if config.device == "cpu" else f", on {config.device}") + "."),
            rp.paragraph("Variance means the variance of ONE single-sample estimate ĝ of ∂/∂μ or "
                         "∂/∂σ of E f(x). Exact values by numerical integration over the "
                         "estimators' base distributions (Normal, Rayleigh, double-sided Maxwell)."),
            timing,
        ),
        rp.section("Figure", rp.figure(figure_png, "Rows ∂/∂μ and ∂/∂σ, columns the costs; log scale. "
                                              "A log axis has no 0: an exact variance of exactly 0 (an "
                                              "exact control variate, e.g. the second-order delta method "
                                              "on (x−k)²) is drawn as ▼ on the axis floor, labelled "
                                              "'exactly 0'.")),
        rp.section("Findings of the survey, checked", findings_table(findings)),
        rp.section("Checks", rp.paragraph(checks)),
        rp.section("All rows", rp.table(
            ("cost", "k", "param", "estimator", "exact grad", "mean", "z", "variance exact",
             "variance", "ratio", "z (variance)", "µs/sample"), table_rows)),
    )


def blr_page(config: Mapping, summary: Mapping[str, Mapping[str, float]], figure_png: bytes,
             findings: Sequence[Finding], seconds: float) -> str:
    """The BLR report: configuration, curves, final metrics per estimator, findings."""
    rows = [(e, s["elbo"], s["accuracy"], s["heldout_ll"], s["heldout_accuracy"], s["var_loc"],
             s["var_logscale"], s["seconds"]) for e, s in summary.items()]
    cfg = ", ".join(f"{k} = {v}" for k, v in config.items())
    return rp.page(
        "Bayesian logistic regression by variational inference",
        rp.section(
            "Setting",
            rp.math("ELBO(μ, σ) = E_q[Σ_i log p(y_i | x_i, w)] − KL(q ‖ N(0, I)),  "
                    "q(w) = N(μ, diag σ²),  σ = exp(log σ)",
                    r"\mathrm{ELBO}(\mu, \sigma) = \mathbb{E}_{q}\Big[\textstyle\sum_i"
                    r" \log p(y_i \mid x_i, w)\Big]"
                    r" - \mathrm{KL}\big(q \,\|\, \mathcal N(0, I)\big), \qquad"
                    r" q(w) = \mathcal N(\mu, \operatorname{diag}\sigma^2), \quad \sigma = \exp(\log\sigma)"),
            rp.paragraph(cfg),
            rp.paragraph(f"Total time {seconds:.1f} s."),
        ),
        rp.section("Training curves", rp.figure(figure_png, "Gradient variances: variance of ONE "
                                                "single-sample estimate, mean and max over dimensions.")),
        rp.section("Results per estimator", rp.table(
            ("estimator", "final ELBO", "train accuracy", "held-out log-lik / point",
             "held-out accuracy", "grad var μ (mean over log)", "grad var log σ (mean over log)",
             "seconds"), rows)),
        rp.section("Findings of the survey, checked", findings_table(findings)),
    )


def _setting_tex(config) -> str:
    """The sweep's distribution and costs in TeX: x ~ N(μ, σ²), f ∈ {…}, k ∈ {…}."""
    from gradest.costs import COST_FORMS

    def text(name: str) -> str:  # a user's cost name, as TeX text
        return r"\text{" + "".join(rf"\{ch}" if ch in "_{}#%&$" else ch for ch in name
                                   if ch not in "\\^~") + "}"

    costs = ",\\ ".join(COST_FORMS[c].tex if c in COST_FORMS and COST_FORMS[c].tex else text(c)
                         for c in config.costs)
    ks = ",\\ ".join(f"{k:g}" for k in config.ks)
    return (rf"x \sim \mathcal N\big(\mu = {config.loc:g},\ \sigma^2 = {config.scale:g}^2\big), \qquad"
            rf" f(x) \in \{{{costs}\}}, \qquad k \in \{{{ks}\}}")
