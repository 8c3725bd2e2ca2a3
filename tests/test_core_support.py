"""Helpers shared by the core contract tests (test_core_batched/theta/rng/capabilities), and the
checks that keep them honest: the estimator list is read from the registry, and the unbiasedness
check rejects a wrong reference.

Every estimator spec is ``NAME[=ARG]`` from :func:`gradest.available` and ``NAME[=ARG]+SAMPLER``
for every sampler from :func:`gradest.available_samplers`, so a newly registered estimator or
sampler joins every test that filters by ``applicable``.
"""

from __future__ import annotations

import functools
import math

import torch

import gradest
from conftest import Z_TOL, t
from gradest import GradestError, get_estimator, make_generator
from gradest.diagnostics import mean_stderr
from gradest.estimators.control_variates import ControlVariate
from gradest.estimators.mvd import MeasureValued

#: values for estimator arguments that must be given; ``available()`` shows them upper-cased
#: (``score-const=B``). A required argument registered later without an entry here gets "1".
REQUIRED_ARGUMENTS = {"b": "0.5"}

#: the message of a sampler that needs an inverse CDF the family lacks
SAMPLER_GAP = "draws through the inverse CDF"


def _base_specs() -> list[str]:
    specs = []
    for key in gradest.available():
        name, _, argument = key.partition("=")
        try:
            get_estimator(name)
        except GradestError:  # the argument is required
            specs.append(f"{name}={REQUIRED_ARGUMENTS.get(argument.lower(), '1')}")
        else:
            specs.append(name)
    return specs


BASE_SPECS = _base_specs()
SAMPLER_NAMES = list(gradest.available_samplers())
SPECS = [*BASE_SPECS, *(f"{s}+{m}" for s in BASE_SPECS for m in SAMPLER_NAMES)]


