r"""The shared interface of every gradient estimator of L(θ) = E_{x~p(x;θ)}[Σ_b f_b(x; θ)].

An estimator is a value with two views that agree exactly on the same random numbers:

* ``per_sample(f, dist_builder, params, num_samples, generator)`` returns, for each parameter,
  the ``num_samples`` single-sample estimates ĝ_n of ∇θ L as a tensor ``[num_samples, *param.shape]``
  (their mean is the estimate; their spread is the estimator's variance);
* ``surrogate(...)`` returns a scalar whose value is the Monte Carlo estimate of L and whose
  autograd gradient is the mean of the ĝ_n; use it with any torch optimizer, with parameters
  produced by a network, and with tensors inside f that need gradients of their own (a decoder):
  they receive ∇ E f as well.

The contract, shared by every estimator:

    params: name -> floating-point tensor, all on one device, any shapes the builder broadcasts
        (``loc [B, D]`` with a shared ``scale [D]`` is fine).
    dist_builder: ``dist_builder(**params) -> torch.distributions.Distribution`` with batch shape
        B and event shape E. For ``per_sample`` it must also broadcast over a leading sample axis
        of the parameters (every torch family does; ``torch.diag`` does not, ``torch.diag_embed``
        does) and must not mix that axis (``softmax(logits, 0)``); both are detected and refused.
        ``surrogate`` needs neither, except for estimators with ``capabilities.replicates`` (control
        variates fit their coefficients on per-sample gradients).
    f: ``f(x)`` or ``f(x, **some params)``: samples ``x [N, *B, *E]`` -> costs ``[N]`` (one per
        sample) or ``[N, *B[:k]]`` (one per batch element, a per-datum cost; f_b may depend on the
        element's own x_b only). The estimand is E[Σ_b f_b]. A cost that depends on θ declares the
        parameters it uses by name (``def f(x, loc)`` or ``**params``): it then receives them with a
        leading sample axis, shaped ``[N, 1, …, *param.shape]`` to broadcast against x, and both
        views add the direct term E[∂f/∂θ]. A cost that uses a parameter without declaring it is
        refused by ``per_sample`` (its direct term would be lost) with that fix.
    num_samples: N ≥ ``min_samples``.
    generator: the ``torch.Generator`` all randomness comes from (see :mod:`gradest.rng`).

With per-element costs the score-function family uses each element's own cost as the learning
signal of that element's log-density, and baselines work per element, so an element's variance
does not grow with the batch size.

Both views come from one hook, ``terms``, which returns :class:`Terms`: a scalar S(θ) = Σ_n s_n
whose gradient autograd computes (the pathwise path, a declared cost's direct term, a log-density),
pairs (φ, ĝ_φ) of a family tensor and the explicit single-sample gradients with respect to it
(measure-valued derivatives, control variates, analytic scores), and the N total costs. ĝ_n is
∂s_n/∂θ_n plus ĝ_φ,n carried to θ_n by the chain rule, where θ_n is sample n's private copy of the
parameters. ``per_sample`` replicates θ along a leading sample axis (``expand``, no copy) and
takes ONE backward pass with the pairs' ĝ as output gradients; the surrogate builds the
distribution once, draws ``sample_shape=(N,)`` from it and returns
mean(f) + (S − S.detach() + Σ ⟨φ, Σ_n ĝ_φ,n⟩)/N with the pairs' sums taken before autograd sees
them. Both draw the same noise ``[N, *B, *E]`` from the generator, so they agree. Autograd's chain
rule carries every ĝ to the builder's parameterization (log-scale, logits, a network's weights).
"""

from __future__ import annotations

import functools
import inspect
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.distributions import Distribution, Independent, TransformedDistribution, constraints
from torch.distributions.utils import clamp_probs

from gradest import contract, health, limits, rng
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators.sampling import Sampler, inverse_cdf, open_unit
from gradest.stats import mean_stderr

Cost = Callable[..., torch.Tensor]
Builder = Callable[..., Distribution]
REDUCTIONS = ("sum", "mean")
#: what ``Capabilities.node`` may say
NODE_ROLES = ("score", "reparameterized", "callable", "none")


class PerSampleGradients(NamedTuple):
    """Single-sample gradient estimates of one estimator call.

    grads: name -> ``[N, *param.shape]``; ``grads[k].mean(0)`` is the estimate of ∂L/∂θ_k.
    values: ``[N]`` total costs Σ_b f_b(x_n) (their mean estimates L).
    seconds: wall-clock time of the call.
    estimator: the estimator's name.
    groups: ``[N]`` integer labels, or None when the N estimates are i.i.d. Samples with different
        labels are independent (antithetic pairs, quasi-Monte Carlo randomizations); samples that
        share a label are not, so the standard error of the mean comes from the group means.
    """

    grads: dict[str, torch.Tensor]
    values: torch.Tensor
    seconds: float
    estimator: str
    groups: torch.Tensor | None = None

    @property
    def num_samples(self) -> int:
        """N, the number of single-sample estimates."""
        return int(self.values.shape[0])

    def mean(self) -> dict[str, torch.Tensor]:
        """The estimate of ∂L/∂θ: the mean of the single-sample gradients, per parameter."""
        return {k: g.mean(0) for k, g in self.grads.items()}

    def stderr(self) -> dict[str, torch.Tensor]:
        """Standard error of each mean, over independent groups when the samples are not i.i.d."""
        return {k: mean_stderr(g, self.groups) for k, g in self.grads.items()}


