"""The cost f as an estimator calls it: declared parameters bound, output shape and finiteness
checked, the first call probed for the contract (:mod:`gradest.contract`); the per-sample totals
and learning-signal helpers every hook shares."""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterable, Mapping

import torch
from torch.distributions import Distribution

from gradest import contract
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.records import Cost


def check_cost(f: object) -> None:
    if not callable(f):
        raise GradestError(f"f must be a function of the samples, f(x) -> costs [N] or [N, *B], got "
                           f"{type(f).__name__}")


def declared_parameters(f: Cost, names: tuple[str, ...]) -> tuple[str, ...]:
    """The parameter names f takes after x: named ones, or all of them for ``**params``."""
    code = getattr(f, "__code__", None)
    if code is not None and not getattr(f, "__defaults__", None) and not getattr(f, "__kwdefaults__", None) \
            and not hasattr(f, "__wrapped__"):
        # a closure made anew each step shares its code object: inspect it once
        return _declared_by_code(code, names, f)
    return _declared(f, names)


_DECLARED_CACHE: dict[tuple[object, tuple[str, ...]], tuple[str, ...]] = {}


def _declared_by_code(code: object, names: tuple[str, ...], f: Cost) -> tuple[str, ...]:
    key = (code, names)
    found = _DECLARED_CACHE.get(key)
    if found is None:
        found = _declared(f, names)
        if len(_DECLARED_CACHE) > 1024:
            _DECLARED_CACHE.clear()
        _DECLARED_CACHE[key] = found
    return found


def _declared(f: Cost, names: tuple[str, ...]) -> tuple[str, ...]:
    try:
        signature = inspect.signature(f)
    except (TypeError, ValueError):  # builtins and C functions: f(x) alone
        return ()
    args = list(signature.parameters.values())
    positional = [a for a in args if a.kind in (a.POSITIONAL_ONLY, a.POSITIONAL_OR_KEYWORD)]
    if not positional and not any(a.kind is a.VAR_POSITIONAL for a in args):
        raise GradestError("f must take the samples as its first argument: f(x) or f(x, loc, …)")
    if not positional:  # f(*args, **kwargs): a generic wrapper, called as f(x)
        return ()
    rest = args[1:]
    if any(a.kind is a.VAR_KEYWORD for a in rest):
        return names
    declared = []
    for a in rest:
        if a.kind is a.VAR_POSITIONAL:
            continue
        if a.name in names:
            declared.append(a.name)
        elif a.default is a.empty:
            raise GradestError(
                f"f takes an argument {a.name!r} that is not a parameter ({', '.join(names)}); "
                "give it a default or close over it"
            )
    return tuple(declared)


def total(costs: torch.Tensor) -> torch.Tensor:
    """Σ_b f_b per sample: ``[N, *C] -> [N]``."""
    return costs if costs.dim() == 1 else costs.reshape(costs.shape[0], -1).sum(1)


def carrier(costs: torch.Tensor) -> torch.Tensor | float:
    """Σ_n Σ_b f_b(x_n) when f's output carries a gradient (of θ or of f's own tensors), else 0."""
    return costs.sum() if costs.requires_grad else 0.0