def leaves(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh copies that need gradients (what the estimators see; applicable() reads requires_grad)."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def applicable_specs(builder, params, specs=SPECS) -> list[str]:
    """The specs whose ``applicable`` accepts ``builder(**params)`` (params needing gradients)."""
    dist = builder(**leaves(params))
    return [s for s in specs if get_estimator(s).applicable(dist) is None]


def sampler_gap(spec, builder, params) -> bool:
    """Whether ``spec``'s sampler fails for want of an inverse CDF although ``applicable`` accepted
    it: probed with a tiny surrogate (which draws without replicating)."""
    if get_estimator(spec).sampler is None:
        return False
    try:
        get_estimator(spec).surrogate(lambda x: x.reshape(x.shape[0], -1).sum(1).double(), builder,
                                      leaves(params), 20, make_generator(0))
    except GradestError as err:
        return SAMPLER_GAP in str(err)
    return False


def usable_specs(builder, params, specs=SPECS) -> list[str]:
    """``applicable_specs`` less the sampler gap (test_core_capabilities has its xfail test)."""
    return [s for s in applicable_specs(builder, params, specs) if not sampler_gap(s, builder, params)]


def is_measure_valued(spec: str) -> bool:
    est = get_estimator(spec)
    return isinstance(est, MeasureValued) or isinstance(getattr(est, "inner", None), MeasureValued)


def is_control_variate(spec: str) -> bool:
    return isinstance(get_estimator(spec), ControlVariate)


def per_sample(spec, f, builder, params, num_samples, seed):
    """``per_sample`` of a fresh estimator on ``make_generator(seed)``."""
    return get_estimator(spec).per_sample(f, builder, params, num_samples, make_generator(seed))


def surrogate(spec, f, builder, params, num_samples, seed, reduction="sum"):
    """(loss value, gradient of the loss per parameter) of a fresh estimator's surrogate."""
    params = leaves(params)
    loss = get_estimator(spec).surrogate(f, builder, params, num_samples, make_generator(seed),
                                         reduction=reduction)
    loss.backward()
    return loss.detach(), {k: v.grad for k, v in params.items()}


def critical_value(estimate) -> float:
    """Z_TOL for i.i.d. samples; with a sampler's G independent groups the stderr has G − 1 degrees
    of freedom, so the Student-t quantile with the false-alarm rate of Z_TOL under a normal
    (qmc's 10 randomizations: 12.4 instead of 5)."""
    groups = estimate.groups
    return _student((estimate.num_samples if groups is None else int(groups.max()) + 1) - 1)


@functools.lru_cache
def _student(dof: int) -> float:
    from scipy.stats import norm
    from scipy.stats import t as student

    return float(student.isf(norm.sf(Z_TOL), dof))


def z_failures(estimate, reference: dict[str, torch.Tensor], rounding: float = 1e-10) -> list[str]:
    """Coordinates where |mean − reference| > critical value · stderr (+ rounding, for zero-variance
    estimators)."""
    stderr = estimate.stderr()
    z = critical_value(estimate)
    bad = []
    for name, g in estimate.grads.items():
        ref = reference[name].to(g)
        err = (g.mean(0) - ref).abs()
        bound = z * stderr[name] + rounding * (1.0 + ref.abs())
        if not bool((err <= bound).all()):
            bad.append(f"{estimate.estimator} {name}: mean {g.mean(0).tolist()} vs {ref.tolist()}, "
                       f"error {err.tolist()} > bound {bound.tolist()}")
    return bad


def assert_unbiased(estimate, reference: dict[str, torch.Tensor], power: bool = True) -> None:
    """The mean is within Z_TOL standard errors (see critical_value) of ``reference``; with
    ``power``, the same check rejects the negated reference (the tolerance is tight enough for the
    test to fail)."""
    bad = z_failures(estimate, reference)
    assert not bad, "\n".join(bad)
    if power:
        wrong = {k: -v for k, v in reference.items()}
        assert z_failures(estimate, wrong), (
            f"{estimate.estimator}: the check also accepts the negated gradient, so it cannot fail; "
            "use more samples"
        )


def assert_value_unbiased(estimate, exact_value: torch.Tensor) -> None:
    """The mean total cost estimates E[Σ_b f_b] within Z_TOL standard errors."""
    values = estimate.values
    stderr = mean_stderr(values.unsqueeze(1), estimate.groups).squeeze(0)
    err = (values.mean() - exact_value).abs()
    assert err <= critical_value(estimate) * stderr + 1e-10 * (1 + abs(float(exact_value))), (
        f"{estimate.estimator}: mean cost {float(values.mean())} vs {float(exact_value)} ± {float(stderr)}"
    )


def assert_views_agree(estimate, loss, grads, elements: int = 1) -> None:
    """Surrogate value and gradient × elements equal the per-sample means (same seed)."""
    assert torch.allclose(loss * elements, estimate.values.mean(), rtol=1e-10, atol=1e-12), (
        f"{estimate.estimator}: surrogate {float(loss)} × {elements} vs mean {float(estimate.values.mean())}"
    )
    for name, g in estimate.grads.items():
        assert torch.allclose(grads[name] * elements, g.mean(0), rtol=1e-10, atol=1e-12), (
            f"{estimate.estimator} {name}: surrogate gradient {grads[name].tolist()} × {elements} "
            f"vs per-sample mean {g.mean(0).tolist()}"
        )


# ── checks of the helpers ──────────────────────────────────────────────────────────────────


def test_specs_cover_every_registered_estimator_and_sampler():
    names = {key.partition("=")[0] for key in gradest.available()}
    assert {s.partition("+")[0].partition("=")[0] for s in SPECS} == names
    assert len(SPECS) == len(names) * (1 + len(SAMPLER_NAMES))
    for spec in SPECS:
        assert get_estimator(spec).name == spec


def test_unbiasedness_check_accepts_the_truth_and_rejects_a_wrong_reference():
    from torch.distributions import Normal

    params = {"loc": t(0.4, -1.0), "scale": t(0.8, 1.5)}
    est = get_estimator("pathwise").per_sample(gradest.named_cost("cos", 1.3), Normal, params, 4000,
                                               make_generator(0))
    exact = gradest.exact_grad(gradest.named_cost("cos", 1.3), Normal, params).grads
    assert_unbiased(est, exact)
    # an error of a tenth of the gradient is caught at this N
    assert z_failures(est, {k: v * 1.1 for k, v in exact.items()})
    # and the stderr is the standard error of the mean (not the spread of the samples)
    g = est.grads["loc"]
    assert torch.allclose(est.stderr()["loc"], g.std(0) / math.sqrt(g.shape[0]), rtol=1e-12)
