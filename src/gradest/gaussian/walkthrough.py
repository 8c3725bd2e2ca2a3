r"""The whole worked answer in one call: checks, variances, fits, conclusions, as one typed record.

    results = run(load_dataset(), Settings(seed=0))
    results.to_dict()     # the JSON of results.json

Each part draws from its own generator (seed + a fixed offset), so changing the fit settings never
changes the gradient-check numbers and the same seed always gives the same report.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from gradest.gaussian import checks as ck
from gradest.gaussian.conclusions import conclusions
from gradest.gaussian.data import Dataset
from gradest.gaussian.fits import FitSettings, fit
from gradest.gaussian.objectives import OBJECTIVES
from gradest.gaussian.results import Results
from gradest.gaussian.settings import Settings

#: (label, done, total) -> None: called as the run progresses
Progress = Callable[[str, int, int], None]

_SEED_CHECKS, _SEED_CURVE, _SEED_SWEEP, _SEED_FITS = 0, 100, 200, 1000


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
