r"""Property-based differential tests: every drawn case is refused, or right.

Hypothesis draws a problem — a family (every one in :data:`gradest.FAMILIES`, and OneHotCategorical,
which the relaxations, ``unordered-set`` and ``enumerate`` take), its parameters (ordinary ranges
and, for the properties "anywhere", boundaries and tiny or huge scales: Normal scale 1e-17…1e3,
concentrations 1e-6…1e3, Poisson rate 1e-9…1e3, probabilities 0, 1, 1e-12, 1 − 1e-12, logits ±40),
a dtype (float32, float64), a batch layout (scalar, [B], [B, D], B == N, parameters of lower rank
that broadcast, an ``Independent`` wrapper), a cost (a named one from the cost table as a total
``[N]``, per batch element ``[N, *B]``, per element but mixing the elements — a contract breach that
must be refused — or one that declares θ: ``def f(x, loc)`` or ``f(x, **params)``), an estimator
(every name in :func:`gradest.available`, with its argument, and every sampler suffix of
:func:`gradest.available_samplers`) and a seed — and runs one view of the estimator on it:

* **per_sample**: the estimate (through :func:`gradest.batches.per_sample`, so that estimators that
  couple their samples get an honest standard error over independent batches; of N samples each
  where B == N) against the truth;
* **surrogate**: its value and gradient equal ``per_sample``'s mean on the same seed;
* **graph**: a one-node :func:`gradest.graph` (``then=`` or ``g.cost``) against the truth, and its
  surrogate's gradient equal to ``per_node``'s mean.

The truth is :func:`gradest.exact_grad` (closed form for the named costs under a Normal,
enumeration for small finite supports) or a closed form derived here from the family's marginals:
moments (E (x − c)² = Var x + (E x − c)²) for every family, characteristic functions for cos(kx)
(Laplace, Exponential, Gamma, Uniform, Poisson, Geometric), sums over the support for Bernoulli,
Categorical and OneHotCategorical. ``test_oracles_agree`` checks the two against each other, with
certified quadrature for Normal costs that declare θ.

The invariant, for every case: **either** the call raises a :class:`gradest.GradestError`, **or**
every coordinate of the estimate satisfies

    |ḡ − ∇L| ≤ z* · stderr + reference error + 64 ε (|∇L| + mean_n |ĝ_n| + mean_n |f(x_n)| + 1),

where z* has the tail of one |Z| > 5 under a normal (P ≈ 5.7e-7) for the whole estimate: 5 for one
coordinate and i.i.d. samples, the Student-t quantile where the stderr comes from few groups
(antithetic pairs, QMC randomizations, 16 batches), Bonferroni over the coordinates (6.1 for 400).
ε is the dtype's machine epsilon: the last term is rounding, in units of the cost and of parameters
of order 1 (torch's sigmoid gives ∂p/∂ℓ = 0 at ℓ = 40 where the truth is 4·10⁻¹⁸), so a zero
standard error passes only if the estimate equals the truth to rounding. A violation with a nonzero
stderr is rerun on a fresh seed, with 4× the samples or as many as Cochran's rule (n ≥ 25 G1²) asks
for the skewness G1 of the single-sample rows, and counts only if it is there again (score-function
terms of a Geometric's or a Student-t's draws with f = x² have G1 of 30–60, so a mean of 400 is far
from normal and a rare large term absent from one coordinate leaves a z of 7–12 there; a bias, a
collapse or a contribution the estimator cannot see repeats at any N). Estimators biased by
design (``capabilities.biased``) are checked for shapes and finiteness only. Any other exception, a
NaN, or a confident wrong value fails.

Profiles (tests/conftest.py): ``ci`` (default; derandomized, bounded examples, no shrinking) and
``long`` (``HYPOTHESIS_PROFILE=long``, ``make fuzz``; random, many examples, shrinks to a minimal
failing case). ``pytest -s`` prints how many cases were drawn, refused (by the first words of the
GradestError) and checked; ``--hypothesis-show-statistics`` shows the same as events.
"""

from __future__ import annotations

import collections
import functools
import importlib
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from torch import distributions as D

import gradest
from conftest import FIXED_POOL
from gradest import batches
from gradest.costs import COST_FORMS
from gradest.diagnostics import degrees_of_freedom

Z = 5.0
#: rounding allowance, in machine epsilons of the dtype the estimator ran in
ROUNDING = 64.0
#: relative error allowed to the closed forms derived here (float64 arithmetic, no cancellation)
CLOSED_FORM_ERROR = 1e-10
#: the views agree to this many machine epsilons of the per-sample magnitudes and of the costs', times
#: the coordinates a parameter is shared by (the same sums in another order: see _elements)
VIEWS = 1e3

# ── the count report ─────────────────────────────────────────────────────────────────────────

COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)


def _reason(err: Exception, spec: str = "") -> str:
    """The first words of a refusal, the estimator, numbers and quoted names masked, to count them."""
    text = str(err).split(";")[0]
    for name in sorted({spec, spec.partition("+")[0], spec.partition("=")[0]} - {""}, key=len, reverse=True):
        text = text.replace(name, "EST")
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"-?\d[\d.e+\-]*", "#", text)
    return " ".join(text.split()[:8])


#: view -> the violations a rerun cleared, described (printed with the counts)
CLEARED: dict[str, list[str]] = collections.defaultdict(list)


def _record(view: str, outcome: str, cleared: str = "") -> None:
    COUNTS[view]["drawn"] += 1
    COUNTS[view][outcome] += 1
    if cleared:
        CLEARED[view].append(cleared)
    event(f"{view}: {outcome}")


@pytest.fixture(scope="module", autouse=True)
def _count_report():
    yield
    if not COUNTS:
        return
    lines = ["", "property suite: cases per view"]
    for view, counts in COUNTS.items():
        refused = sum(v for k, v in counts.items() if k.startswith("refused"))
        lines.append(f"  {view}: drawn {counts['drawn']}, checked {counts['checked']} (and "
                     f"{counts[UNCONFIRMED]} whose violation a rerun cleared), shapes only (biased) "
                     f"{counts['shapes only (biased)']}, refused {refused}, failed {counts['failed']}")
        for key, value in counts.most_common():
            if key.startswith("refused"):
                lines.append(f"      {value:4d}  {key.removeprefix('refused: ')}")
        lines += [f"      cleared by a rerun: {text[:300]}" for text in CLEARED[view]]
    print("\n".join(lines))


# ── families and their parameters ─────────────────────────────────────────────────────────────


def _log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(math.log(lo), math.log(hi)).map(math.exp)


@dataclass(frozen=True)
class Values:
    """A parameter's values: an ``ordinary`` range, and ``extreme`` ones (boundaries, tiny and huge
    scales) that only the properties "anywhere" draw."""

    ordinary: st.SearchStrategy[float]
    extreme: st.SearchStrategy[float]

    def strategy(self, extremes: bool) -> st.SearchStrategy[float]:
        return st.one_of(self.extreme, self.ordinary) if extremes else self.ordinary


