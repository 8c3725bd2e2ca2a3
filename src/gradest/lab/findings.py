"""The survey's qualitative findings, each checked against our own numbers.

A finding is a claim of Mohamed et al. (2020) with a verdict computed from measured data:
``agrees``, ``disagrees`` or ``not tested`` (when the estimators or settings it needs are missing),
and the numbers that decided it. Nothing here is canned: change the data and the verdicts follow.

A claim is judged only on data that can support it: "at large k" needs a k far from the Normal's
mean on the scale of its spread, |k − μ| ≥ 3σ, for (x − k)²; "at high frequency" a cos(kx) with
|k|σ ≥ 3 (several periods within the spread); "for slowly varying costs" a k with |k|σ ≤ 1; a claim
about how a variance changes with k two different |k|; a share of cells at least one cell with both
estimators. Otherwise the verdict is ``not tested``, and the evidence says what is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

AGREES, DISAGREES, UNTESTED = "agrees", "disagrees", "not tested"
#: |k − μ| / σ from which (x − k)² is "at large k", and |k| σ from which cos(kx) is "high frequency"
LARGE = 3.0
#: |k| σ up to which a cost counts as slowly varying over the Normal's spread
SMALL = 1.0


class Finding(NamedTuple):
    claim: str
    verdict: str
    evidence: str


def _verdict(ok: bool) -> str:
    return AGREES if ok else DISAGREES


# ---------------------------------------------------------------------------------------- sweep


def sweep_findings(rows: Sequence) -> list[Finding]:
    """Claims about the Gaussian sweep (Fig. 2 of the survey), from measured single-sample variances."""
    var = {(r.cost, r.param, r.estimator, r.k): r.variance for r in rows}
    ests = {r.estimator for r in rows}
    costs = {r.cost for r in rows}
    # by magnitude: cos(−kx) = cos(kx), and a negative k is as sharp or as far as |k|
    ks = sorted({r.k for r in rows}, key=abs)
    out: list[Finding] = []
    # the Normal's parameters (one configuration's rows; the widest spread if several were mixed)
    loc = rows[0].loc if rows else 0.0
    scale = max((r.scale for r in rows), default=1.0)
    far = [k for k in ks if abs(k - loc) >= LARGE * scale]  # (x − k)² at large k
    high = [k for k in ks if abs(k) * scale >= LARGE]  # cos(kx) at high frequency
    slow = [k for k in ks if abs(k) * scale <= SMALL]  # slowly varying

    def have(*names):
        return all(n in ests for n in names)

    claim = "Without a control variate the score function has the highest variance for (x−k)² at large k."
    # the survey's estimators draw i.i.d. samples: sampler variants (+antithetic, +qmc) are another
    # comparison (antithetic pairs double the score's variance for σ, whose weight ε² − 1 is even)
    iid = {e for e in ests if "+" not in e}
    if not (have("score") and "square" in costs and len(iid) > 1):
        out.append(Finding(claim, UNTESTED, "needs score, another estimator and the square cost"))
    elif not far:
        out.append(Finding(claim, UNTESTED, f"needs a large k, |k − μ| ≥ {LARGE:g}σ = {LARGE * scale:g} "
                           f"from μ = {loc:g}; this sweep's k: {', '.join(f'{k:g}' for k in ks)}"))
    else:
        k = max(far, key=lambda k: abs(k - loc))
        measured = {p: [e for e in iid if ("square", p, e, k) in var] for p in ("loc", "scale")}
        if not all(len(m) > 1 and "score" in m for m in measured.values()):
            out.append(Finding(claim, UNTESTED, f"k={k:g}: needs the square cost's variance of score and "
                               "another estimator for μ and σ at that k"))
        else:
            worst = {p: max(measured[p], key=lambda e, p=p: var["square", p, e, k]) for p in measured}
            ok = all(w == "score" for w in worst.values())
            out.append(Finding(claim, _verdict(ok),
                               f"k={k:g}: highest variance for μ: {worst['loc']}, for σ: {worst['scale']}"))

    claim = "The pathwise variance for μ under (x−k)² does not depend on k (it is 4σ²)."
    vals = np.array([var["square", "loc", "pathwise", k] for k in ks
                     if ("square", "loc", "pathwise", k) in var])
    if len(vals) > 1:
        spread = float(vals.max() / vals.min() - 1.0)
        out.append(Finding(claim, _verdict(spread < 0.05),
                           f"measured {vals.min():.4g} … {vals.max():.4g} over k "
                           f"(relative spread {spread:.2%})"))
    else:
        out.append(Finding(claim, UNTESTED, "needs pathwise, the square cost and two values of k"))

    claim = ("For cos(kx) the pathwise variance grows with k and at high frequency exceeds the "
             "score function's and the measure-valued one's.")
    others = [e for e in ("score", "mvd") if e in ests]
    if not (have("pathwise") and others and "cos" in costs and len({abs(k) for k in ks}) > 1):
        out.append(Finding(claim, UNTESTED, "needs pathwise, score or mvd, the cos cost and two values of "
                           "|k|"))
    elif not high:
        out.append(Finding(claim, UNTESTED, f"needs a high frequency, |k|σ ≥ {LARGE:g} (|k| ≥ "
                           f"{LARGE / scale:g}); this sweep's k: {', '.join(f'{k:g}' for k in ks)}"))
    else:
        k_hi, k_lo = max(high, key=abs), min(ks, key=abs)
        pw = {(p, k): var["cos", p, "pathwise", k] for p in ("loc", "scale") for k in (k_lo, k_hi)}
        grows = all(pw[p, k_hi] > pw[p, k_lo] for p in ("loc", "scale"))
        above = all(pw[p, k_hi] > var["cos", p, e, k_hi] for p in ("loc", "scale") for e in others)
        detail = ", ".join(f"{e} {var['cos', 'loc', e, k_hi]:.3g}" for e in ["pathwise", *others])
        out.append(Finding(claim, _verdict(grows and above),
                           f"k={k_hi:g}, ∂/∂μ: {detail}; pathwise grows from k={k_lo:g}: {grows}"))

    out.append(_fraction_claim(
        "Coupling (common random numbers) lowers the variance of the measure-valued estimator.",
        var, rows, "mvd", "mvd-uncoupled", have("mvd", "mvd-uncoupled"), 0.8))
    out.append(_fraction_claim(
        "The measure-valued estimator has lower variance than the score function.",
        var, rows, "mvd", "score", have("mvd", "score"), 0.8))
    # a control variate of the survey's kind first (delta method, then the optimal baseline); a fixed
    # baseline such as score-const=B is no control variate the claim is about
    cv = next((e for kind in ("score-delta", "score-optb", "score-loo") for e in sorted(iid)
               if e.split("=")[0] == kind), None)
    out.append(_fraction_claim(
        "A control variate lowers the score function's variance.",
        var, rows, cv or "score-…", "score", cv is not None and have("score"), 0.8))

    claim = "For slowly varying costs (the smallest k) the pathwise estimator beats the score function."
    if not have("pathwise", "score"):
        out.append(Finding(claim, UNTESTED, "needs pathwise and score"))
    elif not slow:
        out.append(Finding(claim, UNTESTED, f"needs a slowly varying cost, |k|σ ≤ {SMALL:g} (|k| ≤ "
                           f"{SMALL / scale:g}); this sweep's k: {', '.join(f'{k:g}' for k in ks)}"))
    else:
        k = min(slow, key=abs)
        cells = [(c, p) for c in sorted(costs) for p in ("loc", "scale")
                 if (c, p, "pathwise", k) in var and (c, p, "score", k) in var]
        wins = [var[c, p, "pathwise", k] < var[c, p, "score", k] for c, p in cells]
        if not cells:
            out.append(Finding(claim, UNTESTED, f"k={k:g}: no cell holds both pathwise and score"))
        else:
            out.append(Finding(claim, _verdict(all(wins)),
                               f"k={k:g}: pathwise lower in {sum(wins)} of {len(wins)} (cost, parameter) "
                               "cells"))
    return out


def _fraction_claim(claim, var, rows, low, high, available, threshold) -> Finding:
    if not available:
        return Finding(claim, UNTESTED, f"needs {low} and {high}")
    se = {(r.cost, r.param, r.estimator, r.k): r.variance_stderr for r in rows}
    cells = sorted({(r.cost, r.param, r.k) for r in rows})
    wins = []
    for c, p, k in cells:
        if (c, p, low, k) not in var or (c, p, high, k) not in var:
            continue
        # Ties (equal exact variances) must not count against the claim by chance: allow 5
        # standard errors of the difference of the two measured variances.
        noise = np.hypot(np.nan_to_num(se[c, p, low, k]), np.nan_to_num(se[c, p, high, k]))
        wins.append(var[c, p, low, k] <= var[c, p, high, k] + 5 * noise)
    if not wins:  # no cell holds both: nothing to judge by (0 of 0 is no disagreement)
        return Finding(claim, UNTESTED, f"needs {low} and {high} measured in the same cell")
    share = sum(wins) / len(wins)
    return Finding(claim, _verdict(share >= threshold),
                   f"{low} ≤ {high} (within 5 standard errors) in {sum(wins)} of {len(wins)} cells "
                   f"({share:.0%}; the claim counts as reproduced from {threshold:.0%})")


# ------------------------------------------------------------------------------------------ BLR


def blr_findings(summary: Mapping[str, Mapping[str, float]]) -> list[Finding]:
    """Claims about Bayesian logistic regression (Figs. 9–10 of the survey).

    Args:
        summary: estimator -> {``var_loc``, ``var_logscale`` (averaged over the logged steps),
            ``elbo`` (final), ``heldout_ll``}.
    """
    ests = set(summary)
    out: list[Finding] = []

    def v(e, key):
        return summary[e][key]

    claim = ("The pathwise estimator has the lowest gradient variance of the estimators without a "
             "control variate.")
    plain = [e for e in ("pathwise", "score", "mvd") if e in ests]
    if "pathwise" in ests and len(plain) > 1:
        best = {k: min(plain, key=lambda e, k=k: v(e, k)) for k in ("var_loc", "var_logscale")}
        out.append(Finding(claim, _verdict(all(b == "pathwise" for b in best.values())),
                           f"lowest for μ: {best['var_loc']}, for log σ: {best['var_logscale']}; "
                           + ", ".join(f"{e} {v(e, 'var_loc'):.3g}" for e in plain)))
    else:
        out.append(Finding(claim, UNTESTED, "needs pathwise and score or mvd"))

    claim = "The score function without a control variate has the highest variance."
    # among the survey's kinds of estimator: i.i.d. draws, and no hand-set baseline (score-const=B,
    # score-ema), which can make the score function worse still
    rivals = [e for e in ests if "+" not in e and e.split("=")[0] not in ("score-const", "score-ema")]
    if "score" in ests and len(rivals) > 1:
        worst = {k: max(rivals, key=lambda e, k=k: v(e, k)) for k in ("var_loc", "var_logscale")}
        out.append(Finding(claim, _verdict(all(w == "score" for w in worst.values())),
                           f"highest for μ: {worst['var_loc']}, for log σ: {worst['var_logscale']}"))
    else:
        out.append(Finding(claim, UNTESTED, "needs score and another estimator"))

    claim = "The measure-valued estimator has lower variance than the score function."
    if "mvd" in ests and "score" in ests:
        ratios = {k: v("score", k) / max(v("mvd", k), 1e-300) for k in ("var_loc", "var_logscale")}
        out.append(Finding(claim, _verdict(all(r > 1 for r in ratios.values())),
                           f"variance ratio score/mvd: μ {ratios['var_loc']:.3g}×, "
                           f"log σ {ratios['var_logscale']:.3g}×"))
    else:
        out.append(Finding(claim, UNTESTED, "needs mvd and score"))

    claim = "A delta-method control variate lowers the variance of the score function substantially."
    out.append(_reduction(claim, summary, "score", "score-delta", 5.0))
    claim = "A delta-method control variate lowers the variance of the measure-valued estimator."
    out.append(_reduction(claim, summary, "mvd", "mvd-delta", 1.0))

    claim = ("With a control variate, the score function and measure-valued estimators reach an ELBO "
             "close to the pathwise one.")
    cvs = [e for e in ests if e.startswith(("score-delta", "mvd-delta"))]
    if "pathwise" in ests and cvs:
        gaps = {e: v("pathwise", "elbo") - v(e, "elbo") for e in cvs}
        scale = abs(v("pathwise", "elbo")) * 0.05
        out.append(Finding(claim, _verdict(all(g <= scale for g in gaps.values())),
                           "final ELBO gap to pathwise: "
                           + ", ".join(f"{e} {g:.3g}" for e, g in sorted(gaps.items()))
                           + f" (close = within 5% of |ELBO|, {scale:.3g})"))
    else:
        out.append(Finding(claim, UNTESTED, "needs pathwise and score-delta or mvd-delta"))
    claim = "All estimators reach a similar held-out log-likelihood once trained."
    if len(ests) > 1:
        lls = {e: v(e, "heldout_ll") for e in ests}
        spread = max(lls.values()) - min(lls.values())
        out.append(Finding(claim, _verdict(spread <= 0.05),
                           f"held-out log-likelihood per point from {min(lls.values()):.4f} to "
                           f"{max(lls.values()):.4f} (similar = within 0.05 nats)"))
    else:
        out.append(Finding(claim, UNTESTED, "needs two estimators"))
    return out


def _reduction(claim, summary, base, name, factor) -> Finding:
    with_cv = next((e for e in summary if e.split("=")[0] == name), None)
    if base not in summary or with_cv is None:
        return Finding(claim, UNTESTED, f"needs {base} and {name}")
    ratios = {k: summary[base][k] / max(summary[with_cv][k], 1e-300) for k in ("var_loc", "var_logscale")}
    ok = all(r > factor for r in ratios.values())
    return Finding(claim, _verdict(ok),
                   f"variance ratio {base}/{with_cv}: μ {ratios['var_loc']:.3g}×, "
                   f"log σ {ratios['var_logscale']:.3g}× (claim: > {factor:g}×)")
