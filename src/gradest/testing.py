r"""A conformance kit for gradient estimators: ``check_estimator(estimator) -> ConformanceReport``.

For every case of a matrix of closed-form problems (costs × families × parameter points, scalar,
batched and event-shaped parameters) that ``estimator.applicable`` accepts, it checks:

* **bias**: z = (ḡ − ∇θ L) / √(stderr² + reference error²) for every coordinate, against the exact
  gradient (closed form, enumeration or certified quadrature). Estimators whose samples are coupled
  (leave-one-out) run as independent batches (:mod:`gradest.batches`), so the stderr is honest. The
  threshold is two-sided Bonferroni over all the estimator's bias checks, with Student-t quantiles for
  a stderr of few degrees of freedom: an unbiased estimator fails with probability ≤ ``false_alarm``.
  Estimators biased by design (``capabilities.biased``) are not bias-checked.
* **views**: the surrogate's value and autograd gradient equal the mean of ``per_sample`` on the
  same generator.
* **seed**: the same seed gives the same numbers, bit for bit.
* **shapes**: ``grads[k]`` is ``[N, *param.shape]``, ``values`` is ``[N]``, all finite.
* **f's derivative**: where ``capabilities.differentiates_f`` is False, both views run with a cost
  whose backward raises.
* **traps** (:func:`trap_cases`): draws on the support's edge, draws collapsed onto a point, a cost
  mixing the elements, a parameter read without being declared. The estimator must refuse each
  with a GradestError (the template's sample-health and contract probes do, for an estimator that
  draws through ``Estimator.draw`` or calls ``Estimator.healthy`` on its draws) or pass its bias
  check: refused or right, never a confident wrong number.

The report states the power of its bias checks: :meth:`ConformanceReport.power` is the probability
that an estimator whose mean is (1 + b) ∇θ L is flagged, computed from the measured standard errors
(the largest over the coordinates, a lower bound). Use it from pytest::

    import gradest.testing

    def test_my_estimator():
        gradest.testing.check_estimator(MyEstimator()).raise_if_failed()
"""

from __future__ import annotations

import copy
import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch.distributions import (
    Bernoulli,
    Categorical,
    Exponential,
    Gamma,
    Independent,
    Normal,
    OneHotCategorical,
    Poisson,
)

from gradest.costs import named_cost
from gradest.errors import GradestError
from gradest.estimators.base import Estimator
from gradest.estimators.registry import get_estimator
from gradest.rng import make_generator

#: samples per case of the bias check, and of the views, seed and f's-derivative checks
SAMPLES, SMALL = 20_000, 64
#: independent batches for estimators that couple their samples (the stderr's degrees of freedom + 1)
BATCHES = 32
#: family-wise false-alarm rate of the bias checks of one estimator
FALSE_ALARM = 1e-4
#: relative and absolute tolerance of the views' agreement (the same sums in another order)
VIEWS_RTOL, VIEWS_ATOL = 1e-9, 1e-12


def _f64(*values) -> torch.Tensor:
    return torch.tensor(values[0] if len(values) == 1 else list(values), dtype=torch.float64)


@dataclass(frozen=True)
class Case:
    """One closed-form problem: ``cost`` under ``builder(**params)``, with its exact gradient
    (``exact``: params -> name -> ∂L/∂θ; None: :func:`gradest.exact_grad`)."""

    name: str
    builder: Callable
    params: Mapping[str, torch.Tensor]
    cost: Callable[[torch.Tensor], torch.Tensor]
    exact: Callable[..., dict[str, torch.Tensor]] | None = None
    #: a trap (draws that collapse, a cost that breaks the contract): the estimator must refuse it
    #: with a GradestError or get it right; the word names the trap
    trap: str = ""


def _independent_normal(loc, scale):
    return Independent(Normal(loc, scale), 1)


def _sum_sq(x):
    return (x**2).reshape(x.shape[0], -1).sum(1)


_WEIGHTS, _VALUES = _f64(0.5, -2.0, 3.0), _f64(1.0, -0.5, 4.0, 2.0)


def _bernoulli_cost(x):
    return (x * _WEIGHTS.to(x)).sum(1) + x[:, 0] * x[:, 1]