class BoundCost:
    """f with its declared parameters bound and its output checked: ``cost(x) -> [n, *C]``.

    With ``direct=True`` (n = N only) f receives the live per-sample parameters, so its output
    carries the direct dependence on θ; with ``direct=False`` it receives detached copies (the
    measure-valued and control-variate evaluations at perturbed points).
    """

    def __init__(self, f: Cost, declared: tuple[str, ...], for_f: dict[str, torch.Tensor],
                 num_samples: int, batch_shape: torch.Size, *, estimator: str = "",
                 separable: bool = False, diagnostic: bool = False,
                 watch: Mapping[str, torch.Tensor] | None = None, probe: bool = True,
                 continuous: bool = False) -> None:
        self.f = f
        self.declared = declared
        self.for_f = for_f
        self.num_samples = num_samples
        self.batch_shape = batch_shape
        #: cost elements per sample (1 for a cost of shape [N]), known after the first call
        self.elements: int | None = None
        #: the contract probe (gradest.contract): who asks, what it refuses, which parameters to watch
        self.estimator = estimator
        self.separable = separable
        self.diagnostic = diagnostic
        self.watch = {k: v for k, v in (watch or {}).items() if k not in declared}
        self.probed = not probe
        #: check on every call that f's values still resolve the draws (gradest.contract.resolution):
        #: where the estimator weights them, on a continuous family
        self.resolve = probe and separable and continuous

    def _evaluate(self, x: torch.Tensor, direct: bool) -> torch.Tensor:
        n = x.shape[0]
        if not self.declared:
            return self.f(x)
        if direct and n != self.num_samples:
            raise RuntimeError("the direct term is evaluated on the N samples only")
        kwargs = {
            k: (v if direct else v.detach()[:1].expand(n, *v.shape[1:]))
            for k, v in self.for_f.items()
            if k in self.declared
        }
        return self.f(x, **kwargs)

    def __call__(self, x: torch.Tensor, direct: bool = True) -> torch.Tensor:
        n = x.shape[0]
        if self.probed:
            out = self.check(self._evaluate(x, direct), n)
        else:
            out = self._probe(x, direct)
        self.elements = math.prod(out.shape[1:])  # per sample, whatever the number of points
        if self.resolve:
            refusal = contract.resolution(lambda z: self.check(self._evaluate(z, False), n), x, out,
                                          self.estimator)
            if refusal is not None:
                raise GradestError(refusal)
        return out

    def _probe(self, x: torch.Tensor, direct: bool) -> torch.Tensor:
        """The first evaluation, watched and repeated once on a changed draw (gradest.contract)."""
        n = x.shape[0]
        if contract.aliases(x, self.watch):  # f at the parameters themselves (a Taylor point): later
            return self.check(self._evaluate(x, direct), n)
        key = contract.key_of(self.f, x, self.watch, self.separable, self.diagnostic)
        out = contract.probe(lambda z: self.check(self._evaluate(z, direct), n), x, key, self.watch,
                             self.estimator, self.separable, self.diagnostic)
        self.probed = contract.verdict(key)[0]  # an inconclusive probe (every draw equal) runs again
        return out

    def check(self, out: object, n: int) -> torch.Tensor:
        """The cost's output as a tensor ``[n, *C]``, or a GradestError naming what is wrong."""
        if not isinstance(out, torch.Tensor):
            raise GradestError(f"f must return a torch.Tensor, got {type(out).__name__}")
        tail = tuple(out.shape[1:])
        if out.dim() == 0 or out.shape[0] != n or tail != tuple(self.batch_shape[: len(tail)]):
            per_element = f" or one per batch element, [{n}, {', '.join(map(str, self.batch_shape))}]" \
                if len(self.batch_shape) else ""
            raise GradestError(
                f"f must return one value per sample, shape [{n}]{per_element}, got {list(out.shape)}; "
                "reduce over the event dimensions inside f (e.g. .sum(-1))"
            )
        # a finite sum implies finite terms; only then is the elementwise check needed
        if not torch.isfinite(out.sum()) and not torch.isfinite(out).all():
            raise NonFiniteError("f returned NaN or inf on some samples; check f's domain")
        return out


def constant_in_x(cost: BoundCost, fx: torch.Tensor, moved: Iterable[torch.Tensor]) -> bool:
    """Whether f gives the values ``fx`` again at every moved copy of its points (then its gradient
    in x is truly zero); an f with no gradient path that fails this detaches, rounds or thresholds x.
    """
    with torch.no_grad():
        return all(torch.equal(cost(m.detach(), direct=False), fx.detach()) for m in moved)


def per_element(values: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
    """Sum ``values [N, *B]`` over the batch dimensions that ``costs [N, *C]`` does not have."""
    n, c = costs.shape[0], costs.shape[1:]
    return values.reshape(n, *c, -1).sum(-1)


def broadcast_signal(weight: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``weight [N, *C]`` with trailing singleton dims, to broadcast against ``like [N, *C, …]``."""
    return weight.reshape(*weight.shape, *([1] * (like.dim() - weight.dim())))


def cost_arguments(replicas: Mapping[str, torch.Tensor], dist: Distribution, num_samples: int
           ) -> dict[str, torch.Tensor]:
    """The parameters as f receives them: ``[N, 1, …, *shape]``, broadcastable against x."""
    rank = len(dist.batch_shape) + len(dist.event_shape)
    out = {}
    for k, v in replicas.items():
        shape = v.shape[1:]
        while len(shape) and shape[0] == 1 and len(shape) > rank:  # aligned replicas: drop extra ones
            shape = shape[1:]
        pad = max(rank - len(shape), 0)
        out[k] = v.reshape(num_samples, *([1] * pad), *shape)
    return out
