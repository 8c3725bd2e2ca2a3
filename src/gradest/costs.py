r"""Costs f(x) by name, with closed-form expectations under the Normal where they exist.

Each named cost acts coordinate-wise and sums over all coordinates of a sample,
f(x) = Σ_d c(x_d), so its expectation under a diagonal Normal is Σ_d E[c(x_d)] with
x_d ~ N(μ_d, σ_d²):

=========  ============  ===============================================
name       c(x)          E[c(x)], x ~ N(μ, σ²)
=========  ============  ===============================================
square     (x − k)²      (μ − k)² + σ²
exp        exp(−k x²)    (1 + 2kσ²)^(−1/2) · exp(−kμ² / (1 + 2kσ²))
cos        cos(k x)      cos(kμ) · exp(−k²σ²/2)
linear     k x           k μ
=========  ============  ===============================================

The table :data:`COST_FORMS` holds each named cost's value, first and second derivatives,
antiderivative, feature width and Normal expectation with its gradient: the one definition every
module uses. Custom costs load from ``path/to/file.py:function`` or ``package.module:function``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import math
import numbers
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from gradest.errors import GradestError, NonFiniteError

Elementwise = Callable[[torch.Tensor, float], torch.Tensor]


@dataclass(frozen=True)
class Cost:
    """A batched cost f(x) = Σ_d c(x_d; k): samples ``[N, ...]`` -> ``[N]``.

    normal_mean: E[c(x; k)] for x ~ N(loc, scale²), elementwise in (loc, scale), or None.
    """

    name: str
    k: float
    elementwise: Elementwise
    normal_mean: Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise GradestError(f"a Cost's name must be a string, got {type(self.name).__name__}")
        object.__setattr__(self, "k", check_k(self.k, f"cost {self.name!r}"))
        if not callable(self.elementwise):
            raise GradestError(f"cost {self.name!r}: elementwise must be a function (x, k) -> c(x), got "
                               f"{type(self.elementwise).__name__}")
        if self.normal_mean is not None and not callable(self.normal_mean):
            raise GradestError(f"cost {self.name!r}: normal_mean must be a function (loc, scale, k) -> E c "
                               f"or None, got {type(self.normal_mean).__name__}")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() == 0:
            got = f"shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
            raise GradestError(f"cost {self.name!r} takes samples as a tensor [N, ...], got {got}; "
                               "e.g. x.reshape(1, -1) for one sample")
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        return self.elementwise(x, self.k).reshape(x.shape[0], -1).sum(1)

    def expectation_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """E[f(x)] for x ~ N(loc, diag(scale²)), differentiable in loc and scale."""
        if self.normal_mean is None:
            raise GradestError(f"cost {self.name!r} has no closed-form expectation")
        if not (isinstance(loc, torch.Tensor) and isinstance(scale, torch.Tensor)
                and loc.is_floating_point() and scale.is_floating_point()):
            raise GradestError("expectation_normal takes loc and scale as floating-point tensors, got "
                               f"{type(loc).__name__} and {type(scale).__name__}; e.g. torch.tensor(1.0)")
        try:
            loc, scale = torch.broadcast_tensors(loc, scale)
        except RuntimeError:
            raise GradestError(f"loc {list(loc.shape)} and scale {list(scale.shape)} do not broadcast; give "
                               "them one shape, or a scalar for one of them") from None
        return self.normal_mean(loc, scale, self.k).sum()


def _xp(x):
    """The array namespace of ``x``: torch for tensors, numpy otherwise (floats, numpy arrays)."""
    return torch if isinstance(x, torch.Tensor) else np


@dataclass(frozen=True)
class CostForms:
    r"""Everything known about one named elementwise cost c(x; k), in one place.

    value, d1, d2: c, c′, c″ at ``x`` (torch tensors or numpy arrays alike).
    anti: ``anti(x0, dx, k)`` = ∫_{x₀}^{x₀+dx} c, written free of cancellation for small dx (numpy).
    feature: the width of c's sharpest feature for a given k (None: smooth on every scale).
    normal_mean: E[c(x)] for x ~ N(loc, scale²), elementwise (torch; differentiable).
    normal_grad: (∂/∂loc, ∂/∂scale) of that expectation, elementwise, written out.
    formula: c(x) for help texts.
    tex: c(x) in TeX, for the reports' typeset formulas.
    """

    formula: str
    value: Elementwise
    d1: Elementwise
    d2: Elementwise
    anti: Callable
    feature: Callable[[float], float | None]
    normal_mean: Callable
    normal_grad: Callable
    tex: str = ""
    #: the smallest k the cost takes (exp(−k x²) with k < 0 grows like a Gaussian: E f = ∞ under
    #: a Normal with 2|k|σ² ≥ 1, and its Normal-weighted integrals have no fixed tail)
    k_min: float = -math.inf


def check_k(k: object, what: str = "the cost") -> float:
    """``k`` as a finite float, or a GradestError (a string, a bool, a tensor, NaN or ±inf)."""
    if isinstance(k, torch.Tensor):
        raise GradestError(f"k of {what} must be a number, got a tensor; give float(k) (k is a constant "
                           "of the cost, never differentiated)")
    if isinstance(k, bool | np.bool_) or not isinstance(k, numbers.Real):
        raise GradestError(f"k of {what} must be a real number, got {type(k).__name__} {_short(k)}; "
                           "e.g. k=2.0")
    if not math.isfinite(float(k)):
        raise GradestError(f"k of {what} must be a finite number, got {float(k)}; e.g. k=2.0")
    return float(k)


def _short(value: object, limit: int = 40) -> str:
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


def _square_mean(loc, scale, k):
    return (loc - k) ** 2 + scale**2


def _square_grad(loc, scale, k):
    return 2.0 * (loc - k), 2.0 * scale


def _square_anti(x0, dx, k):
    a, b = x0 + dx - k, x0 - k
    return dx * (a * a + a * b + b * b) / 3.0


def _exp_mean(loc, scale, k):
    a = 1.0 + 2.0 * k * scale**2
    # k < 0 makes exp(−k x²) grow like a Gaussian: its mean is +∞ once 1 + 2kσ² ≤ 0, not NaN
    return torch.where(a > 0, torch.exp(-k * loc**2 / a) / torch.sqrt(a.clamp(min=1e-300)),
                       torch.full_like(a, math.inf))


def _exp_grad(loc, scale, k):
    xp = _xp(scale)
    a = 1.0 + 2.0 * k * scale**2
    mean = xp.exp(-k * loc**2 / a) / xp.sqrt(a)
    return mean * (-2.0 * k * loc / a), mean * (-2.0 * k * scale / a + 4.0 * k**2 * loc**2 * scale / a**2)


def _exp_anti(x0, dx, k):
    from scipy.special import erf  # scipy loads only where the exact variances need it

    if k == 0:
        return dx
    r = math.sqrt(k)
    return math.sqrt(math.pi / (4.0 * k)) * (erf(r * (x0 + dx)) - erf(r * x0))


def _cos_mean(loc, scale, k):
    return torch.cos(k * loc) * torch.exp(-0.5 * (k * scale) ** 2)


def _cos_grad(loc, scale, k):
    xp = _xp(loc)
    damp = xp.exp(-0.5 * (k * scale) ** 2)
    return -k * xp.sin(k * loc) * damp, -(k**2) * scale * xp.cos(k * loc) * damp


def _cos_anti(x0, dx, k):
    # sin(a + d) − sin(a) as a product: no cancellation for small d (near t = 0 in E[b(UM) | M])
    return dx if k == 0 else 2.0 * np.cos(k * (x0 + 0.5 * dx)) * np.sin(0.5 * k * dx) / k


def _linear_mean(loc, scale, k):
    return k * loc + 0.0 * scale


def _linear_grad(loc, scale, k):
    return k + 0.0 * loc, 0.0 * scale


#: name -> every form of the named cost: the one table the library, the exact variances
#: (gradest.lab.variance_exact) and the Gaussian question (gradest.gaussian.closed_form) read
COST_FORMS: dict[str, CostForms] = {
    "square": CostForms(
        "(x − k)²", lambda x, k: (x - k) ** 2, lambda x, k: 2.0 * (x - k),
        lambda x, k: _xp(x).full_like(x, 2.0), _square_anti, lambda k: None, _square_mean, _square_grad,
        tex=r"(x - k)^2"),
    "exp": CostForms(
        "exp(−k x²)", lambda x, k: _xp(x).exp(-k * x**2), lambda x, k: -2.0 * k * x * _xp(x).exp(-k * x**2),
        lambda x, k: (4.0 * k**2 * x**2 - 2.0 * k) * _xp(x).exp(-k * x**2), _exp_anti,
        lambda k: 1.0 / math.sqrt(2.0 * k) if k > 0 else None, _exp_mean, _exp_grad,
        tex=r"e^{-k x^2}", k_min=0.0),
    "cos": CostForms(
        "cos(k x)", lambda x, k: _xp(x).cos(k * x), lambda x, k: -k * _xp(x).sin(k * x),
        lambda x, k: -(k**2) * _xp(x).cos(k * x), _cos_anti,
        lambda k: 2.0 * math.pi / abs(k) if k != 0 else None, _cos_mean, _cos_grad,
        tex=r"\cos(k x)"),
    "linear": CostForms(
        "k x", lambda x, k: k * x, lambda x, k: _xp(x).full_like(x, k), lambda x, k: _xp(x).zeros_like(x),
        lambda x0, dx, k: k * dx * (x0 + 0.5 * dx), lambda k: None, _linear_mean, _linear_grad,
        tex=r"k x"),
}

#: name -> formula, for help texts
NAMED_COSTS: dict[str, str] = {name: forms.formula for name, forms in COST_FORMS.items()}


def named_cost(name: str, k: float = 1.0) -> Cost:
    """The registered cost ``name`` with constant ``k``.

    Raises:
        GradestError: an unknown name; a k that is not a finite real number, or outside the
            cost's range (exp takes k ≥ 0).
    """
    if not isinstance(name, str) or name not in COST_FORMS:
        raise GradestError(
            f"unknown cost {_short(name)}; choose one of {', '.join(COST_FORMS)} "
            "or load your own with FILE.py:FUNCTION or package.module:FUNCTION"
        )
    forms = COST_FORMS[name]
    k = check_k(k, f"cost {name!r}")
    if k < forms.k_min:
        raise GradestError(
            f"cost {name} = {forms.formula} needs k ≥ {forms.k_min:g}, got k = {k:g}: with k < 0 it grows "
            "like a Gaussian and E f is not finite under a Normal with 2|k|σ² ≥ 1; give k ≥ 0 (or "
            "write your own cost, FILE.py:FUNCTION)"
        )
    return Cost(name, k, forms.value, forms.normal_mean)


def load_cost(spec: str, k: float | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """A named cost, or a function from ``FILE.py:FUNCTION`` / ``package.module:FUNCTION``.

    A loaded function with a parameter named ``k`` receives ``k`` when one is given.
    """
    if not isinstance(spec, str):
        raise GradestError(f"a cost spec must be a string (a named cost, FILE.py:FUNCTION or "
                           f"package.module:FUNCTION), got {type(spec).__name__}")
    if k is not None:
        k = check_k(k, f"cost {spec}")
    if ":" not in spec:
        return named_cost(spec, 1.0 if k is None else k)
    target, _, func_name = spec.rpartition(":")
    if not target or not func_name.isidentifier() or (not target.endswith(".py") and target.startswith(".")):
        raise GradestError(f"--cost {spec!r}: give FILE.py:FUNCTION (e.g. ./mycost.py:f) or "
                           "package.module:FUNCTION (an absolute module name), or a named cost")
    if target.endswith(".py"):
        path = Path(target)
        if not path.is_file():
            raise GradestError(f"cost file not found: {path}")
        module_name = f"_gradest_cost_{abs(hash(path.resolve()))}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        try:
            module_spec.loader.exec_module(module)
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # a user's file can fail in any way, sys.exit() included
            sys.modules.pop(module_name, None)
            raise GradestError(f"cost {spec} failed: could not load {path}: {describe_failure(err)}; "
                               "fix the file, or run it with python to see the full traceback") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as err:
            raise GradestError(f"could not import module {target!r}: {err}") from None
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # the module imports but its code fails (or calls sys.exit())
            raise GradestError(f"cost {spec} failed: importing {target} raised "
                               f"{describe_failure(err)}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise GradestError(f"{target} has no function {func_name!r}")
    if k is not None:
        if "k" not in _parameters(func):
            raise GradestError(
                f"--k {k:g} was given but {func_name} takes no parameter named k; drop --k, or add a "
                f"keyword argument k to {func_name}"
            )
        func = partial(func, k=k)
    return checked(func, spec)


def _parameters(func) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(func).parameters
    except (TypeError, ValueError):  # builtins and some C callables have no signature
        return {}


def describe_failure(err: BaseException) -> str:
    """``Type: message`` of a user's exception on one line (``SystemExit: 3``, ``ValueError``)."""
    message = " ".join(str(err).split())
    return f"{type(err).__name__}: {message}" if message else type(err).__name__