def _categorical_cost(x):
    return _VALUES.to(torch.float64)[x]


def _one_hot_cost(x):
    return (x * _VALUES.to(x)).sum(-1)


def _centred(x):  # per-element cost f_b = (x_b − x̄)²: every element's cost depends on all of them
    return (x - x.mean(-1, keepdim=True)) ** 2


def trap_cases() -> list[Case]:
    """Where a silently wrong estimate hides: draws on the support's edge, draws that collapse onto a
    point, a per-element cost that mixes the elements, a parameter read without being declared.
    The template's checks (:mod:`gradest.health`, :mod:`gradest.contract`) refuse each for the
    estimators they would mislead; an estimator is held to: refused, or right."""
    hidden = _f64(0.6)
    return [
        Case("gamma concentration 1e-6 (draws on the edge)", Gamma,
             {"concentration": _f64(1e-6), "rate": _f64(1.0)}, lambda x: x,
             lambda concentration, rate: {"concentration": 1.0 / rate, "rate": -concentration / rate**2},
             trap="edge"),
        Case("poisson rate 1e-9 (every draw 0)", Poisson, {"rate": _f64(1e-9)}, lambda x: x,
             lambda rate: {"rate": torch.ones_like(rate)}, trap="rare"),
        Case("normal scale 1e-17 (draws collapsed)", Normal, {"loc": _f64(1.0), "scale": _f64(1e-17)},
             lambda x: x**2, lambda loc, scale: {"loc": 2 * loc, "scale": 2 * scale}, trap="collapse"),
        # E Σ_b (x_b − x̄)² = (B − 1)/B Σ_b σ_b²
        Case("normal batch [8], a cost mixing the elements", Normal,
             {"loc": torch.zeros(8, dtype=torch.float64), "scale": torch.linspace(0.5, 2.0, 8,
                                                                                 dtype=torch.float64)},
             _centred, lambda loc, scale: {"loc": torch.zeros_like(loc), "scale": 2 * scale * 7 / 8},
             trap="mixing"),
        # f = c x with c the very tensor passed as loc: E f = μ², ∂μ = 2μ
        Case("normal, loc read by f without being declared", Normal, {"loc": hidden, "scale": _f64(1.0)},
             lambda x: hidden * x, lambda loc, scale: {"loc": 2 * loc, "scale": torch.zeros_like(scale)},
             trap="undeclared"),
    ]


def default_cases() -> list[Case]:
    """The matrix: named costs under Normals (scalar, batch [2], event [3]), and the closed forms
    E x² under Exponential, Gamma and Poisson; enumerated sums under Bernoulli, Categorical and
    OneHotCategorical."""
    cases = [
        Case(f"normal {cost}(k={k}) loc={loc} scale={scale}", Normal,
             {"loc": _f64(loc), "scale": _f64(scale)}, named_cost(cost, k))
        # square far from its minimum: a gradient large against the noise, where small biases show
        for cost, k, loc, scale in (("square", 0.7, 1.0, 1.0), ("square", -3.0, 1.0, 0.5),
                                    ("cos", 2.0, -0.4, 0.6), ("exp", 0.5, 0.3, 1.5),
                                    ("linear", -1.5, 1.0, 1.0))
    ]
    cases += [
        Case("normal batch [2] cos(k=1.3)", Normal, {"loc": _f64(0.4, -1.0), "scale": _f64(0.8, 1.5)},
             named_cost("cos", 1.3)),
        Case("independent normal event [3] square(k=0.5)", _independent_normal,
             {"loc": _f64(0.2, -0.3, 1.1), "scale": _f64(0.5, 1.0, 2.0)}, named_cost("square", 0.5)),
        # E x² = 2/λ²: ∂λ = −4/λ³
        Case("exponential Σx²", Exponential, {"rate": _f64(0.7, 2.0)}, _sum_sq,
             lambda rate: {"rate": -4.0 / rate**3}),
        # E x² = α(α+1)/β²
        Case("gamma x²", Gamma, {"concentration": _f64(1.5), "rate": _f64(2.0)}, _sum_sq,
             lambda concentration, rate: {"concentration": (2 * concentration + 1) / rate**2,
                                          "rate": -2 * concentration * (concentration + 1) / rate**3}),
        # E x² = λ + λ²
        Case("poisson Σx²", Poisson, {"rate": _f64(1.5, 4.0)}, _sum_sq,
             lambda rate: {"rate": 1.0 + 2.0 * rate}),
        Case("bernoulli Σwx + x0x1", Bernoulli, {"probs": _f64(0.2, 0.7, 0.4)}, _bernoulli_cost),
        Case("bernoulli logits Σwx + x0x1", lambda logits: Bernoulli(logits=logits),
             {"logits": _f64(-0.5, 0.8, 0.1)}, _bernoulli_cost),
        Case("categorical v[x]", lambda logits: Categorical(logits=logits),
             {"logits": _f64(0.1, -1.0, 0.5, 0.0)}, _categorical_cost),
        Case("one-hot categorical ⟨v, x⟩", lambda logits: OneHotCategorical(logits=logits),
             {"logits": _f64(0.1, -1.0, 0.5, 0.0)}, _one_hot_cost),
    ]
    return cases