LOC = Values(st.floats(-5.0, 5.0), st.sampled_from([0.0, 1.0, -3.0, 1e3]))
SCALE = Values(_log_uniform(1e-2, 1e2), st.sampled_from([1e-17, 1e-8, 1e-3, 1.0, 1e3]))
SMALL_LOC = Values(st.floats(-2.0, 2.0), st.sampled_from([0.0, 1.0]))
# LogNormal: σ ≤ 0.5 keeps E x⁴ moderate, so that the stderr of (x − k)²'s gradients means something
SMALL_SCALE = Values(_log_uniform(1e-2, 0.5), st.sampled_from([1e-17, 1e-8, 1e-3]))
RATE = Values(_log_uniform(1e-2, 1e2), st.sampled_from([1e-3, 1.0, 1e3]))
CONCENTRATION = Values(_log_uniform(0.3, 1e2),
                       st.sampled_from([1e-6, 1e-4, 1e-2, 1.0, 1e3]) | _log_uniform(1e-2, 0.3))
POISSON_RATE = Values(_log_uniform(0.1, 1e2),
                      st.sampled_from([1e-9, 1e-3, 1.0, 1e3]) | _log_uniform(1e-2, 0.1))
PROBS = Values(st.floats(0.01, 0.99), st.sampled_from([0.0, 1.0, 1e-12, 0.5, 1.0 - 1e-12]))
LOGITS = Values(st.floats(-5.0, 5.0), st.sampled_from([-40.0, 40.0, 0.0]))
GEOMETRIC_PROBS = Values(st.floats(0.01, 1.0), st.sampled_from([1.0, 0.5, 1e-3]))
GEOMETRIC_LOGITS = Values(st.floats(-5.0, 5.0), st.sampled_from([40.0, 0.0, -5.0]))
# df ≥ 10: the single-sample gradients of (x − k)² then have a finite fourth moment, so their
# stderr means something (at df ≤ 8 it does not, whatever the estimator)
DF = Values(st.floats(10.0, 30.0), st.sampled_from([10.0, 1e3]))
WIDTH = Values(_log_uniform(1e-2, 1e2), st.sampled_from([1e-6, 1e-3, 1.0, 1e3]))
WEIGHT = Values(st.floats(0.05, 1.0), st.sampled_from([0.0, 1e-12, 1.0]))


@dataclass(frozen=True)
class Family:
    """A family as the suite draws it: parameter sets (name -> value strategy, vector or not) and
    the costs its oracle covers."""

    name: str
    cls: type[D.Distribution]
    param_sets: tuple[tuple[tuple[str, Values], ...], ...]
    costs: tuple[str, ...]
    vector: bool = False  # parameters carry a trailing category axis K
    centered: bool = True  # (x − θ)² is defined: every parameter broadcasts against x


SEPARABLE = ("square", "linear")
FAMILY_TABLE: dict[str, Family] = {f.name: f for f in (
    Family("normal", D.Normal, ((("loc", LOC), ("scale", SCALE)),), ("square", "linear", "cos", "exp")),
    Family("lognormal", D.LogNormal, ((("loc", SMALL_LOC), ("scale", SMALL_SCALE)),),
           SEPARABLE),
    Family("laplace", D.Laplace, ((("loc", LOC), ("scale", SCALE)),), (*SEPARABLE, "cos")),
    Family("gumbel", D.Gumbel, ((("loc", LOC), ("scale", SCALE)),), SEPARABLE),
    Family("studentt", D.StudentT, ((("df", DF), ("loc", LOC), ("scale", SCALE)),), SEPARABLE),
    Family("uniform", D.Uniform, ((("low", LOC), ("high", WIDTH)),), (*SEPARABLE, "cos")),
    Family("exponential", D.Exponential, ((("rate", RATE),),), (*SEPARABLE, "cos")),
    Family("gamma", D.Gamma, ((("concentration", CONCENTRATION), ("rate", RATE)),), (*SEPARABLE, "cos")),
    Family("beta", D.Beta, ((("concentration1", CONCENTRATION), ("concentration0", CONCENTRATION)),),
           SEPARABLE),
    Family("dirichlet", D.Dirichlet, ((("concentration", CONCENTRATION),),), SEPARABLE, vector=True),
    Family("poisson", D.Poisson, ((("rate", POISSON_RATE),),), ("square", "linear", "cos", "exp")),
    Family("bernoulli", D.Bernoulli, ((("probs", PROBS),), (("logits", LOGITS),)),
           ("square", "linear", "cos", "exp")),
    Family("categorical", D.Categorical, ((("probs", WEIGHT),), (("logits", LOGITS),)),
           ("square", "linear", "cos", "exp"), vector=True, centered=False),
    Family("onehotcategorical", D.OneHotCategorical, ((("probs", WEIGHT),), (("logits", LOGITS),)),
           ("square", "linear", "cos", "exp"), vector=True),
    Family("geometric", D.Geometric, ((("probs", GEOMETRIC_PROBS),), (("logits", GEOMETRIC_LOGITS),)),
           (*SEPARABLE, "cos")),
)}


def test_every_family_is_drawn():
    assert set(gradest.FAMILIES) <= set(FAMILY_TABLE)


# ── estimators ───────────────────────────────────────────────────────────────────────────────

#: arguments drawn for the registered estimators that take one (None: the default)
ARGUMENTS: dict[str, tuple[str | None, ...]] = {
    "score-const": ("0", "1.5", "-3"),
    "score-ema": (None, "0.5"),
    "score-delta": (None, "1", "2"),
    "mvd-delta": (None, "1", "2"),
    "pathwise-delta": (None, "1", "2"),
    "gumbel-softmax": (None, "2"),
    "gumbel-st": (None, "2"),
    "unordered-set": (None, "2", "3"),
}
SAMPLERS = (None, None, None, *sorted(gradest.available_samplers()), "qmc=16")


def _estimator_names() -> list[str]:
    names = []
    for listed in gradest.available():
        name = listed.partition("=")[0]
        for arg in ARGUMENTS.get(name, (None,) if "=" not in listed else ("1",)):
            names.append(name if arg is None else f"{name}={arg}")
    return names


ESTIMATORS = _estimator_names()


def test_every_estimator_and_sampler_is_drawn():
    assert {n.partition("=")[0] for n in ESTIMATORS} == {n.partition("=")[0] for n in gradest.available()}
    assert set(gradest.available_samplers()) <= {s.partition("=")[0] for s in SAMPLERS if s}


