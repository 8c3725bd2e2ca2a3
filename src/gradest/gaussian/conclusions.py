r"""Conclusions written from the measured numbers (never canned): every figure in a sentence is computed.

Each function takes the walkthrough's results and returns sentences; ``conclusions`` joins them in
the order a reader asks: are the two gradients the same, why σ collapses, which estimator is noisier
(how much, where, why), and what the noise does to SGD.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from gradest.gaussian import closed_form as cf
from gradest.gaussian.objectives import SIGMA_FLOOR, SQUARED_STEP_SCALE

if TYPE_CHECKING:
    from gradest.gaussian.results import Results

#: |z| beyond this is reported as a disagreement (two-sided false-alarm rate 0.27% per number)
Z_ALARM = 3.0


def _g(x: float) -> str:
    return f"{x:.4g}"


def fmt_at(x: float, unit: float) -> str:
    """A location to ~1e-4 of the data's spread ``unit``: 1e9 ± 1e-3 data need more than 4 digits."""
    # beyond ~13 orders above the spread float64 holds no digits worth printing (a diverged fit)
    if not (math.isfinite(x) and unit > 0.0) or x == 0.0 or abs(x) > 1e13 * unit:
        return _g(x)
    digits = min(17, max(4, math.ceil(math.log10(abs(x) / unit)) + 4))
    return f"{x:.{digits}g}"


def _ratio(x: float) -> str:
    return f"{x:.3g}×"


def gradient_agreement(results: Results) -> list[str]:
    out = []
    for name in ("pathwise", "score"):
        zs = [(abs(pc.estimates[name][p].z), label, p) for label, pc in results.checks for p in cf.PARAMS]
        worst, label, param = max(zs)
        verdict = ("agree with the exact gradient" if worst <= Z_ALARM
                   else f"DISAGREE with the exact gradient (|z| > {Z_ALARM:g})")
        out.append(f"The {name} estimates of ∂E f/∂μ and ∂E f/∂σ {verdict} at all {len(results.checks)} "
                   f"points: the largest |z| is {worst:.2f} (∂/∂{'μ' if param == 'mu' else 'σ'}, {label}).")
    label, pc = results.checks[0]
    pw, sc = pc.estimates["pathwise"]["sigma"], pc.estimates["score"]["sigma"]
    at = f"μ = {fmt_at(pc.mu, results.data.sd)}, σ = {_g(pc.sigma)}"
    out.append(f"For σ in particular, {label} ({at}) the exact gradient "
               f"2nσ = {_g(pc.exact.sigma)}; the reparameterized estimate E_ε[2Σ_i(μ + σε − x_i)ε] gave "
               f"{_g(pw.mean)} ± {_g(pw.stderr)} and the score-function one {_g(sc.mean)} ± {_g(sc.stderr)}: "
               "differentiating the expectation and differentiating inside it give the same number.")
    return out


def variance_ratios(results: Results) -> list[str]:
    out = []
    for param, symbol in (("mu", "μ"), ("sigma", "σ")):
        rows = []
        for label, pc in results.checks:
            pw = pc.estimates["pathwise"][param].exact_variance
            rows.append((pc.estimates["score"][param].exact_variance / pw,
                         pc.estimates["score-baseline"][param].exact_variance / pw, label, pc))
        hi, lo = max(rows, key=lambda r: r[0]), min(rows, key=lambda r: r[0])
        hib = max(rows, key=lambda r: r[1])
        out.append(
            f"Single-sample variance for {symbol}: the score-function estimator's was "
            f"{_ratio(hi[0])} the pathwise one {hi[2]} "
            f"(μ = {fmt_at(hi[3].mu, results.data.sd)}, σ = {_g(hi[3].sigma)}) "
            f"and {_ratio(lo[0])} {lo[2]} (σ = {_g(lo[3].sigma)}); with its best constant baseline it "
            f"was still {_ratio(min(r[1] for r in rows))} to {_ratio(hib[1])} (largest {hib[2]}).")
    below = [(label, pc) for label, pc in results.checks
             if any(pc.estimates[n][p].exact_variance < pc.estimates["pathwise"][p].exact_variance
                    for n in ("score", "score-baseline") for p in cf.PARAMS)]
    if below:
        out.append("The pathwise estimator was not the lower-variance one everywhere: "
                   + "; ".join(label for label, _ in below) + ".")
    far = [(label, pc) for label, pc in results.checks if label == "far from the data"]
    if far:
        label, pc = far[0]
        d = pc.mu - results.data.mean
        out.append(
            f"Why: the score-function estimate multiplies f(y) − b by the score, and f grows like n d² "
            f"away from the data (here d = μ − x̄ = {_g(d)}), while the pathwise estimate of ∂/∂μ is "
            f"2n(d + σε), whose variance 4n²σ² = {_g(pc.estimates['pathwise']['mu'].exact_variance)} does "
            "not depend on d at all. Without a baseline the score-function variance also grows like "
            "(n(d² + v))²/σ², which is why it explodes at small σ.")
    symbol = {"mu": "μ", "sigma": "σ"}
    worst = max(
        (abs(e.variance - e.exact_variance) / e.variance_se, label, name, p)
        for label, pc in results.checks for name, per in pc.estimates.items() for p, e in per.items()
        if e.variance_se > 0
    )
    out.append(f"The measured single-sample variances match the closed forms: the largest deviation is "
               f"{worst[0]:.2f} standard errors of the variance estimate ({worst[2]}, ∂/∂{symbol[worst[3]]}, "
               f"{worst[1]}).")
    return out