@dataclass(frozen=True)
class Check:
    """One row of the report.

    case: the problem; kind: ``bias``, ``views``, ``seed``, ``shapes``, ``f-derivative`` or ``skip``;
    passed: the verdict (a skip passes); detail: the numbers behind it. For ``bias`` rows, ``z`` is the
    largest ``|z|`` over the coordinates, and ``gradient``/``stderr`` the flattened exact gradient and the
    total uncertainty of the mean per coordinate (for the power calculation).
    """

    case: str
    kind: str
    passed: bool
    detail: str
    z: float | None = None
    gradient: tuple[float, ...] = ()
    stderr: tuple[float, ...] = ()
    dof: float = math.inf


@dataclass(frozen=True)
class ConformanceReport:
    """All checks of one estimator. ``passed`` is the verdict; ``threshold`` the ``|z|`` bound of the
    bias checks (Bonferroni at ``false_alarm``, normal quantile; Student-t ones per row where the
    stderr has few degrees of freedom)."""

    estimator: str
    checks: tuple[Check, ...]
    false_alarm: float
    threshold: float
    samples: int
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def power(self, relative_bias: float) -> float:
        """P(flagged) for an estimator whose mean is (1 + b) ∇θ L, b = ``relative_bias``: the largest
        over coordinates of ``Φ(|b g|/se − z*) + Φ(−|b g|/se − z*)`` (a lower bound on the whole kit's)."""
        from scipy.stats import norm

        best = 0.0
        for check in self.checks:
            if check.kind != "bias" or not check.gradient:
                continue
            bound = _bound(self.false_alarm, self._tests(), check.dof)
            for g, se in zip(check.gradient, check.stderr, strict=True):
                shift = abs(relative_bias * g)
                if shift == 0.0:
                    continue
                if se == 0.0:
                    return 1.0  # an exact estimate: any bias beyond rounding is seen
                d = shift / se
                best = max(best, float(norm.cdf(d - bound) + norm.cdf(-d - bound)))
        return best

    def _tests(self) -> int:
        return sum(len(c.gradient) for c in self.checks if c.kind == "bias")

    def raise_if_failed(self) -> None:
        """Raise AssertionError listing the failed checks (for pytest)."""
        if not self.passed:
            raise AssertionError(f"{self.estimator} fails {len(self.failures)} conformance check(s):\n"
                                 + "\n".join(f"  [{c.kind}] {c.case}: {c.detail}" for c in self.failures))

    def __str__(self) -> str:
        head = (f"{self.estimator}: {'PASS' if self.passed else 'FAIL'} ({len(self.checks)} checks, bias "
                f"|z| ≤ {self.threshold:.3g} at a false-alarm rate {self.false_alarm:g})")
        rows = [f"  {'ok  ' if c.passed else 'FAIL'} [{c.kind}] {c.case}: {c.detail}" for c in self.checks]
        return "\n".join([head, *rows, *(f"  note: {n}" for n in self.notes)])


def _bound(false_alarm: float, tests: int, dof: float) -> float:
    from gradest.diagnostics import z_bound

    return z_bound(false_alarm, tests, dof)