@dataclass(frozen=True)
class Capabilities:
    """What an estimator needs, as data (read by ``applicable``, ``select`` and the docs).

    needs_rsample: the family must be reparameterizable (``has_rsample``).
    differentiates_f: uses ∂f/∂x (f must be differentiable in x).
    families: the families it has rules for (``Independent`` of them too); None: any family.
    discrete: works for families with a discrete support.
    fixed_support: the support must not move with θ (score-function identities).
    biased: biased by design (continuous relaxations of discrete variables): its mean is not
        ∇θ L, and reports say so beside the measured bias.
    replicates: needs per-sample gradients inside ``surrogate`` too (control variates fit their
        coefficients on them), so the builder must broadcast over the sample axis there as well.
    interior: needs the probabilities of a discrete family given as ``probs`` strictly inside
        (0, 1): at 0 or 1 one outcome is never drawn (and torch clamps log p), so a likelihood-ratio
        estimate of the derivative there is 0 whatever f is.
    separable: weights each element's log-density (or perturbation) by that element's own cost, so
        a per-element cost f_n,b must depend on x_n,b alone (probed on the first call, refused
        otherwise: :mod:`gradest.contract`). False for estimators that only differentiate f.
    health: which unhealthy draws make it silently wrong (:mod:`gradest.health`): ``"any"`` (its
        estimate reads the density at the draws and how f varies across them: draws clamped on the
        support's edge or collapsed onto a point), ``"continuous"`` (only a continuous family's, whose
        perturbed points collapse with the draws: measure-valued derivatives), ``"none"`` (f′(x)
        ∂x/∂θ along explicit paths, enumeration; implicit paths have regimes of their own).
    node: how it runs as a node of a stochastic computation graph (:mod:`gradest.graph`):
        ``"score"`` (a DiCE score term, every order), ``"reparameterized"`` (``node_sample`` returns a
        draw whose autograd path carries the gradient), ``"callable"`` (terminal, with ``then=``: its
        hook runs on the downstream cost, first order), ``"none"`` (no node form: ``node_refusal``
        says why). A registered estimator is a callable node unless it says otherwise.
    """

    needs_rsample: bool = False
    differentiates_f: bool = False
    families: tuple[type[Distribution], ...] | None = None
    discrete: bool = True
    fixed_support: bool = False
    biased: bool = False
    replicates: bool = False
    interior: bool = False
    separable: bool = True
    health: str = "any"
    node: str = "callable"

    def __post_init__(self) -> None:
        if self.health not in health.KINDS:
            raise GradestError(f"Capabilities.health must be one of {', '.join(health.KINDS)}, "
                               f"got {self.health!r}")
        if self.node not in NODE_ROLES:
            raise GradestError(f"Capabilities.node must be one of {', '.join(NODE_ROLES)}, got {self.node!r}")
        for flag in ("needs_rsample", "differentiates_f", "discrete", "fixed_support", "biased", "replicates",
                     "interior", "separable"):
            if not isinstance(getattr(self, flag), bool):
                raise GradestError(f"Capabilities.{flag} must be True or False, got {getattr(self, flag)!r}")
        families = self.families
        if families is not None and (not isinstance(families, tuple) or not all(
                isinstance(c, type) and issubclass(c, Distribution) for c in families)):
            raise GradestError("Capabilities.families must be None or a tuple of torch.distributions "
                               f"classes, got {families!r}")


# ── parameters, builders, costs ─────────────────────────────────────────────────────────────