def samples_needed(results: Results) -> list[str]:
    curve = results.curve
    pw = curve.exact["pathwise"]["mu"][0] ** 2
    sc = curve.exact["score"]["mu"][0] ** 2
    sb = curve.exact["score-baseline"]["mu"][0] ** 2
    return [f"At μ = {fmt_at(curve.mu, results.data.sd)}, σ = {_g(curve.sigma)} the standard error falls "
            f"like 1/√N for every estimator, so matching the pathwise standard error for μ takes "
            f"{sc / pw:.3g}× as many score-function samples ({sb / pw:.3g}× with the best constant "
            "baseline)."]


def _fit(results: Results, objective: str, estimator: str):
    for r in results.fits:
        if r.objective == objective and r.estimator == estimator:
            return r
    return None


#: fewest SGD iterates (steps + 1) for the scatter of the latter half to mean anything
MIN_JITTER_STEPS = 40


def jitter(fit) -> float:
    """Standard deviation of the raw σ iterates over the latter half of a fit: the SGD noise floor."""
    tail = fit.sigma_path[fit.sigma_path.shape[0] // 2 :]
    return float(np.std(tail))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _steps(r, steps: int) -> str:
    if r.diverged_at is not None:
        return f"never (diverged at step {r.diverged_at})"
    return str(r.steps_to_1pct) if r.steps_to_1pct is not None else f"not within {_count(steps, 'step')}"


def fits(results: Results) -> list[str]:
    out = []
    sd, steps = results.data.sd, results.settings.steps
    extra = set(results.settings.extra_fits)
    primary = results.settings.fit_estimators[0] if results.settings.fit_estimators else None
    sq = _fit(results, "squared", primary) if primary else None
    if sq is not None:
        sigma0 = sq.sigma_path[0]
        path = sq.sigma_path[np.isfinite(sq.sigma_path)]
        # the collapse phase: σ well above the projection floor
        shrinking = path[:-1][path[1:] > 100 * SIGMA_FLOOR * sd]
        ratios = path[1 : shrinking.shape[0] + 1] / shrinking
        factor = float(np.exp(np.mean(np.log(ratios)))) if ratios.size else math.nan
        predicted = 1.0 - 2.0 * results.settings.eta * SQUARED_STEP_SCALE
        ending = ("down to the floor of the projection" if path[-1] <= 2.0 * SIGMA_FLOOR * sd
                  else f"still falling when the run ended after {_count(steps, 'step')}")
        out.append(
            f"squared: σ fell from {_g(sigma0)} to {_g(sq.sigma)} while μ went to {fmt_at(sq.mu, sd)} "
            f"(x̄ = {fmt_at(results.data.mean, sd)}). The loss cannot recover σ² = "
            f"{_g(results.data.var_mle)}: its σ-gradient 2nσ is positive for every σ > 0, so each SGD step "
            f"multiplies σ by about "
            f"1 − 2η·(step scale) = {predicted:.3g}; the measured geometric mean factor while collapsing "
            f"was {factor:.3g} per step, {ending}. A point mass at x̄ "
            "minimises Σ_i(y − x_i)².")
        others = [r for r in results.fits
                  if r.objective == "squared" and ("squared", r.estimator) not in extra]
        out.append("squared, steps until μ and σ stay within 1% of √v of (x̄, 0): "
                   + ", ".join(f"{r.estimator} {_steps(r, steps)}" for r in others) + ".")
    extra = set(results.settings.extra_fits)
    for name in ("crps", "elbo", "nll"):
        for r in results.fits:
            if r.objective != name or (r.objective, r.estimator) in extra:
                continue
            if r.diverged_at is not None:
                out.append(f"{name} with {r.estimator}: diverged at step {r.diverged_at} (the gradient "
                           "noise threw the iterates out of range).")
                continue
            reached = (f"reached 1% of √v in {r.steps_to_1pct} steps" if r.steps_to_1pct is not None
                       else f"did not stay within 1% of √v in {steps} steps")
            sentence = (f"{name} with {r.estimator}: μ = {fmt_at(r.mu, sd)}, σ = {_g(r.sigma)} against the "
                        f"target ({fmt_at(r.target.mu, sd)}, {_g(r.target.sigma)}); final error "
                        f"{100 * r.error(sd):.2g}% of √v; {reached}")
            best = r.family_optimum
            if best is not None:
                bias = max(abs(best.mu - r.target.mu), abs(best.sigma - r.target.sigma)) / sd
                sgd = max(abs(r.mu - best.mu), abs(r.sigma - best.sigma)) / sd
                sentence += (f". The exact optimum of this loss within its family is ({fmt_at(best.mu, sd)}, "
                             f"{_g(best.sigma)}): the family's own bias is {100 * bias:.2g}% of √v and the "
                             f"SGD answer is {100 * sgd:.2g}% of √v from that optimum")
            if name == "nll":
                x = results.data.values
                # mean(x²) − x̄² evaluated as mean((x − x̄)²): the same number without the cancellation
                moment = float(((x - x.mean()) ** 2).mean())
                sentence += (f". Its σ² = {_g(r.sigma**2)} is the estimate the question expected, "
                             f"mean(x²) − x̄² = {_g(moment)}")
            out.append(sentence + ".")
    for name, estimator in results.settings.extra_fits:
        extra, reference = _fit(results, name, estimator), _fit(results, name, primary) if primary else None
        if extra is None:
            continue
        peak = float(np.nanmax(np.abs(extra.mu_path - extra.target.mu))) / sd
        if extra.diverged_at is not None:
            outcome = f"diverged at step {extra.diverged_at}"
        else:
            outcome = (f"ended {extra.error(sd):.3g} √v from the target, with |μ − μ*| peaking at "
                       f"{peak:.3g} √v")
        versus = ""
        if reference is not None and reference.steps_to_1pct is not None:
            versus = (f", where the {reference.estimator} fit settled within 1% in "
                      f"{reference.steps_to_1pct} steps")
        verdict = ("SGD failed" if extra.diverged_at is not None or extra.error(sd) > 1.0
                   else "SGD still converged")
        out.append(f"{name} with {estimator} (no baseline) at the same samples per step and step size "
                   f"{outcome}{versus}: {verdict} — without a baseline its single-sample variance carries "
                   "the (n(d² + v))²/σ² term, which grows as σ shrinks.")
    ests = results.settings.fit_estimators
    if len(ests) >= 2:
        for name in ("crps", "elbo"):
            a, b = _fit(results, name, ests[0]), _fit(results, name, ests[1])
            if a is None or b is None or a.diverged_at is not None or b.diverged_at is not None:
                continue
            ja, jb = jitter(a) / sd, jitter(b) / sd
            # a scatter needs iterates to scatter: a handful of steps (or none moving) gives no ratio
            if a.sigma_path.shape[0] < MIN_JITTER_STEPS or not ja > 0.0:
                continue
            sentence = (f"SGD on {name} at {results.settings.samples_per_step} samples per step and equal "
                        f"step sizes: over the latter half of the run the raw σ iterates scattered with "
                        f"standard deviation {100 * ja:.2g}% of √v ({ests[0]}) against {100 * jb:.2g}% "
                        f"({ests[1]}), {jb / ja:.3g}× as much")
            ea, eb = a.error(sd), b.error(sd)
            # below 0.1% of √v both fits sit on the target and a ratio would only compare rounding
            if max(ea, eb) > 1e-3 and min(ea, eb) > 0:
                sentence += f"; the averaged {ests[1]} answer ended {eb / ea:.3g}× as far from the target"
            out.append(sentence + ".")
    return out


def conclusions(results: Results) -> list[str]:
    """All conclusions, in reading order."""
    return gradient_agreement(results) + variance_ratios(results) + samples_needed(results) + fits(results)