class _NoDerivative(torch.autograd.Function):
    """Identity forward; a backward that raises: proves a view never differentiates f."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise RuntimeError("f's derivative was called")


def _guarded(cost: Callable) -> Callable:
    def f(x):
        return _NoDerivative.apply(cost(x))

    return f


def _seed(case: str, kind: str, seed: int) -> int:
    """A seed stable across processes (crc32, not Python's salted hash())."""
    return (zlib.crc32(f"{case}|{kind}".encode()) + seed) % 2**31


class _Maker:
    """Fresh copies of the estimator: state (moving averages, RELAX's network) never leaks across calls."""

    def __init__(self, estimator: str | Estimator | Callable[[], Estimator]) -> None:
        if isinstance(estimator, str):
            self.make = lambda: get_estimator(estimator)
            self.name = estimator
        elif isinstance(estimator, Estimator):
            self.make = lambda: copy.deepcopy(estimator)
            self.name = estimator.name
        elif callable(estimator):
            self.make = estimator
            self.name = estimator().name
        else:
            raise GradestError(f"check_estimator needs an Estimator, a registry name or a factory, got "
                               f"{type(estimator).__name__}")


def _leaves(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def _exact(case: Case) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    if case.exact is not None:
        return {k: v.detach() for k, v in case.exact(**case.params).items()}, None
    from gradest.exact import exact_grad

    ref = exact_grad(case.cost, case.builder, case.params)
    return ref.grads, ref.error


def check_estimator(
    estimator: str | Estimator | Callable[[], Estimator],
    cases: Sequence[Case] | None = None,
    samples: int = SAMPLES,
    seed: int = 0,
    false_alarm: float = FALSE_ALARM,
) -> ConformanceReport:
    """Run the conformance checks of ``estimator`` over the cases it applies to.

    Args:
        estimator: an :class:`~gradest.Estimator` (deep-copied for each call), a registry spec
            (``"score-loo+qmc"``) or a factory of fresh estimators.
        cases: the problems (default :func:`default_cases`).
        samples: samples per case of the bias check.
        seed: added to each case's stable seed.
        false_alarm: the probability that an unbiased estimator fails a bias check (all cases together).

    Returns:
        A :class:`ConformanceReport`; ``.raise_if_failed()`` for pytest.
    """
    from gradest import batches
    from gradest.diagnostics import degrees_of_freedom, z_score

    maker = _Maker(estimator)
    probe = maker.make()
    caps = probe.capabilities
    checks: list[Check] = []
    notes: list[str] = []
    pending: list[tuple[str, torch.Tensor, torch.Tensor, float, list[float], list[float]]] = []
    ran = 0
    for case in cases if cases is not None else [*default_cases(), *trap_cases()]:
        reason = probe.applicable(case.builder(**_leaves(case.params)))
        if reason is not None:
            continue
        ran += 1
        try:
            contract = _contract_checks(maker, case, seed, caps.differentiates_f)
            if caps.biased:
                checks += contract
                continue
            estimate = batches.per_sample(maker.make(), case.cost, case.builder, case.params, samples,
                                          make_generator(_seed(case.name, "bias", seed)), batches=BATCHES)
        except GradestError as err:
            first = str(err).split(";")[0]
            checks.append(Check(case.name, "trap" if case.trap else "runs", bool(case.trap),
                                f"refused: {first}" if case.trap else
                                f"refused after applicable() accepted: {err}"))
            continue
        checks += contract
        exact, error = _exact(case)
        try:
            stderr = estimate.stderr()  # (sample health: a standard error that a few draws hold is refused)
        except GradestError as err:
            checks.append(Check(case.name, "bias", False, f"standard error refused: {err}"))
            continue
        zs, grads, ses = [], [], []
        for name, g in estimate.grads.items():
            err = None if error is None else error[name]
            zs.append(z_score(g.mean(0), stderr[name], exact[name], err).reshape(-1))
            total = stderr[name] if err is None else (stderr[name] ** 2 + err.to(stderr[name]) ** 2).sqrt()
            grads += exact[name].reshape(-1).tolist()
            ses += total.reshape(-1).tolist()
        z = torch.cat(zs)
        dof = degrees_of_freedom(estimate.num_samples, estimate.groups)
        pending.append((case.name, z, estimate.grads, dof, grads, ses))
    tests = sum(int(z.numel()) for _, z, *_ in pending)
    normal = _bound(false_alarm, tests, math.inf)
    for name, z, _, dof, grads, ses in pending:
        bound = _bound(false_alarm, tests, dof)
        worst = float(z.abs().max()) if z.numel() else 0.0
        passed = not (z.isnan().any() or worst > bound)
        checks.append(Check(name, "bias", bool(passed), f"max |z| = {worst:.3g} (bound {bound:.3g}, "
                            f"{samples} samples)", worst, tuple(grads), tuple(ses), dof))
    if ran == 0:
        notes.append("no case of the matrix applies to this estimator: give cases= for its families")
    if caps.biased:
        notes.append("biased by design (capabilities.biased): no bias check")
    return ConformanceReport(maker.name, tuple(checks), false_alarm, normal, samples, tuple(notes))


def _small(estimator: Estimator) -> int:
    """The first sample count from SMALL that the estimator and its sampler accept."""
    for n in range(SMALL, 4 * SMALL):
        try:
            return estimator.check_samples(n)
        except GradestError:
            continue
    return estimator.check_samples(SMALL)  # raises the estimator's own message


def _contract_checks(maker: _Maker, case: Case, seed: int, differentiates_f: bool) -> list[Check]:
    out = []
    n = _small(maker.make())
    views_seed = _seed(case.name, "views", seed)
    first = maker.make().per_sample(case.cost, case.builder, case.params, n, make_generator(views_seed))
    # shapes
    bad = [k for k, g in first.grads.items() if tuple(g.shape) != (n, *case.params[k].shape)]
    finite = all(bool(torch.isfinite(g).all()) for g in first.grads.values())
    ok = not bad and tuple(first.values.shape) == (n,) and finite
    out.append(Check(case.name, "shapes", ok, "grads [N, *param.shape], values [N], finite" if ok else
                     f"shapes {[(k, list(g.shape)) for k, g in first.grads.items()]}, values "
                     f"{list(first.values.shape)}, finite {finite}"))
    # seed
    again = maker.make().per_sample(case.cost, case.builder, case.params, n, make_generator(views_seed))
    same = all(torch.equal(first.grads[k], again.grads[k]) for k in first.grads) \
        and torch.equal(first.values, again.values)
    out.append(Check(case.name, "seed", same, "same seed, same numbers" if same else
                     "two calls on the same seed differ"))
    # views
    leaves = _leaves(case.params)
    loss = maker.make().surrogate(case.cost, case.builder, leaves, n, make_generator(views_seed))
    if loss.requires_grad:
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()), allow_unused=True,
                                                     materialize_grads=True), strict=True))
    else:  # a surrogate that carries no gradient: its gradient is zero
        grads = {k: torch.zeros_like(v) for k, v in leaves.items()}
    worst = 0.0
    agree = torch.allclose(loss.detach(), first.values.mean(), rtol=VIEWS_RTOL, atol=VIEWS_ATOL)
    for k, g in first.grads.items():
        mean = g.mean(0)
        agree = agree and torch.allclose(grads[k], mean, rtol=VIEWS_RTOL, atol=VIEWS_ATOL)
        worst = max(worst, float((grads[k] - mean).abs().max()))
    out.append(Check(case.name, "views", bool(agree), f"surrogate gradient − per-sample mean: {worst:.2g}"))
    # f's derivative
    if not differentiates_f:
        guarded = _guarded(case.cost)
        try:
            maker.make().per_sample(guarded, case.builder, case.params, n, make_generator(views_seed))
            leaves = _leaves(case.params)
            maker.make().surrogate(guarded, case.builder, leaves, n, make_generator(views_seed)).backward()
            out.append(Check(case.name, "f-derivative", True,
                             "both views ran with a cost whose backward raises"))
        except RuntimeError as err:
            if "f's derivative was called" not in str(err):
                raise
            out.append(Check(case.name, "f-derivative", False, "differentiates f although "
                             "capabilities.differentiates_f is False"))
    return out
