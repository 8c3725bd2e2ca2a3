"""Estimators by name: ``get_estimator("score-loo")``, ``get_estimator("score-const=2.5")``.

Grammar: ``NAME[=ARG][+SAMPLER[=ARG]]``, e.g. ``mvd``, ``score-delta=1``, ``pathwise+antithetic``,
``score-optb+qmc=16``. The sampler suffix works on every estimator (see
:mod:`gradest.estimators.sampling`).

A registry entry is a factory ``(argument or None) -> Estimator`` so that each call returns a fresh
value (stateful baselines are never shared). Adding an estimator = one module + one ``register``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import NamedTuple

from gradest.errors import GradestError
from gradest.estimators.base import Estimator
from gradest.estimators.baselines import Constant, LeaveOneOut, MovingAverage
from gradest.estimators.control_variates import ConstantControl, ControlVariate, DeltaMethod
from gradest.estimators.mvd import MeasureValued
from gradest.estimators.pathwise import Pathwise
from gradest.estimators.sampling import SAMPLERS, get_sampler
from gradest.estimators.score import ScoreFunction

#: the Python entry-point group through which installed packages add estimators (see ``register``)
ENTRY_POINT_GROUP = "gradest.estimators"


class PluginWarning(UserWarning):
    """An installed estimator plugin failed to load; it is skipped, the rest of gradest works."""


class Entry(NamedTuple):
    """One registered estimator (see :func:`register` for the fields)."""

    factory: Callable[[str | None], Estimator]
    summary: str
    argument: str | None  # name of the "=VALUE" argument, None if the estimator takes none
    required: bool  # whether the argument must be given
    #: (kit, argument) -> its single-sample estimate as terms, for exact variances; None: not covered
    variance: Callable | None = None


_REGISTRY: dict[str, Entry] = {}
_PLUGINS = {"loaded": False}


def register(name: str, summary: str, argument: str | None = None, required: bool = False,
             variance: Callable | None = None
             ) -> Callable[[Callable[[str | None], Estimator]], Callable[[str | None], Estimator]]:
    """Decorator adding an estimator factory to the registry, so that every part of gradest (the
    command line, ``select``, the sweep, the conformance kit :mod:`gradest.testing`) finds it by name.

    Usage::

        @gradest.register("my-score", "score function with my baseline", argument="b")
        def _make(arg: str | None) -> gradest.Estimator:
            return MyScore(float(arg) if arg else 0.0)

    The estimator is a subclass of :class:`gradest.Estimator` implementing the public hook ``terms``
    and declaring ``capabilities`` (see :mod:`gradest.estimators.base`). An installed package makes
    it visible to the ``gradest`` command as well by declaring an entry point in the group
    ``gradest.estimators`` whose value is the module that calls ``register`` (or a function of no
    arguments that does), e.g. in pyproject.toml::

        [project.entry-points."gradest.estimators"]
        my-score = "my_package.estimators"

    Entry points load when the registry is first listed or queried; one that fails to load is
    skipped with a one-line :class:`PluginWarning` naming it.

    Args:
        name: the registry name, used as ``NAME[=ARG][+SAMPLER]``; no ``+`` or ``=``, not taken.
        summary: one line for ``gradest compare --help`` and :func:`available`.
        argument: the name of the ``=VALUE`` argument (shown upper-case, ``score-const=B``), or None
            when the estimator takes none.
        required: whether the argument must be given.
        variance: optional hook ``(kit, arg) -> Decomposition`` giving the estimator's single-sample
            estimate as terms of base variables (a :class:`gradest.lab.variance_exact.TermKit` is the
            vocabulary), so that ``gradest sweep`` draws its exact-variance curve; None: no curve.

    Returns:
        The decorator; it returns the factory unchanged.

    Raises:
        GradestError: an empty name, one with ``+``, ``=`` or white space, or one already registered;
            a summary that is not one line of text; an argument name that is not a word; required
            without an argument; a variance hook or a factory that is not callable.
    """
    _check_word(name, "an estimator name", "my-score")
    if "+" in name or "=" in name:
        raise GradestError(f"estimator names cannot contain '+' or '=' (the spec grammar), got {name!r}; "
                           "use letters, digits and '-', e.g. 'my-score'")
    if name in _REGISTRY:
        raise GradestError(f"estimator {name!r} is already registered; choose another name (registered: "
                           f"{', '.join(_REGISTRY)})")
    if not isinstance(summary, str) or not summary.strip() or "\n" in summary or "\r" in summary:
        raise GradestError(f"the summary of estimator {name!r} must be one non-empty line of text, got "
                           f"{summary!r}")
    if argument is not None:
        _check_word(argument, f"the argument name of estimator {name!r}", "b")
        if "+" in argument or "=" in argument:
            raise GradestError(f"the argument name of estimator {name!r} cannot contain '+' or '=', got "
                               f"{argument!r}")
    if not isinstance(required, bool):
        raise GradestError(f"required must be True or False, got {required!r}")
    if required and argument is None:
        raise GradestError(f"estimator {name!r}: required=True needs an argument name, e.g. argument='b'")
    if variance is not None and not callable(variance):
        raise GradestError(f"the variance hook of estimator {name!r} must be a function (kit, arg) -> "
                           f"terms, or None; got {type(variance).__name__}")

    def wrap(factory: Callable[[str | None], Estimator]) -> Callable[[str | None], Estimator]:
        if not callable(factory):
            raise GradestError(f"register({name!r}, …) decorates a factory (argument or None) -> "
                               f"Estimator, got {type(factory).__name__}")
        if name in _REGISTRY:
            raise GradestError(f"estimator {name!r} is already registered; choose another name")
        _REGISTRY[name] = Entry(factory, summary, argument, required, variance)
        return factory

    return wrap


def _check_word(text: object, what: str, example: str) -> None:
    """A non-empty string without white space (it is typed on a command line), or a GradestError."""
    if not isinstance(text, str) or not text or any(c.isspace() for c in text) or not text.isprintable():
        raise GradestError(f"{what} must be a non-empty string without spaces, got {text!r}; "
                           f"e.g. {example!r}")


def load_plugins() -> None:
    """Import the estimators installed packages declare in the entry-point group (once per process).

    A plugin that fails (an import error, a name already taken, anything it raises) is skipped with a
    one-line :class:`PluginWarning` naming it and the failure; KeyboardInterrupt passes through.
    """
    if _PLUGINS["loaded"]:
        return
    _PLUGINS["loaded"] = True
    from importlib.metadata import entry_points

    from gradest.costs import describe_failure

    for point in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = point.load()
            if callable(loaded) and not isinstance(loaded, type(math)):
                loaded()
        except KeyboardInterrupt:
            raise
        except BaseException as err:  # a third party's code can fail in any way, sys.exit() included
            # warn_explicit with a file name that has no source: one line, no traceback
            warnings.warn_explicit(
                f"estimator plugin {point.name!r} ({point.value}) failed to load: {describe_failure(err)}; "
                "it is skipped (fix or uninstall the package that provides it)",
                PluginWarning, filename="gradest", lineno=0)


def entries() -> dict[str, Entry]:
    """Name -> :class:`Entry` of every registered estimator, installed plugins included."""
    load_plugins()
    return dict(_REGISTRY)


def lookup(name: str) -> Entry:
    """The registry entry of the estimator ``name`` (no argument or sampler), or a GradestError."""
    load_plugins()
    entry = _REGISTRY.get(name)
    if entry is None:
        raise GradestError(f"unknown estimator {name!r}; choose one of: {', '.join(available())}")
    return entry


def available() -> dict[str, str]:
    """Name -> one-line summary of every registered estimator."""
    load_plugins()
    return {
        (f"{n}={e.argument.upper()}" if e.argument else n): e.summary for n, e in _REGISTRY.items()
    }


def requires_argument(name: str) -> bool:
    """Whether the registered estimator ``name`` needs ``=VALUE`` (``score-const=B``)."""
    return lookup(name).required


def available_samplers() -> dict[str, str]:
    """Sampler suffix -> one-line summary (``NAME+SUFFIX`` works with every estimator)."""
    return dict(SAMPLERS)


def get_estimator(spec: str | Estimator) -> Estimator:
    """An estimator from ``NAME[=ARG][+SAMPLER[=ARG]]``; an Estimator passes through unchanged."""
    if isinstance(spec, Estimator):
        return spec
    if not isinstance(spec, str):
        raise GradestError(f"an estimator is a name like 'pathwise' or 'score-const=2' or an Estimator, "
                           f"got {type(spec).__name__}; see gradest.available()")
    text = spec
    if not text.strip():
        raise GradestError(f"give an estimator name, got {text!r}; choose one of: {', '.join(available())}")
    base, plus, sampler_spec = text.partition("+")
    if plus and (not sampler_spec or "+" in sampler_spec):
        raise GradestError(
            f"give exactly one sampler after '+', e.g. {base}+antithetic or {base}+qmc, got {text!r}; "
            f"samplers: {', '.join(SAMPLERS)}"
        )
    name, equals, arg = base.partition("=")
    entry = lookup(name)
    if entry.argument is None and equals:
        raise GradestError(f"estimator {name!r} takes no argument, got {spec!r}; drop the '=…'")
    if entry.required and not arg:
        raise GradestError(f"estimator {name!r} needs a value: {name}={entry.argument.upper()}")
    if equals and not arg:
        raise GradestError(f"estimator {name!r}: no value after '=' in {spec!r}; give one, "
                           f"{name}={entry.argument.upper()}, or drop the '=' for the default")
    estimator = entry.factory(arg or None)
    if not isinstance(estimator, Estimator):
        raise GradestError(f"the factory registered as {name!r} returned {type(estimator).__name__}, not a "
                           "gradest.Estimator; fix the factory (or the plugin that registers it)")
    if sampler_spec:
        estimator.sampler = get_sampler(sampler_spec)
    estimator.name = text
    return estimator


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise GradestError(f"{what} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise GradestError(f"{what} must be a finite number, got {text!r}")
    return value


@register("pathwise", "reparameterization: ∇θ f(g(ε; θ)); explicit or implicit (Gamma, Beta, …)",
          variance=lambda kit, _: kit.result(kit.pathwise()))
def _pathwise(_: str | None) -> Estimator:
    return Pathwise()


@register("score", "score function (REINFORCE): f(x) ∇θ log p(x; θ), no baseline",
          variance=lambda kit, _: kit.result(kit.score()))
def _score(_: str | None) -> Estimator:
    return ScoreFunction()


@register("score-const", "score function with a constant baseline b", argument="b", required=True,
          variance=lambda kit, arg: kit.result(kit.score(kit.minus(kit.number(arg, "the baseline b"))),
                                               sized=kit.score()))
def _score_const(arg: str | None) -> Estimator:
    return ScoreFunction(Constant(_number(arg, "the baseline b")))


@register("score-loo", "score function with the leave-one-out baseline (RLOO, unbiased, N ≥ 2)",
          # its large-N limit: the baseline E f
          variance=lambda kit, _: kit.result(kit.score(kit.minus(kit.mean_f())), sized=kit.score()))
def _score_loo(_: str | None) -> Estimator:
    return ScoreFunction(LeaveOneOut())


@register(
    "score-ema", "score function with a moving-average baseline (training loops)", argument="decay"
)
def _score_ema(arg: str | None) -> Estimator:
    return ScoreFunction(MovingAverage(_number(arg, "the decay") if arg else 0.9))


def _order(arg: str | None) -> int:
    if arg is None:
        return 2
    if arg not in ("1", "2"):
        raise GradestError(f"the delta method's Taylor order must be 1 or 2, got {arg!r}")
    return int(arg)


@register(
    "mvd",
    "measure-valued derivative, coupled (W′ = W, N = U·M); Normal, Exponential, Poisson, Bernoulli",
    variance=lambda kit, _: kit.result(kit.mvd(coupled=True)),
)
def _mvd(_: str | None) -> Estimator:
    return MeasureValued(coupled=True)


@register("mvd-uncoupled", "measure-valued derivative with independent positive and negative draws",
          variance=lambda kit, _: kit.result(kit.mvd(coupled=False)))
def _mvd_uncoupled(_: str | None) -> Estimator:
    return MeasureValued(coupled=False)


@register(
    "score-delta",
    "score function with the delta-method control variate (Taylor order 1 or 2, default 2; Normal)",
    argument="order",
    variance=lambda kit, arg: kit.result(kit.score(), control=kit.score(kit.h(kit.order(arg)))),
)
def _score_delta(arg: str | None) -> Estimator:
    return ControlVariate(ScoreFunction(), DeltaMethod(_order(arg)))


@register(
    "mvd-delta",
    "measure-valued (coupled) with the delta-method control variate (order 1 or 2, default 2; Normal)",
    argument="order",
    variance=lambda kit, arg: kit.result(kit.mvd(coupled=True),
                                         control=kit.mvd(coupled=True, order=kit.order(arg))),
)
def _mvd_delta(arg: str | None) -> Estimator:
    return ControlVariate(MeasureValued(coupled=True), DeltaMethod(_order(arg)))


@register(
    "pathwise-delta",
    "pathwise with the delta-method control variate (order 1 or 2, default 2; Normal)",
    argument="order",
    variance=lambda kit, arg: kit.result(kit.pathwise(), control=kit.pathwise(kit.dh(kit.order(arg)))),
)
def _pathwise_delta(arg: str | None) -> Estimator:
    return ControlVariate(Pathwise(), DeltaMethod(_order(arg)))


@register(
    "score-optb",
    "score function with the variance-optimal constant baseline per coordinate (leave-one-out)",
    # the constant control: the score itself, with its variance-optimal coefficient in the limit
    variance=lambda kit, _: kit.result(kit.score(), control=kit.score(kit.ones())),
)
def _score_optb(_: str | None) -> Estimator:
    return ControlVariate(ScoreFunction(), ConstantControl())


# ── discrete latent variables: relaxations, antithetic pairs, REBAR/RELAX, sets, enumeration ───


def _temperature(arg: str | None) -> float:
    value = 0.5 if arg is None else _number(arg, "the temperature")
    if value <= 0.0:
        raise GradestError(f"the temperature must be positive, got {arg!r}")
    return value


@register(
    "gumbel-softmax",
    "Concrete relaxation: ∇θ f(softmax((ℓ + g)/τ)), τ = 0.5 unless given; biased "
    "(Bernoulli, OneHotCategorical)",
    argument="temp",
)
def _gumbel_softmax(arg: str | None) -> Estimator:
    from gradest.estimators.relaxed import GumbelSoftmax

    return GumbelSoftmax(_temperature(arg))


@register("straight-through", "forward the hard sample, backward ∇θ p (Bengio et al.); biased "
          "(Bernoulli, OneHotCategorical)")
def _straight_through(_: str | None) -> Estimator:
    from gradest.estimators.relaxed import StraightThrough

    return StraightThrough()


@register(
    "gumbel-st",
    "straight-through Gumbel: forward the hard sample, backward through the relaxation at τ = 0.5 "
    "unless given; biased (Bernoulli, OneHotCategorical)",
    argument="temp",
)
def _gumbel_st(arg: str | None) -> Estimator:
    from gradest.estimators.relaxed import StraightThrough

    return StraightThrough(_temperature(arg))


@register("rebar", "score function with the Concrete relaxation as control variate (η = 1, λ = 0.5); "
          "Bernoulli")
def _rebar(_: str | None) -> Estimator:
    from gradest.estimators.rebar import Rebar

    return Rebar()


@register("relax", "REBAR with a control network trained in surrogate calls to minimise the variance; "
          "Bernoulli")
def _relax(_: str | None) -> Estimator:
    from gradest.estimators.relax import Relax

    return Relax()


@register("arm", "augment-REINFORCE-merge: (f(b̃) − f(b))(u − ½) on an antithetic pair; Bernoulli")
def _arm(_: str | None) -> Estimator:
    from gradest.estimators.arm import ARM

    return ARM()


@register("disarm", "ARM with u integrated out given the antithetic pair (lower variance); Bernoulli")
def _disarm(_: str | None) -> Estimator:
    from gradest.estimators.arm import ARM

    return ARM(disarm=True)


@register(
    "unordered-set",
    "k draws without replacement per Categorical, unordered set estimator with its baseline "
    "(k = 4 unless given, 2 to 8)",
    argument="k",
)
def _unordered_set(arg: str | None) -> Estimator:
    from gradest.estimators.unordered_set import UnorderedSet

    if arg is None:
        return UnorderedSet()
    try:
        k = int(arg)
    except ValueError:
        raise GradestError(f"the set size k must be an integer, got {arg!r}") from None
    return UnorderedSet(k)


@register("enumerate", "the exact sum over the support: zero variance (Bernoulli, Categorical; small "
          "supports)")
def _enumerate(_: str | None) -> Estimator:
    from gradest.estimators.enumeration import Enumerate

    return Enumerate()