def checked(func: Callable[..., torch.Tensor], label: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """``func`` with its contract enforced: a torch tensor of shape [N] back for samples [N, ...].

    A user's function can fail in any way, ``sys.exit()`` included; its failure becomes one line naming
    the function and the shape it was called with, instead of a traceback from deep inside an estimator
    (or a silent exit). KeyboardInterrupt alone passes through: Ctrl-C still stops the run.
    """

    @functools.wraps(func)
    def f(x: torch.Tensor) -> torch.Tensor:
        version = x._version  # bumped by any in-place op on x
        try:
            y = func(x)
        except (GradestError, KeyboardInterrupt):
            raise
        except BaseException as err:  # any failure of user code, sys.exit() included, is one line
            raise GradestError(f"cost {label} failed on samples of shape {list(x.shape)}: "
                               f"{describe_failure(err)}") from None
        if not isinstance(y, torch.Tensor):
            raise GradestError(f"cost {label} returned {type(y).__name__}; it must return a torch tensor "
                               f"of shape [{x.shape[0]}] (keep the computation in torch for gradients)")
        if tuple(y.shape) != (x.shape[0],):
            raise GradestError(f"cost {label} returned shape {list(y.shape)} for samples of shape "
                               f"{list(x.shape)}; it must return one value per sample, shape [{x.shape[0]}] "
                               "(reduce over the event dimensions inside f, e.g. .sum(-1))")
        if x._version != version:  # the estimator's own samples changed under it: silently wrong
            raise GradestError(f"cost {label} changed its input in place (an op like x.add_ or x[...] = ); "
                               "compute on a copy or out of place, e.g. x = x + 1")
        if not y.dtype.is_floating_point or y.device != x.device:
            raise GradestError(f"cost {label} returned {y.dtype} on {y.device} for samples of {x.dtype} on "
                               f"{x.device}; return real floating-point values on the samples' device "
                               "(e.g. .real or .double())")
        return y

    return f


def probe(f: Callable[[torch.Tensor], torch.Tensor], dist, generator: torch.Generator,
          num_samples: int = 2) -> None:
    """Call ``f`` once on ``num_samples`` draws of ``dist``: a cost that fails (raises, exits, returns
    the wrong shape, or NaN/inf) fails here, in one line, before any estimator runs. Use it with a
    :func:`checked` cost or a named one (what :func:`load_cost` returns)."""
    from gradest.rng import sample

    y = f(sample(dist, (num_samples,), generator, reparameterized=False))
    if isinstance(y, torch.Tensor) and not bool(torch.isfinite(y).all()):
        raise NonFiniteError("the cost returned NaN or inf on samples of the distribution; check its "
                             "domain and --k (it must be finite where the distribution puts mass)")
