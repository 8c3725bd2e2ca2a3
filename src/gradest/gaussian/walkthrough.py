r"""The whole worked answer in one call: checks, variances, fits, conclusions, as one typed record.

    results = run(load_dataset(), Settings(seed=0))
    results.to_dict()     # the JSON of results.json

Each part draws from its own generator (seed + a fixed offset), so changing the fit settings never
changes the gradient-check numbers and the same seed always gives the same report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NamedTuple

from gradest.diagnostics import to_json_value
from gradest.gaussian import checks as ck
from gradest.gaussian.conclusions import conclusions
from gradest.gaussian.data import Dataset
from gradest.gaussian.fits import FitResult, FitSettings, fit
from gradest.gaussian.objectives import OBJECTIVES
from gradest.gaussian.settings import Settings

#: (label, done, total) -> None: called as the run progresses
Progress = Callable[[str, int, int], None]

_SEED_CHECKS, _SEED_CURVE, _SEED_SWEEP, _SEED_FITS = 0, 100, 200, 1000


class Results(NamedTuple):
    data: Dataset
    settings: Settings
    checks: list[tuple[str, ck.PointCheck]]
    curve: ck.StderrCurve
    sweep: ck.VarianceSweep
    fits: list[FitResult]
    conclusions: list[str]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON record of results.json (NaN/inf -> null)."""
        v = to_json_value
        checks = [pc for _, pc in self.checks]
        return {
            "data": {"n": self.data.n, "mean": v(self.data.mean), "var_mle": v(self.data.var_mle),
                     "source": self.data.source, "column": self.data.column},
            "settings": self.settings._asdict() | {
                "fit_estimators": list(self.settings.fit_estimators),
                "extra_fits": [list(pair) for pair in self.settings.extra_fits]},
            "gradient_check": [
                {"label": label, "mu": v(pc.mu), "sigma": v(pc.sigma), "samples": pc.samples,
                 "exact": {"mu": v(pc.exact.mu), "sigma": v(pc.exact.sigma)},
                 **{name: {p: {"mean": v(e.mean), "stderr": v(e.stderr), "z": v(e.z)}
                           for p, e in per.items()}
                    for name, per in pc.estimates.items()}}
                for label, pc in self.checks
            ],
            "variance": [
                {"mu": v(pc.mu), "sigma": v(pc.sigma), "samples": pc.samples,
                 **{name: {p: {"exact": v(e.exact_variance), "empirical": v(e.variance),
                               "empirical_se": v(e.variance_se)}
                           for p, e in per.items()}
                    for name, per in pc.estimates.items()}}
                for pc in checks
            ],
            "stderr_curve": {"mu": v(self.curve.mu), "sigma": v(self.curve.sigma),
                             "sizes": self.curve.sizes, "measured": self.curve.measured,
                             "exact": self.curve.exact},
            "fits": [
                {"objective": r.objective, "estimator": r.estimator, "mu": v(r.mu), "sigma": v(r.sigma),
                 "mu_se": v(r.mu_se), "sigma_se": v(r.sigma_se),
                 "steps_to_1pct": r.steps_to_1pct,
                 "target": {"mu": v(r.target.mu), "sigma": v(r.target.sigma)},
                 "error_in_sd": v(r.error(self.data.sd)), "diverged_at": r.diverged_at,
                 "family_optimum": None if r.family_optimum is None else {
                     "mu": v(r.family_optimum.mu), "sigma": v(r.family_optimum.sigma)},
                 "seconds": v(r.seconds)}
                for r in self.fits
            ],
            "conclusions": self.conclusions,
            "seconds": v(self.seconds),
        }


def run(data: Dataset, settings: Settings | None = None, progress: Progress | None = None) -> Results:
    """Gradient check, variance check and curves, the SGD fits, and the conclusions drawn from them."""
    settings = (settings or Settings()).validate()
    start = time.perf_counter()
    report = progress or (lambda label, done, total: None)
    device = settings.device
    points = ck.check_points(data)
    checks = []
    for k, (label, mu, sigma) in enumerate(points):
        report("gradient and variance checks", k, len(points) + 2)
        seed = settings.seed + _SEED_CHECKS + k
        checks.append((label, ck.check_point(data, mu, sigma, settings.check_samples, seed, device)))
    report("gradient and variance checks", len(points), len(points) + 2)
    at = (data.mean + data.sd, data.sd)
    curve = ck.stderr_curve(data, *at, settings.check_samples, settings.seed + _SEED_CURVE, device=device)
    report("gradient and variance checks", len(points) + 1, len(points) + 2)
    sweep = ck.variance_sweep(data, at[0], settings.sweep_samples, settings.seed + _SEED_SWEEP, device)
    report("gradient and variance checks", len(points) + 2, len(points) + 2)

    fit_settings = FitSettings(settings.steps, settings.samples_per_step, settings.eta,
                               settings.seed + _SEED_FITS)
    plan = [(name, estimator) for name in OBJECTIVES
            for estimator in (settings.fit_estimators if name != "nll" else ("exact",))]
    plan += [pair for pair in settings.extra_fits if pair not in plan]
    objectives = {name: OBJECTIVES[name](data, device) for name in dict.fromkeys(name for name, _ in plan)}
    fits = []
    for name, estimator in plan:
        label = f"fit {name} ({estimator})"
        fits.append(fit(objectives[name], estimator, fit_settings, data.sd,
                        on_step=lambda done, label=label: report(label, done, settings.steps)))
    partial = Results(data, settings, checks, curve, sweep, fits, [], 0.0)
    return partial._replace(conclusions=conclusions(partial), seconds=time.perf_counter() - start)
