"""The ELBO's estimator state as plain data (tensors, numbers, dicts: ``torch.load(...,
weights_only=True)`` reads it): a moving-average baseline, REBAR/RELAX's control and its optimizer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gradest.errors import GradestError
from gradest.estimators.baselines import MovingAverage
from gradest.estimators.rebar import Rebar
from gradest.pyro.sites import Site


def estimator_state(site: Site) -> dict[str, Any]:
    est = site.estimator
    out: dict[str, Any] = {"spec": site.spec, "steps": int(getattr(est, "steps", 0))}
    baseline = getattr(est, "baseline", None)
    if isinstance(baseline, MovingAverage):
        out["average"] = {"raw": baseline._raw, "count": baseline._count}
    if isinstance(est, Rebar):
        out.update(est.control_state())
    return out


def load_estimator(site: Site, state: Mapping[str, Any]) -> None:
    if state.get("spec") != site.spec:
        raise GradestError(
            f"the saved state of guide site {site.name!r} is for {state.get('spec')!r}, and the "
            f"ELBO runs {site.spec!r} there; load it into an ELBO with the same estimators"
        )
    est = site.estimator
    if hasattr(est, "steps"):
        est.steps = int(state["steps"])
    baseline = getattr(est, "baseline", None)
    if isinstance(baseline, MovingAverage) and "average" in state:
        baseline._raw, baseline._count = float(state["average"]["raw"]), int(state["average"]["count"])
    if isinstance(est, Rebar):
        est.load_control_state(state)
