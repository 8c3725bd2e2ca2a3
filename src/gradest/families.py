"""Named families of distributions for the command line and for problem specs.

Each entry is a ``torch.distributions`` class with the parameter sets it accepts; gradest adds
nothing to the math of a family, only names, checks and precise messages.

Parameters that make a family degenerate are refused: a Dirichlet or Categorical over one category
is a point mass whatever its parameter (∇θ E f = 0, and estimators report SNRs built from rounding
noise), and Poisson(0) is a point mass at 0 where the score x/λ − 1 is undefined.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import distributions as D

from gradest.errors import GradestError
from gradest.stats import check_dense


class Family(NamedTuple):
    name: str
    cls: type[D.Distribution]
    #: accepted parameter sets; exactly one must be given (e.g. probs or logits)
    param_sets: tuple[tuple[str, ...], ...]

    def build(self, **params: torch.Tensor) -> D.Distribution:
        """The distribution, its arguments validated; a GradestError names what torch refused."""
        try:
            return self.cls(**params, validate_args=True)
        except (ValueError, TypeError, RuntimeError) as err:
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise GradestError(f"invalid parameters for {self.name}: {first}; it takes "
                               f"{self._accepted()}") from None

    def _accepted(self) -> str:
        return " or ".join("{" + ", ".join(s) + "}" for s in self.param_sets)

    def check(self, params: Mapping[str, torch.Tensor]) -> None:
        """Raise GradestError unless ``params`` is one accepted set with values in range."""
        if not isinstance(params, Mapping):
            raise GradestError(f"family {self.name!r} takes a mapping of parameter name -> tensor "
                               f"{self._accepted()}, got {type(params).__name__}")
        given = tuple(sorted(map(str, params)))
        if given not in {tuple(sorted(s)) for s in self.param_sets}:
            raise GradestError(
                f"family {self.name!r} takes parameters {self._accepted()}, got {{{', '.join(given)}}}"
            )
        for key, value in params.items():
            _check_tensor(self.name, key, value)
        for key, value in params.items():
            if not torch.isfinite(value).all():
                raise GradestError(f"parameter {key}={value.tolist()} of {self.name} must be finite")
        # Some families (Uniform) declare constraints that depend on the other parameters, as a property
        # of an instance: those are checked by building it below.
        declared = self.cls.arg_constraints
        constraints = declared if isinstance(declared, dict) else {}
        for key, value in params.items():
            constraint = constraints.get(key)
            rank = getattr(constraint, "event_dim", 0)
            if value.dim() < rank:  # a vector parameter given as a number (concentration=2)
                raise GradestError(
                    f"parameter {key}={value.tolist()} of {self.name} must be a vector (one entry per "
                    f"category), e.g. {key}={_two_categories(key)}"
                )
            if constraint is not None and not bool(constraint.check(value).all()):
                raise GradestError(
                    f"parameter {key}={value.tolist()} of {self.name} is out of range: "
                    f"{_describe(constraint)}"
                )
        # shapes must broadcast; a parameter of lower rank is shared (scale=1 beside loc=[0, 1] is one
        # scale for both coordinates, and its gradient is the gradient of that one number)
        try:
            torch.broadcast_shapes(*(v.shape for v in params.values()))
        except RuntimeError:
            widest = max(params.values(), key=lambda v: v.numel())
            given = ", ".join(f"{k} {list(v.shape)}" for k, v in params.items())
            raise GradestError(
                f"parameters of {self.name} have shapes that do not broadcast: {given}; give them one "
                f"shape, e.g. {_example(widest.shape)}, or a scalar to share one value"
            ) from None
        self.build(**params)
        problem = _DEGENERATE.get(self.name, lambda _: None)(params)
        if problem is not None:
            raise GradestError(f"{self.name} with {problem}")


def _check_tensor(family: str, key: str, value: object) -> None:
    """A dense real floating-point tensor with data and at least one number, or a GradestError."""
    if not isinstance(value, torch.Tensor):
        raise GradestError(f"parameter {key} of {family} must be a torch.Tensor, got {type(value).__name__}; "
                           f"wrap it with torch.tensor(..., dtype=torch.float64)")
    check_dense(value, f"parameter {key} of {family}")
    if not value.is_floating_point():
        raise GradestError(f"parameter {key} of {family} must be a real floating-point tensor to be "
                           f"differentiated, got {value.dtype}; use torch.tensor(..., dtype=torch.float64)")
    if value.numel() == 0:
        raise GradestError(f"parameter {key} of {family} has no numbers (shape {list(value.shape)}); give "
                           "at least one")


def _two_categories(key: str) -> str:
    return "[0.5,0.5]" if key == "probs" else "[1,1]"


def _one_category(params: Mapping[str, torch.Tensor]) -> str | None:
    key, value = next(iter(params.items()))
    if value.shape[-1] == 1:
        return (f"{key}={value.tolist()} has one category: it is a point mass whatever {key} is, so "
                "∇θ E f = 0 and there is nothing to estimate; give at least 2 entries, e.g. "
                f"{key}={_two_categories(key)}")
    return None


def _zero_rate(params: Mapping[str, torch.Tensor]) -> str | None:
    if bool((params["rate"] == 0).any()):
        return (f"rate={params['rate'].tolist()} is a point mass at 0 where the score x/λ − 1 is undefined; "
                "give rate > 0 (the derivative at 0 is f(1) − f(0): compute it directly)")
    return None


#: family -> a check of parameters that pass the constraints but leave nothing to estimate
_DEGENERATE = {"dirichlet": _one_category, "categorical": _one_category, "poisson": _zero_rate}


def _example(shape: torch.Size) -> str:
    """``[1, 1]``-style literal of a parameter of this shape, for messages."""
    return str(torch.ones(shape, dtype=torch.int64).tolist()).replace(" ", "")


def _describe(constraint: D.constraints.Constraint) -> str:
    text = {
        D.constraints.positive: "must be > 0",
        D.constraints.unit_interval: "must lie in [0, 1]",
        D.constraints.real: "must be a real number",
        D.constraints.simplex: "must be non-negative and sum to 1 along the last axis",
        D.constraints.real_vector: "must be a vector of real numbers",
    }
    for known, words in text.items():
        if constraint is known:
            return words
    return f"must satisfy {constraint}"


#: The named families: name -> :class:`Family` (the ``torch.distributions`` class and the parameter
#: sets it accepts), in the order the command line lists them.
FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family("normal", D.Normal, (("loc", "scale"),)),
        Family("lognormal", D.LogNormal, (("loc", "scale"),)),
        Family("laplace", D.Laplace, (("loc", "scale"),)),
        Family("gumbel", D.Gumbel, (("loc", "scale"),)),
        Family("studentt", D.StudentT, (("df", "loc", "scale"),)),
        Family("uniform", D.Uniform, (("low", "high"),)),
        Family("exponential", D.Exponential, (("rate",),)),
        Family("gamma", D.Gamma, (("concentration", "rate"),)),
        Family("beta", D.Beta, (("concentration1", "concentration0"),)),
        Family("dirichlet", D.Dirichlet, (("concentration",),)),
        Family("poisson", D.Poisson, (("rate",),)),
        Family("bernoulli", D.Bernoulli, (("probs",), ("logits",))),
        Family("categorical", D.Categorical, (("probs",), ("logits",))),
        Family("geometric", D.Geometric, (("probs",), ("logits",))),
    )
}


def get_family(name: str) -> Family:
    """The family registered under ``name`` (see ``FAMILIES``), or a GradestError listing them."""
    family = FAMILIES.get(name.lower()) if isinstance(name, str) else None
    if family is None:
        raise GradestError(f"unknown family {name!r}; choose one of: {', '.join(FAMILIES)}")
    return family