def test_derandomized_draws_do_not_depend_on_the_modules_imported(tmp_path, monkeypatch):
    """A derandomized profile draws the same cases in one file as in the whole suite, which imports
    more modules (tests/conftest.py: Hypothesis's local constants are not drawn from)."""
    if not FIXED_POOL:
        pytest.skip("a long run: new cases each run, local constants drawn too")

    def draws() -> list[float]:
        seen = []

        @settings(max_examples=200, derandomize=True, database=None, deadline=None)
        @given(st.floats(1.0, 2.0))
        def record(x):
            seen.append(x)

        record()
        return seen

    before = draws()
    constants = ", ".join(str(1.0 + i / 997) for i in range(1, 60))
    (tmp_path / "gradest_constants_probe.py").write_text(f"VALUES = ({constants})\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.import_module("gradest_constants_probe")
    try:
        assert draws() == before
    finally:
        del sys.modules["gradest_constants_probe"]


# ── costs ────────────────────────────────────────────────────────────────────────────────────

COST_K = {"square": st.sampled_from([0.0, 0.7, -3.0]) | st.floats(-3.0, 3.0),
          "linear": st.sampled_from([1.0, -1.5]) | st.floats(-3.0, 3.0),
          "cos": st.sampled_from([1.0, 2.0]) | st.floats(0.3, 3.0),
          "exp": st.sampled_from([0.5, 1.0]) | st.floats(0.1, 2.0)}


@dataclass(frozen=True)
class CostSpec:
    """kind: ``total`` (the named cost, [N]), ``element`` ([N, *B[:prefix]]), ``mixing`` (per element,
    element b given element b − 1's cost: breaks the contract), ``scaled`` (declares ``declared``:
    named(x)·(1 + ¼ mean tanh θ)) or ``centered`` (declares it: Σ (x − θ)², per element or total)."""

    kind: str
    name: str = "square"
    k: float = 0.0
    prefix: int = 0  # per-element costs: the number of leading batch dims kept (0: total [N])
    declared: str = ""  # a parameter name, or "**" for f(x, **params)


def _as_float(x: torch.Tensor, like: torch.dtype) -> torch.Tensor:
    return x if x.is_floating_point() else x.to(like)


def _reduce(values: torch.Tensor, prefix: int) -> torch.Tensor:
    """Per-coordinate values [N, *B, *E] -> costs [N, *B[:prefix]]."""
    n = values.shape[0]
    return values.reshape(n, *values.shape[1:1 + prefix], -1).sum(-1)


def _declaring(name: str, core: Callable) -> Callable:
    """f(x, <name>) as a user writes it: a function whose signature names the parameter."""
    makers = {
        "**": lambda: lambda x, **params: core(x, params),
        "loc": lambda: lambda x, loc: core(x, {"loc": loc}),
        "scale": lambda: lambda x, scale: core(x, {"scale": scale}),
        "df": lambda: lambda x, df: core(x, {"df": df}),
        "low": lambda: lambda x, low: core(x, {"low": low}),
        "high": lambda: lambda x, high: core(x, {"high": high}),
        "rate": lambda: lambda x, rate: core(x, {"rate": rate}),
        "concentration": lambda: lambda x, concentration: core(x, {"concentration": concentration}),
        "concentration1": lambda: lambda x, concentration1: core(x, {"concentration1": concentration1}),
        "concentration0": lambda: lambda x, concentration0: core(x, {"concentration0": concentration0}),
        "probs": lambda: lambda x, probs: core(x, {"probs": probs}),
        "logits": lambda: lambda x, logits: core(x, {"logits": logits}),
    }
    return makers[name]()


def make_cost(spec: CostSpec, dtype: torch.dtype) -> Callable:
    """The cost as the estimators receive it: f(x) or f(x, θ) with θ shaped [N, 1, …, *θ.shape]."""
    if spec.kind == "total":
        return gradest.named_cost(spec.name, spec.k)
    value = COST_FORMS[spec.name].value

    if spec.kind in ("element", "mixing"):
        def f(x):
            out = _reduce(value(_as_float(x, dtype), spec.k), spec.prefix)
            # element b is charged element b − 1's cost: Σ_b unchanged, each f_b uses another's x
            return out.roll(1, 1) if spec.kind == "mixing" else out

        return f
    if spec.kind == "scaled":
        def scaled(x, params):
            n = x.shape[0]
            factor = 1.0 + 0.25 * sum(torch.tanh(p).reshape(n, -1).mean(1) for p in params.values()) \
                / len(params)
            return value(_as_float(x, dtype), spec.k).reshape(n, -1).sum(1) * factor

        return _declaring(spec.declared, scaled)

    def centered(x, params):
        (theta,) = params.values()
        return _reduce((_as_float(x, dtype) - theta) ** 2, spec.prefix)

    return _declaring(spec.declared, centered)


# ── a drawn case ─────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Case:
    family: str
    params64: dict[str, torch.Tensor] = field(repr=False)  # the values, exactly as in dtype
    dtype: torch.dtype
    independent: bool
    cost: CostSpec
    num_samples: int
    seed: int
    equal: bool = False  # B == N
    description: str = ""

    @property
    def params(self) -> dict[str, torch.Tensor]:
        return {k: v.to(self.dtype) for k, v in self.params64.items()}

    def builder(self) -> Callable[..., D.Distribution]:
        family = FAMILY_TABLE[self.family]
        cls = family.cls
        keys = set(self.params64)
        base = cls if keys - {"logits"} else (lambda logits: cls(logits=logits))
        if not self.independent:
            return base

        def independent(**params):
            return D.Independent(base(**params), 1)

        return independent

    def f(self) -> Callable:
        return make_cost(self.cost, self.dtype)


def _tensor(values: list[float], shape: tuple[int, ...]) -> torch.Tensor:
    """``values`` cycled over ``shape`` (a few distinct values fill a large tensor)."""
    count = math.prod(shape)
    flat = [values[i % len(values)] for i in range(count)]
    return torch.tensor(flat, dtype=torch.float64).reshape(shape)


@st.composite
def cases(draw, families: tuple[str, ...] | None = None, max_batch: int = 4, extremes: bool = True) -> Case:
    name = draw(st.sampled_from(families or tuple(FAMILY_TABLE)))
    family = FAMILY_TABLE[name]
    dtype = draw(st.sampled_from([torch.float64, torch.float32]))
    layout = draw(st.sampled_from(["scalar", "B", "BD", "B=N"]))
    equal = layout == "B=N"
    # (multiples of every sampler's unit: pairs, 10 and 16 randomizations)
    num_samples = draw(st.sampled_from([240, 400])) if equal else draw(st.sampled_from([2000, 4000]))
    if layout == "scalar":
        shape: tuple[int, ...] = ()
    elif layout == "BD":
        shape = (draw(st.integers(1, max_batch)), draw(st.integers(1, 3)))
    else:
        shape = (num_samples,) if equal else (draw(st.integers(1, max_batch)),)
    names = draw(st.sampled_from(family.param_sets))
    params = {}
    for i, (key, values) in enumerate(names):
        # one parameter keeps the full shape; the others may be shared along leading axes
        own = shape if i == 0 else shape[draw(st.integers(0, len(shape))):]
        size = (*own, draw(st.integers(2, 4))) if family.vector else own  # (one vector parameter)
        params[key] = _tensor(draw(st.lists(values.strategy(extremes), min_size=1, max_size=3)), size)
    if name == "uniform":  # high = low + width
        params["high"] = params["low"] + params["high"]
    if key == "probs" and family.vector:
        if not bool((params["probs"].sum(-1) > 0).all()):
            params["probs"] = params["probs"] + 1.0  # (a row of zeros is no distribution)
        params["probs"] = params["probs"] / params["probs"].sum(-1, keepdim=True)
    params = {k: v.to(dtype).to(torch.float64) for k, v in params.items()}  # the values dtype holds
    independent = bool(shape) and draw(st.booleans())
    cost = draw(cost_specs(family, params, dtype, shape, independent))
    seed = draw(st.integers(0, 2**31 - 1))
    text = (f"{name}{'[independent]' if independent else ''} "
            f"{ {k: _short(v) for k, v in params.items()} } {str(dtype).removeprefix('torch.')} "
            f"N={num_samples} cost={cost} seed={seed}")
    note(text)
    return Case(name, params, dtype, independent, cost, num_samples, seed, equal, text)


def _short(t: torch.Tensor) -> str:
    """``[shape]:v0,v1,v2…`` (the first values in order; a few drawn values repeat to fill the shape)."""
    flat = t.reshape(-1)
    more = "…" if flat.numel() > 3 else ""
    return f"{list(t.shape)}:{','.join(f'{v:.12g}' for v in flat[:3].tolist())}{more}"


@st.composite
def cost_specs(draw, family: Family, params: dict[str, torch.Tensor], dtype: torch.dtype,
               shape: tuple[int, ...], independent: bool) -> CostSpec:
    batch = len(shape) - (1 if independent else 0)
    kinds = ["total", "total", "element", "scaled"]
    if batch and shape[0] >= 2:
        kinds.append("mixing")
    if family.centered:
        kinds.append("centered")
    kind = draw(st.sampled_from(kinds))
    name = draw(st.sampled_from(family.costs))
    k = draw(COST_K[name])
    prefix = draw(st.integers(1, batch)) if kind in ("element", "mixing") and batch else 0
    if kind == "mixing":
        prefix = 1
    declared = ""
    if kind == "scaled":
        declared = draw(st.sampled_from(["**", *params]))
    if kind == "centered":
        declared = draw(st.sampled_from(list(params)))
        prefix = draw(st.integers(0, batch))
        name = "square"
    if kind == "element" and not batch:
        kind = "total"
    return CostSpec(kind, name, k, prefix, declared)


# ── the oracle ───────────────────────────────────────────────────────────────────────────────


class Truth:
    """∇θ L in float64 with its error (name -> tensor), and how it was obtained."""

    def __init__(self, grads: dict[str, torch.Tensor], error: dict[str, torch.Tensor], method: str):
        self.grads, self.error, self.method = grads, error, method


def _bernoulli_probs(family: D.Distribution, logits_given: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(P(x = 1), P(x = 0)), exact to the last digit near 0 and 1 when built from logits."""
    if logits_given:
        return torch.exp(F.logsigmoid(family.logits)), torch.exp(F.logsigmoid(-family.logits))
    return family.probs, 1.0 - family.probs


def _elementwise_mean(case: Case, dist: D.Distribution, c: Callable[[torch.Tensor], torch.Tensor],
                      cost: str) -> torch.Tensor:
    """E[c(x_i)] for every coordinate i of x, ``[*B, *E]``, with autograd to the parameters."""
    family = dist
    while isinstance(family, D.Independent):
        family = family.base_dist
    logits = "logits" in case.params64
    name = case.family
    if name == "bernoulli":
        p1, p0 = _bernoulli_probs(family, logits)
        return p1 * c(torch.ones((), dtype=torch.float64)) + p0 * c(torch.zeros((), dtype=torch.float64))
    if name == "onehotcategorical":  # coordinate j is Bernoulli(p_j)
        p = torch.softmax(family.logits, -1) if logits else family.probs
        one, zero = torch.ones((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
        return p * c(one) + (1.0 - p) * c(zero)
    if name == "categorical":
        p = torch.softmax(family.logits, -1) if logits else family.probs
        support = torch.arange(p.shape[-1], dtype=torch.float64)
        return (p * c(support)).sum(-1)
    if name == "poisson" and cost in ("cos", "exp"):
        rate = family.rate
        most = float(rate.detach().max())
        top = int(most + 15.0 * math.sqrt(most) + 40.0)
        v = torch.arange(top + 1, dtype=torch.float64).reshape(-1, *[1] * rate.dim())
        pmf = torch.exp(v * torch.log(rate) - rate - torch.lgamma(v + 1.0))
        return (pmf * c(v)).sum(0)
    if cost in ("square", "linear", "centered"):
        return None  # from the moments (the caller)
    k = case.cost.k
    if cost == "cos":
        if name == "laplace":
            return torch.cos(k * family.loc) / (1.0 + (family.scale * k) ** 2)
        if name == "exponential":
            return family.rate**2 / (family.rate**2 + k**2)
        if name == "gamma":
            a, b = family.concentration, family.rate
            return (1.0 + (k / b) ** 2) ** (-a / 2) * torch.cos(a * torch.atan(k / b))
        if name == "uniform":
            mid, half = 0.5 * (family.low + family.high), 0.5 * (family.high - family.low)
            return torch.cos(k * mid) * torch.sinc(k * half / math.pi)
        if name == "geometric":
            q = torch.exp(F.logsigmoid(-family.logits)) if logits else 1.0 - family.probs
            p = torch.exp(F.logsigmoid(family.logits)) if logits else family.probs
            return p * (1.0 - q * math.cos(k)) / (1.0 - 2.0 * q * math.cos(k) + q**2)
    if name == "normal":
        return COST_FORMS[cost].normal_mean(family.loc, family.scale, k)
    raise AssertionError(f"no closed form for {cost} under {name}")  # cost_specs draws only covered ones


def _expectation(case: Case, leaves: dict[str, torch.Tensor]) -> torch.Tensor:
    """E Σ_b f_b, a float64 scalar differentiable in ``leaves`` (the closed forms of the docstring)."""
    dist = case.builder()(**leaves)
    spec = case.cost
    full = (*dist.batch_shape, *dist.event_shape)
    if spec.kind == "centered":
        mean, var = dist.mean, dist.variance
        return (var + (mean - leaves[spec.declared]) ** 2).expand(full).sum()
    name = spec.name
    forms = COST_FORMS[name]
    per = _elementwise_mean(case, dist, lambda v: forms.value(v, spec.k), name)
    if per is None:
        mean, var = dist.mean, dist.variance
        per = var + (mean - spec.k) ** 2 if name == "square" else spec.k * mean
    total = per.expand(full).sum()
    if spec.kind == "scaled":
        chosen = leaves if spec.declared == "**" else {spec.declared: leaves[spec.declared]}
        factor = 1.0 + 0.25 * sum(torch.tanh(p).mean() for p in chosen.values()) / len(chosen)
        total = total * factor
    return total


def derived(case: Case) -> Truth:
    leaves = {k: v.clone().requires_grad_(True) for k, v in case.params64.items()}
    with torch.enable_grad():
        value = _expectation(case, leaves)
        grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True, materialize_grads=True)
    grads = dict(zip(leaves, (g.detach() for g in grads), strict=True))
    return Truth(grads, {k: CLOSED_FORM_ERROR * g.abs() for k, g in grads.items()}, "derived")


def _exact_grad_applies(case: Case) -> bool:
    if case.cost.kind != "total":
        return False
    if case.family == "normal":
        return True
    if case.family not in ("bernoulli", "categorical", "onehotcategorical"):
        return False
    p = next(iter(case.params64.values()))
    variables = p.numel() if case.family == "bernoulli" else p[..., 0].numel()
    size = 2 if case.family == "bernoulli" else p.shape[-1]
    return size**variables <= 4096 and case.family != "onehotcategorical"


def truth(case: Case) -> Truth:
    """gradest.exact_grad where it applies (closed form, enumeration), the derived closed form otherwise."""
    if _exact_grad_applies(case):
        ref = gradest.exact_grad(make_cost(case.cost, torch.float64), case.builder(), case.params64)
        error = ref.error or {k: CLOSED_FORM_ERROR * g.abs() for k, g in ref.grads.items()}
        return Truth({k: g.detach() for k, g in ref.grads.items()}, error, f"exact_grad {ref.method}")
    return derived(case)


# ── the invariant ────────────────────────────────────────────────────────────────────────────


@functools.cache
def z_star(dof: int, coordinates: int = 1) -> float:
    """The |t| bound whose tail, over all ``coordinates`` of one estimate together (Bonferroni), is
    that of one |Z| > 5 under a normal: 5 for one coordinate and many degrees of freedom, 6.1 for 400."""
    from scipy.stats import norm, t

    tail = norm.sf(Z) / coordinates
    return float(norm.isf(tail) if dof >= 10_000 else t.isf(tail, max(dof, 1)))


def violations(case: Case, est_mean: dict[str, torch.Tensor], stderr: dict[str, torch.Tensor],
               dof: int, per_sample: dict[str, torch.Tensor], values: torch.Tensor, ref: Truth) -> list[str]:
    """The coordinates outside the invariant's bound, described (empty: the estimate is right); a
    description starts with ``!`` where the stderr is 0 or the estimate not finite (no rerun needed)."""
    eps = torch.finfo(case.dtype).eps
    z = z_star(dof, sum(g.numel() for g in est_mean.values()))
    size_f = float(values.to(torch.float64).abs().mean())
    out = []
    for name, g in est_mean.items():
        g = g.to(torch.float64)
        true = ref.grads[name]
        se = stderr[name].to(torch.float64)
        magnitude = per_sample[name].to(torch.float64).abs().mean(0)
        bound = z * se + ref.error[name] + ROUNDING * eps * (true.abs() + magnitude + size_f + 1.0)
        bad = ~((g - true).abs() <= bound)  # NaN is bad
        if bool(bad.any()):
            i = int(bad.reshape(-1).nonzero()[0])
            gi, ti, si = float(g.reshape(-1)[i]), float(true.reshape(-1)[i]), float(se.reshape(-1)[i])
            zi = (gi - ti) / si if si > 0 else math.inf
            zero = bool(((se == 0) & bad).any()) or not math.isfinite(gi)
            out.append(f"{'!' if zero else ''}∂/∂{name}[{i}] ({int(bad.sum())} of {bad.numel()} bad): "
                       f"estimate {gi:.6g} ± {si:.3g} vs truth {ti:.6g} ({ref.method}); z = {zi:.3g}, "
                       f"bound {float(bound.reshape(-1)[i]):.3g}")
    return out


def shape_problems(case: Case, grads: dict[str, torch.Tensor], n: int) -> list[str]:
    out = []
    for name, g in grads.items():
        want = (n, *case.params64[name].shape)
        if tuple(g.shape) != want:
            out.append(f"{name}: shape {list(g.shape)}, expected {list(want)}")
        elif not bool(torch.isfinite(g).all()):
            out.append(f"{name}: {int((~torch.isfinite(g)).sum())} non-finite single-sample gradients")
    return out


def _estimator(spec: str) -> gradest.Estimator:
    return gradest.get_estimator(spec)


def _samples(est: gradest.Estimator, n: int) -> int:
    """n rounded up to what the sampler splits (pairs, randomizations)."""
    unit = {"antithetic": 2}.get(getattr(est.sampler, "name", None), 1)
    unit = getattr(est.sampler, "randomizations", unit)
    return max(math.ceil(n / unit) * unit, est.min_samples)


@st.composite
def estimator_specs(draw, case: Case, graph: bool = False) -> str:
    """A registered name with a sampler suffix (none half the time; for a graph node, which takes none,
    five times in six); two times in three, one whose ``applicable`` accepts the case (the others are
    mostly refused, cheaply)."""
    sampler = draw(st.sampled_from((*[None] * 5, "antithetic") if graph else SAMPLERS))
    specs = [name if sampler is None else f"{name}+{sampler}" for name in ESTIMATORS]
    try:
        dist = case.builder()(**case.params)
        fitting = [spec for spec in specs if _estimator(spec).applicable(dist) is None]
    except ValueError:  # torch refuses the parameters (a GradestError is one): every estimator must too
        fitting = []
    return draw(st.sampled_from(fitting if fitting and draw(st.integers(0, 2)) else specs))


# ── the properties ───────────────────────────────────────────────────────────────────────────


def _examples(share: float) -> int:
    return max(1, int(settings().max_examples * share))


def _describe(case: Case, spec: str, problems: list[str]) -> str:
    return f"{spec} on {case.description}:\n  " + "\n  ".join(problems)


#: a violation with a nonzero stderr is rerun on this seed offset, with at least this many times the samples
RERUN_SEED, RERUN_FACTOR = 1_000_003, 4
#: Cochran's rule: the mean of n draws whose skewness is G1 is normal enough for a z (or t) test where
#: n ≥ 25 G1² (Cochran 1977, Sampling Techniques, §2.15; Boos & Hughes-Oliver 2000)
COCHRAN = 25
#: a rerun draws at most this many single-sample numbers per parameter (samples × coordinates) ...
RERUN_NUMBERS = 2**24
#: ... and a graph's, whose per_node pays a pass per particle or per coordinate, at most this many
GRAPH_RERUN_NUMBERS = 2**21

Rows = dict[str, torch.Tensor]


def skewness(rows: Rows) -> float:
    """The largest sample skewness ``|m₃| / m₂^{3/2}`` among the coordinates of single-sample rows
    ``[N, *shape]`` (0 where there is no spread)."""
    worst = 0.0
    for g in rows.values():
        g = g.to(torch.float64).reshape(g.shape[0], -1)
        c = g - g.mean(0)
        m2, m3 = c.pow(2).mean(0), c.pow(3).mean(0)
        spread = m2 > 0
        if bool(spread.any()):
            worst = max(worst, float((m3[spread].abs() / m2[spread].pow(1.5)).max()))
    return worst


def rerun_samples(n: int, rows: Rows, numbers: int = RERUN_NUMBERS, points: int = 1) -> int:
    """The samples of a rerun after a violation at ``n``: RERUN_FACTOR × n, or more where the rows'
    skewness says the normal approximation needs more (Cochran's rule on the most skewed coordinate;
    from n draws a sample skewness is at most √n, so it can ask for at most 25 n), up to ``numbers``
    single-sample numbers per parameter, counted ``points`` times where the estimator evaluates f at
    that many points per sample."""
    coordinates = max(1, max(g[0].numel() for g in rows.values()))
    least = RERUN_FACTOR * n
    return min(max(least, math.ceil(COCHRAN * skewness(rows) ** 2)),
               max(least, numbers // (coordinates * points)))


def points_per_sample(spec: str, case: Case) -> int:
    """How many points f is evaluated at per sample: 2 per coordinate of x for a measure-valued
    derivative (alone or under a control variate), else 1 (the others' few extra points are noise)."""
    est = _estimator(spec)
    if isinstance(getattr(est, "inner", est), gradest.MeasureValued):
        return 2 * _elements(case)
    return 1


def confirmed(problems: list[str], n: int, rows: Rows, rerun: Callable[[int, int], tuple[list[str], Rows]],
              numbers: int = RERUN_NUMBERS, points: int = 1) -> tuple[list[str], bool]:
    """The problems, unless they are violations with a nonzero stderr that a rerun (a fresh seed, 4× the
    samples, or as many as Cochran's rule asks for the rows' skewness) does not reproduce.

    A biased estimate, a collapsed one (stderr 0) or one that misses a contribution the estimator cannot
    see is wrong on every seed and at every N; the t statistic of a skewed single-sample distribution is
    not: score-function terms of a Geometric's or a Student-t's draws with f = x² have skewness 30–60, so a
    mean of 400 of them is far from normal (a rare large term, absent from one coordinate's draws, leaves
    a z of 7–12 there), and Cochran's rule asks for 25·G1² ≈ 2·10⁴–10⁵ draws. ``rerun(m, k)`` runs the
    view again with m samples on the k-th fresh seed and returns its problems and rows; a rerun whose own
    rows are more skewed than its first estimate showed (a rare term seen only now) is followed by one
    more at what those rows ask for. Refused on a rerun: confirmed.
    Returns the problems and whether a rerun cleared them."""
    if not problems or any(p.startswith("!") or not p.startswith("∂") for p in problems):
        return problems, False
    found = list(problems)
    for attempt in (1, 2):
        if attempt == 2 and COCHRAN * skewness(rows) ** 2 <= n:
            break  # the rerun's own rows ask for no more than it had
        m = rerun_samples(n, rows, numbers, points)
        label = (f"rerun {attempt} (seed + {attempt} × {RERUN_SEED}, {m} samples, the skewness of the rows "
                 f"before it {skewness(rows):.3g}):")
        try:
            again, rows = rerun(m, attempt)
        except gradest.GradestError as err:
            again = [f"refused: {err}"]
        if not again:
            return [], True
        found += [label, *again]
        if again[0].startswith("refused"):
            break
        n = m
    return found, False


def test_the_rerun_draws_what_the_skewness_of_the_rows_asks_for():
    gen = torch.Generator().manual_seed(0)
    # Exponential draws: skewness 2, so Cochran's rule asks for 100 draws; a sample skewness is ≤ √n
    rows = {"a": torch.empty(200_000, 1, dtype=torch.float64).exponential_(generator=gen),
            "b": torch.zeros(200_000, 3, dtype=torch.float64)}  # no spread: skewness 0
    assert abs(skewness(rows) - 2.0) < 0.1
    assert rerun_samples(10, rows) == 100 and rerun_samples(50, rows) == 200  # at least 4× n
    # the cap counts f's points per sample (a measure-valued derivative's 2 per coordinate): 600 // (3 · 10)
    assert rerun_samples(10, rows, numbers=600, points=10) == 40 and rerun_samples(10, rows, numbers=6000,
                                                                                  points=10) == 100
    spike = torch.zeros(400, 2, dtype=torch.float64)
    spike[0, 1] = 1.0  # one rare large term among 400: skewness (n − 2)/√(n − 1) = 19.9
    assert abs(skewness({"a": spike}) - 398 / 399**0.5) < 1e-9
    assert rerun_samples(400, {"a": spike}) == math.ceil(COCHRAN * skewness({"a": spike}) ** 2)
    assert rerun_samples(400, {"a": spike}, numbers=4000) == 2000  # the cap: 4000 numbers / 2 coordinates
    assert rerun_samples(400, {"a": spike}, numbers=100) == 1600  # never fewer than 4× n


def test_a_violation_stands_unless_a_rerun_clears_it():
    problem = ["∂/∂a[0] (1 of 1 bad): …"]
    calls = []

    def rerun(outcomes):
        def run(m, attempt):
            calls.append((m, attempt))
            return outcomes[attempt - 1]
        return run

    flat = {"a": torch.arange(100, dtype=torch.float64).reshape(100, 1)}  # skewness 0: 4× n, no second rerun
    assert confirmed(problem, 100, flat, rerun([([], flat)])) == ([], True) and calls == [(400, 1)]
    calls.clear()
    found, cleared = confirmed(problem, 100, flat, rerun([(problem, flat)]))
    assert not cleared and calls == [(400, 1)] and found[0] == problem[0] and found[-1] == problem[0]
    # a rerun that sees the rare term the first run missed asks for more draws: a second rerun
    calls.clear()
    spike = torch.zeros(400, 1, dtype=torch.float64)
    spike[0] = 1.0
    assert confirmed(problem, 100, flat, rerun([(problem, {"a": spike}), ([], {"a": spike})])) == ([], True)
    assert calls == [(400, 1), (math.ceil(COCHRAN * skewness({"a": spike}) ** 2), 2)]
    # a collapse (stderr 0, marked "!") or a refusal on the rerun is never cleared
    calls.clear()
    assert confirmed(["!∂/∂a[0] …"], 100, flat, rerun([([], flat)])) == (["!∂/∂a[0] …"], False) and not calls

    def refusing(m, attempt):
        raise gradest.GradestError("no")

    assert not confirmed(problem, 100, flat, refusing)[1]


UNCONFIRMED = "checked (a violation a rerun did not reproduce)"


def _per_sample_run(case: Case, spec: str, n: int, seed: int) -> tuple[gradest.PerSampleGradients, int]:
    """per_sample through independent batches where the estimator couples its samples (an honest
    stderr); for B == N, independent calls of exactly N samples each (16 at least where they couple),
    one after the other from one generator, so that every call, a rerun's too, has B == N."""
    est = _estimator(spec)
    n = _samples(est, n)
    generator = gradest.make_generator(seed)
    if not case.equal:
        return batches.per_sample(est, case.f(), case.builder(), case.params, n, generator), n
    size = _samples(est, case.num_samples)
    coupled = batches.couples_samples(est)
    calls = max(math.ceil(n / size), batches.BATCHES if coupled else 1)
    parts = [est.per_sample(case.f(), case.builder(), case.params, size, generator) for _ in range(calls)]
    if len(parts) == 1:
        return parts[0], size
    if coupled:  # each call is one independent group
        groups = torch.arange(calls).repeat_interleave(size)
    elif all(p.groups is not None for p in parts):  # a sampler's groups, relabelled call by call
        offsets = [0]
        for p in parts[:-1]:
            offsets.append(offsets[-1] + int(p.groups.max()) + 1)
        groups = torch.cat([p.groups.cpu() + o for p, o in zip(parts, offsets, strict=True)])
    else:
        groups = None
    record = gradest.PerSampleGradients(
        grads={k: torch.cat([p.grads[k] for p in parts]) for k in parts[0].grads},
        values=torch.cat([p.values for p in parts]), seconds=sum(p.seconds for p in parts),
        estimator=parts[0].estimator, groups=groups,
        resolution={k: sum(p.resolution[k] for p in parts) / len(parts) for k in parts[0].resolution}
        if parts[0].resolution else None)  # (calls of one size: the mean of the parts' bounds)
    return record, calls * size


def check_per_sample(case: Case, spec: str) -> list[str]:
    """The per-sample view: refused, or every coordinate within the bound (problems: empty)."""
    biased = _estimator(spec).capabilities.biased
    try:
        result, n = _per_sample_run(case, spec, case.num_samples, case.seed)
        result.stderr()  # (an estimate carried by one draw is refused where its stderr is asked for)
    except gradest.GradestError as err:
        _record("per_sample", f"refused: {_reason(err, spec)}")
        return []
    problems = shape_problems(case, result.grads, n)
    if tuple(result.values.shape) != (n,):
        problems.append(f"values: shape {list(result.values.shape)}, expected [{n}]")
    if not problems and not biased:
        ref = truth(case)

        def judge(result: gradest.PerSampleGradients, n: int) -> list[str]:
            return violations(case, result.mean(), result.stderr(), degrees_of_freedom(n, result.groups),
                              result.grads, result.values, ref)

        def rerun(m: int, attempt: int) -> tuple[list[str], Rows]:
            again, m = _per_sample_run(case, spec, m, case.seed + attempt * RERUN_SEED)
            return judge(again, m), again.grads

        found = judge(result, n)
        problems, cleared = confirmed(found, n, result.grads, rerun, points=points_per_sample(spec, case))
        if cleared:
            _record("per_sample", UNCONFIRMED, f"{spec} on {case.description}: {found[0]}")
            return []
    _record("per_sample", "failed" if problems else "shapes only (biased)" if biased else "checked")
    return problems


def _elements(case: Case) -> int:
    """Coordinates of one draw x: a parameter shared by many of them gets its gradient as a sum over
    them, whose rounding (cancelling terms such as lgamma's derivatives, a baseline's c·log p and
    b·log p summed apart) grows with their number and with the size of the costs."""
    dist = case.builder()(**case.params64)
    return math.prod((*dist.batch_shape, *dist.event_shape))


def check_surrogate(case: Case, spec: str) -> list[str]:
    """The surrogate view: its value and gradient are per_sample's mean on the same seed."""
    n = _samples(_estimator(spec), 64)
    try:
        record = _estimator(spec).per_sample(case.f(), case.builder(), case.params, n,
                                             gradest.make_generator(case.seed))
    except gradest.GradestError as err:
        _record("surrogate", f"refused: {_reason(err, spec)}")
        return []
    leaves = {k: v.clone().requires_grad_(True) for k, v in case.params.items()}
    try:
        loss = _estimator(spec).surrogate(case.f(), case.builder(), leaves, n,
                                          gradest.make_generator(case.seed))
    except gradest.GradestError as err:
        _record("surrogate", "failed")
        return [f"per_sample ran, the surrogate refused: {err}"]
    if loss.requires_grad:
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True, materialize_grads=True)
    else:
        grads = [torch.zeros_like(v) for v in leaves.values()]
    eps = torch.finfo(case.dtype).eps
    problems = []
    value, mean_value = float(loss.detach()), float(record.values.to(torch.float64).mean())
    scale = float(record.values.to(torch.float64).abs().mean())
    if not abs(value - mean_value) <= VIEWS * eps * (abs(mean_value) + scale):
        problems.append(f"surrogate value {value:.9g} vs per_sample mean {mean_value:.9g}")
    elements = _elements(case)
    for (name, g), s in zip(record.grads.items(), grads, strict=True):
        mean = g.to(torch.float64).mean(0)
        shared = max(1.0, elements / case.params64[name].numel())
        tol = VIEWS * eps * (mean.abs() + g.to(torch.float64).abs().mean(0) + (scale + 1.0) * shared)
        bad = ~((s.to(torch.float64) - mean).abs() <= tol)
        if bool(bad.any()):
            i = int(bad.reshape(-1).nonzero()[0])
            problems.append(f"∂/∂{name}[{i}]: surrogate {float(s.reshape(-1)[i]):.9g} vs per_sample mean "
                            f"{float(mean.reshape(-1)[i]):.9g}")
    _record("surrogate", "failed" if problems else "checked")
    return problems


def _arranged(param: torch.Tensor, dist: D.Distribution, n: int) -> torch.Tensor:
    """θ as a declared cost receives it: ``[N, 1, …, *θ.shape]`` against x ``[N, *B, *E]``."""
    rank = len(dist.batch_shape) + len(dist.event_shape)
    pad = max(rank - param.dim(), 0)
    return param.reshape(1, *[1] * pad, *param.shape).expand(n, *[1] * pad, *param.shape)


def _graph_run(case: Case, spec: str, use_then: bool, n: int, seed: int
               ) -> tuple[dict[str, torch.Tensor], gradest.NodeGradients, list[torch.Tensor]]:
    """A one-node graph of n particles: (its leaves, per_node's split, g.surrogate()'s gradient)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in case.params.items()}
    f = case.f()
    dist = case.builder()(**leaves)

    def cost(z: torch.Tensor) -> torch.Tensor:
        if not case.cost.declared:
            return f(z)
        names = leaves if case.cost.declared == "**" else [case.cost.declared]
        return f(z, **{k: _arranged(leaves[k], dist, n) for k in names})

    with gradest.graph(gradest.make_generator(seed), num_samples=n) as g:
        if use_then:
            g.sample("z", dist, spec, then=cost)
        else:
            g.cost("c", cost(g.sample("z", dist, spec)))
    node_grads = g.per_node(leaves)
    grads = torch.autograd.grad(g.surrogate(), list(leaves.values()), allow_unused=True,
                                materialize_grads=True)
    return leaves, node_grads, list(grads)


def check_graph(case: Case, spec: str, use_then: bool) -> list[str]:
    """A one-node graph: refused, or right (per_node against the truth, g.surrogate() = its mean)."""
    n = case.num_samples if case.equal else 1000  # per_node's Jacobian has a row per particle
    try:
        case.builder()(**case.params)
    except ValueError as err:  # torch refuses the values (per_sample's properties see those)
        _record("graph", f"refused: torch: {_reason(err)}")
        return []
    try:
        _, node_grads, grads = _graph_run(case, spec, use_then, n, case.seed)
    except gradest.GradestError as err:
        _record("graph", f"refused: {_reason(err, spec)}")
        return []
    total = node_grads.total
    problems = shape_problems(case, total, n)
    eps = torch.finfo(case.dtype).eps
    scale = float(node_grads.values.to(torch.float64).abs().mean())
    if not problems:
        elements = _elements(case)
        scores = _score_sizes(case, spec, n)
        for (name, rows), s in zip(total.items(), grads, strict=True):
            mean = rows.to(torch.float64).mean(0)
            shared = max(1.0, elements / case.params64[name].numel())
            tol = VIEWS * eps * (mean.abs() + rows.to(torch.float64).abs().mean(0)
                                 + (scale + 1.0) * shared * scores.get(name, torch.ones(())).clamp_min(1.0))
            if not bool(((s.to(torch.float64) - mean).abs() <= tol).all()):
                problems.append(f"∂/∂{name}: g.surrogate() gradient {s.reshape(-1)[:3].tolist()} vs "
                                f"per_node mean {mean.reshape(-1)[:3].tolist()}")
    biased = _estimator(spec).capabilities.biased
    if not problems and not biased:
        ref = truth(case)

        def judged(record: gradest.NodeGradients) -> tuple[list[str], Rows]:
            """The record's own standard error (refused where one particle carries the estimate)."""
            dof = degrees_of_freedom(record.num_samples, record.groups)
            return violations(case, record.mean(), record.stderr(), dof, record.total, record.values,
                              ref), record.total

        def judge(m: int, seed: int) -> tuple[list[str], Rows]:
            return judged(_graph_rows(case, spec, use_then, m, seed))

        try:
            if batches.couples_samples(_estimator(spec)):  # independent graphs (gradest.graph.combine)
                found, rows = judge(n, case.seed)
            else:  # the graph above, its particles i.i.d.
                found, rows = judged(node_grads)
        except gradest.GradestError as err:  # (graphs of fewer particles: refused draws are likelier)
            _record("graph", f"refused: {_reason(err, spec)}")
            return []
        # (the particles the judgement read: 16 graphs of N each where they couple and B == N)
        used = next(iter(rows.values())).shape[0]
        problems, cleared = confirmed(found, used, rows, lambda m, attempt: judge(
            m, case.seed + attempt * RERUN_SEED), GRAPH_RERUN_NUMBERS)
        if cleared:
            view = "then=" if use_then else "g.cost"
            _record("graph", UNCONFIRMED, f"{spec} ({view}) on {case.description}: {found[0]}")
            return []
    _record("graph", "failed" if problems else "shapes only (biased)" if biased else "checked")
    return problems


def _score_sizes(case: Case, spec: str, n: int) -> dict[str, torch.Tensor]:
    """mean_n abs(∇θ log p(z_n)) per coordinate, where the node's estimator has a baseline (else
    nothing): the surrogate's gradient then sums c_n ∇ log p_n and b_n ∇ log p_n apart, terms of the
    size of the costs times these that cancel to the rows' (c_n − b_n) ∇ log p_n — their rounding
    is the views' difference (Normal(1, 10⁻⁸), x², score-loo: scores of 10⁸, rows of 2). Read as
    per_node's rows of a "score" node under a cost of 1 on the same seed."""
    if isinstance(getattr(_estimator(spec), "baseline", gradest.NoBaseline()), gradest.NoBaseline):
        return {}
    leaves = {k: v.clone().requires_grad_(True) for k, v in case.params.items()}
    with gradest.graph(gradest.make_generator(case.seed), num_samples=n) as g:
        z = g.sample("z", case.builder()(**leaves), "score")
        g.cost("one", (z.reshape(n, -1) * 0).sum(1).to(case.dtype) + 1.0)
    return {k: v.to(torch.float64).abs().mean(0) for k, v in g.per_node(leaves).total.items()}


def _graph_rows(case: Case, spec: str, use_then: bool, n: int, seed: int) -> gradest.NodeGradients:
    """per_node's record of n particles: one graph, or independent graphs joined by
    :func:`gradest.graph.combine` where the node's estimator couples its particles (a leave-one-out
    baseline), as :func:`gradest.batches.per_sample` runs independent calls (B == N: graphs of N
    particles each), since the spread of coupled rows misses the coupling's share of the variance
    (Categorical(½, ½) with f = x²: every score-loo row equal, stderr 0, the mean off by 1/N)."""
    est = _estimator(spec)
    coupled = batches.couples_samples(est)
    if case.equal:  # graphs of N particles each, so that every one has B == N (a rerun's too)
        size = case.num_samples
        sizes = [size] * max(math.ceil(n / size), batches.BATCHES if coupled else 1)
    else:
        sizes = batches.batch_sizes(est, n) if coupled else [n]
    if len(sizes) == 1:
        return _graph_run(case, spec, use_then, sizes[0], seed)[1]
    return gradest.graph.combine([_graph_run(case, spec, use_then, size, seed + i)[1]
                                  for i, size in enumerate(sizes)])


@settings(max_examples=_examples(1.0))
@given(data=st.data())
def test_per_sample_is_refused_or_right_anywhere(data):
    case = data.draw(cases())
    spec = data.draw(estimator_specs(case), label="estimator")
    problems = check_per_sample(case, spec)
    assert not problems, _describe(case, spec, problems)


@settings(max_examples=_examples(0.5))
@given(data=st.data())
def test_per_sample_is_refused_or_right_at_ordinary_parameters(data):
    case = data.draw(cases(extremes=False))
    spec = data.draw(estimator_specs(case), label="estimator")
    problems = check_per_sample(case, spec)
    assert not problems, _describe(case, spec, problems)


@settings(max_examples=_examples(0.5))
@given(data=st.data())
def test_surrogate_gradient_is_per_sample_mean(data):
    case = data.draw(cases())
    spec = data.draw(estimator_specs(case), label="estimator")
    problems = check_surrogate(case, spec)
    assert not problems, _describe(case, spec, problems)


@settings(max_examples=_examples(0.4))
@given(data=st.data())
def test_graph_node_is_refused_or_right_anywhere(data):
    case = data.draw(cases(max_batch=3))
    spec = data.draw(estimator_specs(case, graph=True), label="estimator")
    use_then = data.draw(st.booleans(), label="then=")
    problems = check_graph(case, spec, use_then)
    assert not problems, _describe(case, f"graph node {spec} ({'then=' if use_then else 'g.cost'})", problems)


@settings(max_examples=_examples(0.3))
@given(data=st.data())
def test_graph_node_is_refused_or_right_at_ordinary_parameters(data):
    case = data.draw(cases(max_batch=3, extremes=False))
    spec = data.draw(estimator_specs(case, graph=True), label="estimator")
    use_then = data.draw(st.booleans(), label="then=")
    problems = check_graph(case, spec, use_then)
    assert not problems, _describe(case, f"graph node {spec} ({'then=' if use_then else 'g.cost'})", problems)


@settings(max_examples=_examples(0.3))
@given(data=st.data())
def test_oracles_agree(data):
    """gradest.exact_grad (closed form, enumeration, certified quadrature) and the closed forms derived
    here give the same gradient: the oracle of the properties above is checked too."""
    case = data.draw(cases(families=("normal", "bernoulli", "categorical"), max_batch=2))
    mine = derived(case)
    try:
        ref = gradest.exact_grad(make_cost(case.cost, torch.float64), case.builder(), case.params64)
    except gradest.GradestError as err:
        _record("oracles", f"refused: {_reason(err)}")
        return
    problems = []
    for name, g in ref.grads.items():
        err = (ref.error or {}).get(name, torch.zeros_like(g))
        tol = err + mine.error[name] + ROUNDING * torch.finfo(torch.float64).eps * (
            g.abs() + mine.grads[name].abs() + ref.value.abs() + 1.0)
        if not bool(((g - mine.grads[name]).abs() <= tol).all()):
            problems.append(f"∂/∂{name}: exact_grad ({ref.method}) {g.reshape(-1)[:4].tolist()} ± "
                            f"{err.reshape(-1)[:4].tolist()} vs derived "
                            f"{mine.grads[name].reshape(-1)[:4].tolist()}")
    _record("oracles", "failed" if problems else "checked")
    assert not problems, "\n".join([case.description, *problems])
