"""The record of one walkthrough: data, settings, checks, variance curves, fits and conclusions.

Its own room, below the walkthrough that fills it and the conclusions and report that read it.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from gradest.diagnostics import to_json_value
from gradest.gaussian import checks as ck
from gradest.gaussian.data import Dataset
from gradest.gaussian.fits import FitResult
from gradest.gaussian.settings import Settings


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