def check_params(params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if not isinstance(params, Mapping) or not params:
        raise GradestError("params must be a non-empty mapping of name -> tensor")
    out = {}
    for name, value in params.items():
        if not isinstance(value, torch.Tensor):
            raise GradestError(
                f"parameter {name!r} must be a torch.Tensor, got {type(value).__name__}; "
                f"wrap it with torch.tensor(...)"
            )
        if value.layout != torch.strided:
            raise GradestError(f"parameter {name!r} is a {value.layout} tensor; give a dense one "
                               "(.to_dense())")
        if value.device.type == "meta":
            raise GradestError(f"parameter {name!r} is on the meta device, which holds no values; give it "
                               "values on cpu or cuda (e.g. torch.empty_like(p, device='cpu'))")
        if not value.is_floating_point():
            raise GradestError(
                f"parameter {name!r} must be a floating-point tensor to be differentiated, "
                f"got dtype {value.dtype}; use torch.tensor(..., dtype=torch.float64)"
            )
        if value.numel() == 0:
            raise GradestError(f"parameter {name!r} has no elements (shape {list(value.shape)}): there is no "
                               "gradient to estimate; give it at least one value")
        finite = torch.isfinite(value)
        if not finite.all():
            bad = int((~finite).sum())
            raise NonFiniteError(
                f"parameter {name!r} contains NaN or inf ({bad} of {value.numel()} values"
                f"{', shape ' + str(list(value.shape)) if value.dim() else ''}); a diverged run, or the "
                "parameters need checking before the call"
            )
        out[name] = value
    dtypes = {str(v.dtype).removeprefix("torch.") for v in out.values()}
    if len(dtypes) > 1:
        raise GradestError(
            f"the parameters have different dtypes ({', '.join(sorted(dtypes))}), and torch would compute "
            "at the lower precision without a word; convert them to one, e.g. .to(torch.float64)"
        )
    devices = {str(v.device) for v in out.values()}
    if len(devices) > 1:
        raise GradestError(
            f"the parameters live on different devices ({', '.join(sorted(devices))}); move them to one "
            "with .to(device)"
        )
    return out


def build(dist_builder: Builder, params: Mapping[str, torch.Tensor]) -> Distribution:
    """Call the builder, turning torch's constraint errors into a message naming the parameter."""
    try:
        dist = dist_builder(**params)
    except (ValueError, TypeError, RuntimeError, IndexError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise GradestError(f"could not build the distribution from {sorted(params)}: {first}") from None
    if not isinstance(dist, Distribution):
        raise GradestError(
            f"dist_builder must return a torch.distributions.Distribution, got {type(dist).__name__}"
        )
    return dist


def check_num_samples(num_samples: int, minimum: int = 1) -> int:
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < minimum:
        raise GradestError(f"num_samples must be an integer ≥ {minimum}, got {num_samples!r}")
    return num_samples


#: below this many numbers (N × numbers per sample) a call is not checked against free memory
_MEMORY_CHECK_FROM = 2**26


def check_memory(num_samples: int, params: Mapping[str, torch.Tensor], dist: Distribution) -> None:
    """Refuse, with the N that fits, a call whose draws and per-sample gradients exceed free memory."""
    numbers = sum(v.numel() for v in params.values()) + dist.batch_shape.numel() * dist.event_shape.numel()
    if num_samples * numbers >= _MEMORY_CHECK_FROM:
        limits.refuse_beyond_memory("num_samples", num_samples, numbers)


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
                 watch: Mapping[str, torch.Tensor] | None = None, probe: bool = True) -> None:
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
        return out

    def _probe(self, x: torch.Tensor, direct: bool) -> torch.Tensor:
        """The first evaluation, watched and repeated once on a changed draw (gradest.contract)."""
        n = x.shape[0]
        if contract.aliases(x, self.watch):  # f at the parameters themselves (a Taylor point): later
            return self.check(self._evaluate(x, direct), n)
        key = contract.key_of(self.f, x, self.watch, self.separable, self.diagnostic)
        known, refusal = contract.verdict(key)
        if known:
            self.probed = True
            if refusal is not None:
                raise GradestError(refusal)
            return self.check(self._evaluate(x, direct), n)
        with contract.replayed_rng(x.device) as replay:
            with contract.reads(self.watch) as found:
                out = self.check(self._evaluate(x, direct), n)
            if found:
                refusal = contract.undeclared_message(found[0])
            else:
                swapped = contract.swap(x, math.prod(out.shape[1:]))
                if swapped is None:  # every draw equal: nothing to compare yet, probe the next call
                    return out
                moved, element, _ = swapped
                replay()
                with torch.no_grad():
                    kind = contract.mixing(out, self.check(self._evaluate(moved, direct), n), element)
                    if kind is not None:  # the same draws again: a cost that is random, not mixing?
                        replay()
                        if contract.mixing(out, self.check(self._evaluate(x, direct), n), element):
                            kind = None  # f is not a function of x alone here: nothing to conclude
                if (kind == "samples" and (self.separable or self.diagnostic)) \
                        or (kind == "elements" and self.separable):
                    refusal = contract.mixing_message(kind, self.estimator or "the estimator",
                                                      list(out.shape))
        contract.remember(key, refusal)
        self.probed = True
        if refusal is not None:
            raise GradestError(refusal)
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


class Terms(NamedTuple):
    """What an estimator's hook returns (see the module docstring).

    carrier: S = Σ_n s_n, or 0.0 when nothing in it depends on θ.
    explicit: (φ, ĝ_φ) pairs: φ a family tensor (``[N, *S]`` replicated, ``[*S]`` shared), ĝ_φ
        ``[N, *S]`` detached single-sample gradients with respect to it.
    values: ``[N]`` total costs Σ_b f_b(x_n), detached.
    """

    carrier: torch.Tensor | float
    explicit: list[tuple[torch.Tensor, torch.Tensor]]
    values: torch.Tensor

    def gradients(self, targets: list[torch.Tensor], retain_graph: bool = False) -> list[torch.Tensor]:
        """Per-sample gradients with respect to replicated ``targets``, in one backward pass."""
        outputs, grads = [], []
        if isinstance(self.carrier, torch.Tensor) and self.carrier.requires_grad:
            outputs.append(self.carrier)
            grads.append(torch.ones_like(self.carrier))
        for phi, g in self.explicit:
            if phi.requires_grad:
                outputs.append(phi)
                grads.append(g.detach().expand_as(phi))
        if not outputs:
            return [torch.zeros_like(t) for t in targets]
        return list(torch.autograd.grad(outputs, targets, grads, retain_graph=retain_graph,
                                        allow_unused=True, materialize_grads=True))

    def scalar(self) -> torch.Tensor | float:
        """S + Σ ⟨φ, Σ_n ĝ_φ,n⟩: its gradient is the sum of the single-sample estimates."""
        out = self.carrier
        for phi, g in self.explicit:
            g = g.detach()
            out = out + ((phi * g.sum(0)).sum() if phi.dim() < g.dim() else (phi * g).sum())
        return out


# ── layouts: how parameters are replicated along the sample axis ───────────────────────────


def plain_replicas(params: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    return {k: v.expand(n, *v.shape) for k, v in params.items()}


def _aligned(params: Mapping[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """Right-aligned: a parameter of lower rank gets singleton axes after the sample axis."""
    rank = max(v.dim() for v in params.values())
    return {k: v.reshape(*([1] * (rank - v.dim())), *v.shape).expand(n, *([1] * (rank - v.dim())), *v.shape)
            for k, v in params.items()}


def _family_tensors(dist: Distribution, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors a distribution was built from (its arg_constraints), recursing into parts."""
    try:
        names = list(dist.arg_constraints)
    except NotImplementedError:
        names = []
    for name in names:
        value = vars(dist).get(name)
        if isinstance(value, torch.Tensor):
            yield prefix + name, value
    for name, value in vars(dist).items():
        if isinstance(value, Distribution):
            yield from _family_tensors(value, f"{prefix}{name}.")


def _mixes(replicated: Distribution, single: Distribution, rows: int) -> str | None:
    """The first family tensor whose replicated rows differ from the single build (None: none)."""
    for (name, a), (_, b) in zip(_family_tensors(replicated), _family_tensors(single), strict=False):
        try:
            b = torch.broadcast_to(b, a.shape)
        except RuntimeError:
            return name
        if a.shape[:1] != (rows,):
            return name
        eps = torch.finfo(a.dtype).eps if a.is_floating_point() else 0.0
        tol = math.sqrt(eps) if eps else 0.0
        a, b = a.detach(), b.detach()
        if not torch.allclose(a, b, rtol=tol, atol=tol * (1.0 + float(b.abs().max()))):
            return name
    return None


def replicate(dist_builder: Builder, params: Mapping[str, torch.Tensor], num_samples: int,
              single: Distribution | None = None
              ) -> tuple[dict[str, torch.Tensor], Distribution, Distribution]:
    """Replicas ``[N, …]`` of the parameters, the replicated distribution and the single one.

    Tries the plain layout (every parameter ``[N, *shape]``), then the right-aligned one (a shared
    parameter of lower rank gets singleton axes), on a probe of R replicas (R ≥ 2, a size no axis
    has): the builder must give batch shape ``[R, *B]`` and the same family tensors in every row as
    without replication. ``single``: the build from ``params`` themselves, where the caller has it.
    """
    single = build(dist_builder, params) if single is None else single
    # probe with a replica count no axis has, so that broadcasting cannot succeed by coincidence
    sizes = {n for v in params.values() for n in v.shape} | set(single.batch_shape) | set(single.event_shape)
    rows = next(r for r in range(2, 3 + len(sizes)) if r not in sizes)
    target = torch.Size((rows, *single.batch_shape))
    layouts = [plain_replicas] if len({v.dim() for v in params.values()}) == 1 else [plain_replicas, _aligned]
    problems = []
    for layout in layouts:
        try:
            probe = dist_builder(**layout(params, rows))
        except Exception as err:  # any failure of the user's builder on replicas means: not this layout
            problems.append(f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            continue
        if not isinstance(probe, Distribution) or probe.batch_shape != target \
                or probe.event_shape != single.event_shape:
            shape = list(probe.batch_shape) if isinstance(probe, Distribution) else type(probe).__name__
            problems.append(f"batch shape {shape} instead of {list(target)}")
            continue
        mixed = _mixes(probe, single, rows)
        if mixed is not None:
            raise GradestError(
                f"the builder mixes the leading sample axis: built from {rows} replicas of the parameters, "
                f"its {mixed!r} differs from the one built from the parameters themselves (a softmax, "
                "sum or mean over dim 0?); act on each sample alone with negative dims, e.g. "
                "softmax(logits, -1)"
            )
        replicas = layout(params, num_samples)
        if isinstance(dist_builder, type) and issubclass(dist_builder, Distribution):
            # a torch family: the single build validated these very values, N copies need no check
            dist = build(functools.partial(dist_builder, validate_args=False), replicas)
        else:
            dist = build(dist_builder, replicas)
        if dist.batch_shape != (num_samples, *single.batch_shape):
            problems.append(f"batch shape {list(dist.batch_shape)} with {num_samples} replicas")
            break
        return replicas, dist, single
    raise GradestError(
        "per-sample gradients replicate the parameters along a leading sample axis, and the builder "
        f"does not broadcast over it ({'; '.join(problems)}); write it with batched operations "
        "(torch.diag_embed instead of torch.diag, x[..., None] instead of x[:, None]), or use "
        "surrogate(), which does not replicate"
    )


def _graph_reaches(output: torch.Tensor, targets: list[torch.Tensor]) -> list[int]:
    """Indices of ``targets`` (tensors needing gradients) that ``output``'s autograd graph reaches."""
    nodes, leaves = {}, {}
    for i, t in enumerate(targets):
        if t.grad_fn is not None:
            nodes[t.grad_fn] = i
        elif t.requires_grad:
            leaves[id(t)] = i
    found, seen, stack = set(), set(), [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if node in nodes:
            found.add(nodes[node])
            continue
        variable = getattr(node, "variable", None)
        if variable is not None and id(variable) in leaves:
            found.add(leaves[id(variable)])
        stack.extend(n for n, _ in node.next_functions)
    return sorted(found)


class Node(NamedTuple):
    """One stochastic node as an estimator's hook sees it.

    dist: batch shape ``[N, *B]`` (``replicated``, per_sample) or ``[*B]`` (surrogate).
    builder, params: to rebuild it (control variates need their own replicas).
    """

    dist: Distribution
    num_samples: int
    replicated: bool
    batch_shape: torch.Size
    event_shape: torch.Size
    builder: Builder
    params: dict[str, torch.Tensor]
    #: the diagnostic view (per_sample), where standard errors are read: sample health refuses a
    #: discrete family's collapsed draws there too (gradest.health)
    diagnostic: bool = False
    #: a training step of a graph built with learn=True: learned controls take their variance step,
    #: annealing schedules advance
    learn: bool = False

    @property
    def sample_shape(self) -> torch.Size:
        """The shape to draw: ``()`` for a replicated node, ``(N,)`` otherwise."""
        return torch.Size(()) if self.replicated else torch.Size((self.num_samples,))

    def like(self) -> torch.Tensor:
        """A parameter tensor: its device and dtype are those of everything the estimator makes."""
        return next(iter(self.params.values()))

    def per_sample(self, t: torch.Tensor) -> torch.Tensor:
        """A family tensor as ``[N, *shape]`` (a view: replicated already, or expanded)."""
        return t if self.replicated else t.expand(self.num_samples, *t.shape)


def unwrap(dist: Distribution) -> Distribution:
    """The family under ``Independent`` wrappers."""
    while isinstance(dist, Independent):
        dist = dist.base_dist
    return dist


def support_moves_with_parameters(dist: Distribution) -> bool:
    """Whether the support of a continuous ``dist`` depends on parameters that need gradients.

    Then ∇θ ∫_{a(θ)}^{b(θ)} f p dx has boundary terms that E[f ∇θ log p] lacks, and score-function
    or measure-valued estimates are biased. Judged on the support constraint itself: Uniform's
    interval(low, high) and Pareto's [scale, ∞) carry their parameters; the real line, the positive
    half-line and every discrete support do not (Gumbel, LogNormal, Categorical pass). Wrappers are
    looked through: ``Independent`` and ``MixtureSameFamily`` (their constraint wraps the component's),
    and ``TransformedDistribution``, whose support moves when its base's does, or when a transform with
    parameters that need gradients acts on a set other than its whole domain (a shift of the positive
    half-line, ``AffineTransform(loc, 1)`` of a Uniform), since torch reports only the codomain.
    torch's own transformed families (Gumbel, Weibull, Pareto, Kumaraswamy, …) declare their support
    and are judged on it.
    """
    if isinstance(dist, Independent):
        return support_moves_with_parameters(dist.base_dist)
    if isinstance(dist, TransformedDistribution) and type(dist).support is TransformedDistribution.support:
        # a chain the user built: torch reports the last codomain only, so follow the images
        return _transformed_support_moves(dist)
    try:
        support = dist.support
    except NotImplementedError:
        return False
    if support.is_discrete:
        return False
    return _constraint_moves(support)


def _constraint_moves(support: constraints.Constraint) -> bool:
    while hasattr(support, "base_constraint"):  # independent, MixtureSameFamily's and similar wrappers
        if _carries_gradient(support):
            return True
        support = support.base_constraint
    return _carries_gradient(support)


def _carries_gradient(obj: object) -> bool:
    return any(isinstance(v, torch.Tensor) and v.requires_grad for v in vars(obj).values())


Span = tuple[float, float] | None  # a fixed interval (lo, hi), or None: not known exactly


def _number(v: object) -> float | None:
    """A plain number, or a tensor without gradient holding one value throughout; else None."""
    if isinstance(v, torch.Tensor):
        if v.requires_grad or v.numel() == 0 or not bool((v == v.reshape(-1)[0]).all()):
            return None
        return float(v.reshape(-1)[0])
    return float(v) if isinstance(v, int | float) else None


def _span(c: constraints.Constraint) -> Span:
    """The fixed interval a continuous support constraint describes (boundary points aside)."""
    while hasattr(c, "base_constraint"):  # independent, MixtureSameFamily's and similar wrappers
        c = c.base_constraint
    bounds = {k: _number(v) for k, v in vars(c).items()}
    if any(v is None for v in bounds.values()):
        return None
    inf = math.inf
    if isinstance(c, constraints._Real):
        return -inf, inf
    if isinstance(c, constraints._GreaterThan | constraints._GreaterThanEq):
        return bounds["lower_bound"], inf
    if isinstance(c, constraints._LessThan):
        return -inf, bounds["upper_bound"]
    if isinstance(c, constraints._Interval | constraints._HalfOpenInterval):
        return bounds["lower_bound"], bounds["upper_bound"]
    return None


def _image(part: object, span: Span) -> tuple[bool, Span]:
    """(moves, image) of a fixed interval under one transform: whether the image depends on parameters
    that need gradients, and the image when it is known exactly (torch reports only codomains)."""
    moving = _carries_gradient(part)
    if isinstance(part, torch.distributions.AffineTransform):
        loc, scale = _number(part.loc), _number(part.scale)
        if span == (-math.inf, math.inf):
            return False, span  # the real line onto itself, whatever loc and scale
        if span is None:
            return moving, None
        if isinstance(part.loc, torch.Tensor) and part.loc.requires_grad:
            return True, None
        if loc is None:
            return False, None
        sign = torch.sign(torch.as_tensor(part.scale)).detach()
        if not bool((sign == sign.reshape(-1)[0]).all()):
            return moving, None
        if scale is None:  # scale needs gradients: only the bounds 0 and ±∞ stay where they are
            if any(math.isfinite(b) and b != 0 for b in span):
                return True, None
            scale = float(sign.reshape(-1)[0])
        ends = sorted(loc + (scale * b if b != 0 else 0.0) for b in span)
        return False, (ends[0], ends[1])
    if isinstance(part, torch.distributions.PowerTransform) and span is not None and span[0] >= 0:
        exponent = _number(part.exponent)
        if exponent is None:  # 0, 1 and ∞ are fixed points of every positive power
            sign = torch.sign(torch.as_tensor(part.exponent)).detach()
            if any(b not in (0.0, 1.0, math.inf) for b in span) \
                    or not bool((sign == sign.reshape(-1)[0]).all()):
                return True, None
            exponent = float(sign.reshape(-1)[0])
        ends = sorted(b**exponent if b != 0 or exponent > 0 else math.inf for b in span)
        return False, (ends[0], ends[1])
    if isinstance(part, torch.distributions.ExpTransform) and span is not None:
        return False, (math.exp(span[0]), math.exp(span[1]))
    onto = span is not None and bool(part.bijective) and span == _span(part.domain)
    if moving and not onto:
        return True, None
    if _constraint_moves(part.codomain):
        return True, None
    return False, (_span(part.codomain) if onto else None)


def _transformed_support_moves(dist: TransformedDistribution) -> bool:
    base = dist.base_dist
    if is_discrete(base):
        return False
    if support_moves_with_parameters(base):
        return True
    try:
        span = _span(base.support)
    except NotImplementedError:
        span = None
    for transform in dist.transforms:
        for part in getattr(transform, "parts", None) or [transform]:  # ComposeTransform
            moves, span = _image(part, span)
            if moves:
                return True
    return False


def at_the_boundary(family: Distribution) -> bool:
    """Whether a discrete family was given ``probs`` at 0 or 1, or so near that torch clamps them
    (within its dtype's ε, where log p and its derivative are those of the clamped value)."""
    probs = vars(family).get("probs")
    if not isinstance(probs, torch.Tensor) or not is_discrete(family):
        return False
    probs = probs.detach()
    return bool((clamp_probs(probs) != probs).any())


def has_inverse_cdf(dist: Distribution) -> bool:
    """Whether torch implements ``icdf`` for the family under ``Independent`` and transform wrappers."""
    while isinstance(dist, Independent | TransformedDistribution):
        dist = dist.base_dist
    return type(dist).icdf is not Distribution.icdf


def is_discrete(dist: Distribution) -> bool:
    try:
        return bool(dist.support.is_discrete)
    except NotImplementedError:
        return False


# ── the template ────────────────────────────────────────────────────────────────────────────


class Estimator:
    """Template for estimators: a subclass implements the public hook ``terms`` and declares
    ``capabilities``; ``per_sample`` and ``surrogate`` do the rest (checks, replication, backward).

    A new estimator (registered with :func:`gradest.register`) implements::

        def terms(self, cost, node, generator) -> Terms:
            x = self.draw(node, generator, reparameterized=...)   # [N, *B, *E] from the generator
            fx = cost(x)                                          # [N] or [N, *C], checked
            ...
            return Terms(carrier, [(φ, ĝ_φ), ...], total(fx.detach()))

    where ``carrier`` is a scalar whose autograd gradient with respect to sample n's parameters is
    that sample's estimate (or the part of it autograd computes), and the (φ, ĝ_φ) pairs hand
    explicit single-sample gradients with respect to family tensors φ (``node.dist``'s ``loc``,
    ``probs``, …) to the chain rule. ``node.replicated`` tells whether φ carries the sample axis.
    """

    name: str = "estimator"
    #: Smallest number of samples the estimator accepts.
    min_samples: int = 1
    #: Where the randomness of a sample comes from: None (the family's own sampler) or a Sampler.
    sampler: Sampler | None = None
    capabilities: Capabilities = Capabilities()
    #: whether a sampler's uniforms reach x through the family's inverse CDF (``draw``)
    draws_through_inverse_cdf: bool = True

    # hooks and helpers for subclasses ------------------------------------------------------

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator) -> Terms:
        """The single-sample estimates as :class:`Terms`, on the node's samples."""
        raise NotImplementedError

    def draw(self, node: Node, generator: torch.Generator, reparameterized: bool) -> torch.Tensor:
        """x ~ p(x; θ) ``[N, *B, *E]``: from the generator, or through the sampler's inverse CDF."""
        if self.sampler is None:
            x = rng.sample(node.dist, node.sample_shape, generator, reparameterized)
        else:
            dim = node.batch_shape.numel() * node.event_shape.numel()
            u = self.sampler.uniforms(node.num_samples, dim, generator)
            x = inverse_cdf(node, u, self.sampler)
            # detach for sample(): the score function must see no path from θ through x
            x = x if reparameterized else x.detach()
        self.healthy(node, x)
        return x

    #: why it has no graph-node form (``capabilities.node == "none"``), read by the graph's refusal
    node_refusal: str = "has no node form"

    def node_sample(self, node: Node, generator: torch.Generator) -> torch.Tensor:
        """A reparameterized graph node's draw ``[N, *B, *E]``: its autograd path carries the
        gradient to every order (``capabilities.node == "reparameterized"``)."""
        return self.draw(node, generator, reparameterized=True)

    def healthy(self, node: Node, x: torch.Tensor) -> None:
        """Refuse draws ``x [N, *B, *E]`` of the node that stopped being samples of its family
        (underflowed onto the support's edge, collapsed onto a point: :mod:`gradest.health`).
        ``draw`` calls it; a hook that draws in its own way calls it on its draws."""
        health.check(node.dist, x, self.capabilities.health, training=not node.diagnostic,
                     what=f"{self.name}: ")

    def uniforms(self, num_samples: int, dim: int, generator: torch.Generator,
                  like: torch.Tensor) -> torch.Tensor:
        """``[N, dim]`` uniforms in (0, 1) on ``like``'s device and dtype (i.i.d. without a sampler)."""
        if self.sampler is None:
            return open_unit(rng.uniform((num_samples, dim), generator, like), like.dtype)
        return open_unit(self.sampler.uniforms(num_samples, dim, generator).to(like.device), like.dtype)

    def groups(self, num_samples: int, device: torch.device | str = "cpu") -> torch.Tensor | None:
        """``[N]`` group labels of dependent samples (the sampler's), or None when i.i.d."""
        return None if self.sampler is None else self.sampler.groups(num_samples).to(device)

    def check_samples(self, num_samples: int) -> int:
        """The number of samples, validated (a positive int the sampler can split)."""
        minimum = max(self.min_samples, getattr(self.sampler, "min_samples", 1))
        num_samples = check_num_samples(num_samples, minimum)
        if self.sampler is not None:
            self.sampler.check(num_samples)
        return num_samples

    # capability checks ---------------------------------------------------------------------

    def family_refusal(self, family: Distribution) -> str:
        """Why a family outside ``capabilities.families`` is refused, naming the alternative."""
        return (
            f"{self.name} has rules for {', '.join(c.__name__ for c in self.capabilities.families)}, not "
            f"{type(family).__name__}; use 'score' or 'score-loo' (any family) or 'pathwise' "
            "(reparameterizable families) instead"
        )

    def applicable(self, dist: Distribution) -> str | None:
        """Why this estimator does not apply to ``dist`` (with the alternative), or None if it does."""
        caps = self.capabilities
        family = unwrap(dist)
        if caps.families is not None and not isinstance(family, caps.families):
            return self.family_refusal(family)
        if caps.needs_rsample and not dist.has_rsample:
            return (
                f"{self.name} needs a reparameterizable family, and {type(family).__name__} has no "
                "rsample; use the score-function estimator ('score' or 'score-loo') instead"
            )
        if not caps.discrete and is_discrete(dist):
            return f"{self.name} needs a continuous family; use 'score' or 'score-loo' instead"
        if self.sampler is not None and self.draws_through_inverse_cdf and not has_inverse_cdf(dist):
            return (
                f"sampler {self.sampler.name!r} draws through the inverse CDF, and {type(family).__name__} "
                f"has none in torch.distributions; drop the '+{self.sampler.name}' suffix for this family"
            )
        if caps.interior and at_the_boundary(family):
            return (
                f"{type(family).__name__} has probabilities at 0 or 1 (or within torch's clamp of them), "
                f"where {self.name} never "
                "sees the other outcome and estimates the derivative as 0; use 'mvd' (measure-valued: "
                "f(1) − f(0) per coordinate) or the exact gradient (gradest.exact_grad, enumeration), "
                "or keep the probabilities inside (0, 1)"
            )
        if caps.fixed_support and support_moves_with_parameters(dist):
            return (
                f"the support of {type(family).__name__} moves with its parameters, so {self.name}'s "
                "identity misses the boundary terms and would be biased; use 'pathwise' instead"
            )
        return None

    def require(self, dist: Distribution) -> None:
        """Raise a ValueError naming the alternative when this estimator does not apply to ``dist``."""
        reason = self.applicable(dist)
        if reason is not None:
            raise GradestError(reason)

    # the two views -------------------------------------------------------------------------

    def per_sample(
        self,
        f: Cost,
        dist_builder: Builder,
        params: Mapping[str, torch.Tensor],
        num_samples: int,
        generator: torch.Generator,
    ) -> PerSampleGradients:
        """Single-sample estimates ``[num_samples, *param.shape]`` for each parameter (batched)."""
        start = time.perf_counter()
        rng.check_generator(generator)
        check_cost(f)
        params = check_params(params)
        num_samples = self.check_samples(num_samples)
        declared = declared_parameters(f, tuple(params))
        # Detach: the per-sample view is a diagnostic and must not touch the caller's graph.
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        with torch.enable_grad():
            single = build(dist_builder, leaves)
            check_memory(num_samples, params, single)
            replicas, dist, single = replicate(dist_builder, leaves, num_samples, single)
            self.require(single)
            node = Node(dist, num_samples, True, single.batch_shape, single.event_shape,
                        dist_builder, replicas, diagnostic=True)
            cost = BoundCost(f, declared, cost_arguments(replicas, single, num_samples), num_samples,
                             single.batch_shape, estimator=self.name,
                             separable=self.capabilities.separable, diagnostic=True, watch=params)
            terms = self.terms(cost, node, generator)
            values = terms.values
            closed_over = _graph_reaches(terms.carrier, list(params.values())) \
                if isinstance(terms.carrier, torch.Tensor) else []
            if closed_over:
                name = list(params)[closed_over[0]]
                raise GradestError(contract.undeclared_message(name))
            grads = terms.gradients(list(replicas.values()))
        for name, g in zip(replicas, grads, strict=True):
            # a finite sum implies finite terms; only then is the elementwise check needed
            if not torch.isfinite(g.sum()) and not torch.isfinite(g).all():
                bad = int((~torch.isfinite(g)).reshape(num_samples, -1).any(1).sum())
                raise NonFiniteError(
                    f"the single-sample gradients of {name!r} are NaN or inf on {bad} of {num_samples} "
                    "samples although f is finite there: f's derivative is not (sqrt or log at 0, abs "
                    "in a pow, a where() with an inf branch); make f's derivative finite, or use a "
                    "score-function estimator, which never differentiates f"
                )
        if values.device.type == "cuda":  # kernels run asynchronously: time them to completion
            torch.cuda.synchronize(values.device)
        return PerSampleGradients(
            grads={k: g.reshape(num_samples, *params[k].shape)
                   for k, g in zip(replicas, grads, strict=True)},
            values=values.detach(),
            seconds=time.perf_counter() - start,
            estimator=self.name,
            groups=self.groups(num_samples, values.device),
        )

    def surrogate(
        self,
        f: Cost,
        dist_builder: Builder,
        params: Mapping[str, torch.Tensor],
        num_samples: int,
        generator: torch.Generator,
        reduction: str = "sum",
    ) -> torch.Tensor:
        """Scalar: value = MC estimate of E[Σ_b f_b], gradient = mean of the single-sample estimates.

        ``reduction="mean"`` divides both by the number of cost elements per sample (the batch
        elements of a per-element cost; 1 for a cost of shape ``[N]``).
        """
        if reduction not in REDUCTIONS:
            raise GradestError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
        rng.check_generator(generator)
        check_cost(f)
        params = check_params(params)
        num_samples = self.check_samples(num_samples)
        declared = declared_parameters(f, tuple(params))
        dist = build(dist_builder, params)
        check_memory(num_samples, params, dist)
        self.require(dist)
        node = Node(dist, num_samples, False, dist.batch_shape, dist.event_shape, dist_builder, dict(params))
        cost = BoundCost(f, declared, cost_arguments(plain_replicas(params, num_samples), dist, num_samples),
                         num_samples, dist.batch_shape, estimator=self.name,
                         separable=self.capabilities.separable)
        terms = self.terms(cost, node, generator)
        loss = terms.values.mean()
        carried = terms.scalar()
        if isinstance(carried, torch.Tensor) and carried.requires_grad:
            # value: the Monte Carlo estimate; gradient: the mean of the single-sample estimates
            loss = loss + (carried - carried.detach()) / num_samples
        if reduction == "mean" and cost.elements:
            loss = loss / cost.elements
        return loss

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


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
