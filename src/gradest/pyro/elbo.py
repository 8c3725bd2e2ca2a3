r"""``gradest.pyro.ELBO``: Pyro's ELBO with the estimator of your choice at every guide site.

    loss = −ELBO = E_q[Σ_{guide sites} log q − Σ_{model sites} log p]   (Pyro's sign: minimised)

K particles run as one batch (an outermost ``pyro.plate`` at dim −(P + 1)); every guide site is
drawn from the ELBO's ``torch.Generator`` and its gradient comes from its estimator's role
(:mod:`gradest.pyro.sites`). The surrogate whose gradient is the estimate, per particle k:

    S_k = Σ_s c_s,k                                     every cost at the drawn values; a non-
                                                        reparameterized site's log q at detached
                                                        parameters (its zero-mean direct term)
        + Σ_{score sites z} ⟨(C_z,k − b_z,k).detach(), log q_z(z_k)⟩       unscaled log q, masked
        + Σ_{callable sites z} ⟨φ_z,k, ĝ_z,k.detach()⟩                   φ: the site's family tensors

and loss = mean_k S_k in value (the terms added have value 0). C_z is z's downstream cost per
element: the costs of the guide sites from z on and of the model sites from z's model site on, each
laid out by the plate rule of :mod:`gradest.pyro.traces` (per-datum signals inside a plate, as
``TraceGraph_ELBO``); b_z the estimator's baseline (leave-one-out over particles, constant, or the
moving average kept in this object). A callable site's ĝ comes from its estimator's own hook
(:meth:`gradest.Estimator.terms`) on a copy of the site with one row of its family's tensors per
particle, and a cost f(x) that re-runs the model under ``poutine.condition`` with the site set to
x and every other latent at its drawn value: one batched model run per point the estimator asks
for (DisARM: 2, REBAR/RELAX: 3, enumeration: the support), all K particles at once. f is the
site's downstream model cost plus its own log q at detached parameters, per element of its plates
where no downstream site lacks one of them, else per particle. Unbiased when no later guide site
depends on the site (checked by provenance; refused otherwise, naming score-loo) and the model's
sites are the same whatever the site's value (checked on each evaluation).

Model evaluations per step, at K particles: 1 (pathwise, score sites) plus, per callable site,
2 (arm, disarm), 3 (rebar, relax), the support's size per element (enumerate) — each batched.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions.util import scale_and_mask
from pyro.infer import ELBO as PyroELBO
from pyro.poutine.messenger import Messenger
from torch.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical

from gradest import rng
from gradest.errors import GradestError
from gradest.estimators.base import BoundCost, Estimator, Node, unwrap
from gradest.estimators.baselines import MovingAverage
from gradest.estimators.enumeration import Enumerate
from gradest.estimators.rebar import Rebar
from gradest.graph.roles import node_tensors, rebuild
from gradest.provenance import Provenance
from gradest.pyro.sites import Site, default_spec, resolve
from gradest.pyro.traces import Draw, Layout, is_subsample, log_density, reduce, unvalidated


class ELBO(PyroELBO):
    """Pyro's ELBO with a gradest estimator per guide site; use it with ``pyro.infer.SVI``.

    Args:
        num_particles: K particles, drawn as one batch (``vectorize_particles`` must stay True).
        max_plate_nesting: P, the number of nested ``pyro.plate`` dims of model and guide; needed
            when they have plates (the particles take dim −(P + 1)); refused, naming the value, when
            missing there.
        estimators: guide site name -> a registered estimator name (``"disarm"``, ``"score-loo"``,
            ``"relax"``, …) or an Estimator value; checked against the site's family on first use.
        default: the estimator of sites not named (a name); None: pathwise where the guide's
            family has rsample, score-loo otherwise (score with one particle).
        seed: an int or a ``torch.Generator``: every draw comes from it (never the global RNG).
        vectorize_particles: must be True (the particles are a batch, never a Python loop).
    """

    def __init__(
        self,
        num_particles: int = 1,
        max_plate_nesting: float = float("inf"),
        vectorize_particles: bool = True,
        estimators: Mapping[str, str | Estimator] | None = None,
        default: str | None = None,
        seed: int | torch.Generator = 0,
        retain_graph: bool | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
            raise GradestError(f"num_particles must be an integer ≥ 1, got {num_particles!r}")
        if not vectorize_particles:
            raise GradestError(
                "gradest.pyro.ELBO draws its particles as one batch (an outermost pyro.plate), "
                "never a Python loop: use vectorize_particles=True (and max_plate_nesting)"
            )
        if max_plate_nesting != float("inf") and (
            isinstance(max_plate_nesting, bool)
            or not isinstance(max_plate_nesting, int)
            or max_plate_nesting < 0
        ):
            raise GradestError(f"max_plate_nesting must be an integer ≥ 0, got {max_plate_nesting!r}")
        if estimators is not None and not isinstance(estimators, Mapping):
            raise GradestError(
                "estimators must be a mapping guide site name -> estimator name, e.g. "
                f"{{'b': 'disarm'}}, got {type(estimators).__name__}"
            )
        if default is not None and not isinstance(default, str | Estimator):
            raise GradestError(f"default must be an estimator name or None, got {type(default).__name__}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
            retain_graph=retain_graph,
            **kwargs,
        )
        #: P as the user gave it (Pyro's own ``max_plate_nesting`` counts the particle dim too)
        self.plate_nesting = None if max_plate_nesting == float("inf") else int(max_plate_nesting)
        self.estimators = dict(estimators or {})
        self.default = default
        self.generator = (
            seed if isinstance(seed, torch.Generator) else rng.make_generator(rng.check_seed(seed))
        )
        #: guide site name -> its Site (estimator objects kept across steps: their state is the ELBO's)
        self.sites: dict[str, Site] = {}
        self._pending: dict[str, dict[str, Any]] = {}

    # Pyro's interface ----------------------------------------------------------------------

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """−ELBO estimated with K particles (no gradients, no estimator state changed)."""
        with torch.no_grad():
            run = self._run(model, guide, args, kwargs, self.generator, learn=False)
            return float(run["loss"])

    def differentiable_loss(
        self, model: Callable, guide: Callable, *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        """A scalar: value −ELBO's estimate, gradient the site estimators' (a training step: learned
        controls and moving averages advance)."""
        return self.surrogate(model, guide, args, kwargs, self.generator, learn=True)

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """−ELBO's estimate; the gradient accumulated into the parameters' ``.grad`` (for SVI)."""
        surrogate = self.surrogate(model, guide, args, kwargs, self.generator, learn=True)
        if surrogate.requires_grad:
            surrogate.backward(retain_graph=self.retain_graph)
        return float(surrogate.detach())

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: Mapping[str, Any]):
        """Pyro's per-particle trace hook: unused (the particles are one batch: :meth:`surrogate`)."""
        raise NotImplementedError(
            "gradest.pyro.ELBO runs its particles as one batch; call loss, "
            "loss_and_grads or differentiable_loss"
        )

    # the estimator -------------------------------------------------------------------------

    def surrogate(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: Mapping[str, Any],
        generator: torch.Generator,
        learn: bool = False,
    ) -> torch.Tensor:
        """The surrogate of the module docstring, its noise from ``generator``; ``learn``: a training
        step (RELAX's control takes its variance step, moving-average baselines advance)."""
        return self._run(model, guide, args, kwargs, generator, learn, estimate=True)["surrogate"]

    def site(self, name: str, fn: Any) -> Site:
        """The Site of guide site ``name`` (resolved on first sight against ``fn``'s family)."""
        site = self.sites.get(name)
        if site is None:
            spec = self.estimators.get(name, self.default)
            if spec is None:
                spec = default_spec(fn, self.num_particles)
            elif isinstance(spec, Estimator) and spec is self.default:
                spec = copy.deepcopy(spec)  # each site keeps its own state (a baseline, a control)
            site = resolve(name, fn, spec, self.num_particles)
            self.sites[name] = site
            if name in self._pending:
                _load_estimator(site, self._pending.pop(name))
        else:
            reason = site.estimator.applicable(fn)
            if reason is not None:
                raise GradestError(f"guide site {name!r}: {reason}")
        return site

    def layout(self, model: Callable, guide: Callable, args: tuple, kwargs: Mapping[str, Any]) -> Layout:
        if self.plate_nesting is None:
            self.plate_nesting = _nesting_or_refuse(model, guide, args, kwargs)
        return Layout(self.num_particles, self.plate_nesting)

    def _run(
        self,
        model: Callable,
        guide: Callable,
        args: tuple,
        kwargs: Mapping[str, Any],
        generator: torch.Generator,
        learn: bool,
        estimate: bool = False,
    ) -> dict[str, torch.Tensor]:
        rng.check_generator(generator)
        layout = self.layout(model, guide, args, kwargs)
        k = layout.particles
        callable_sites = [n for n, s in self.sites.items() if s.role == "callable"]
        provenance = Provenance() if estimate and (callable_sites or not self.sites) else None
        draw = Draw(self.site, layout, generator, learn and estimate, provenance)
        if provenance is not None:
            with provenance:
                guide_trace = poutine.trace(draw(layout.wrap(guide))).get_trace(*args, **kwargs)
        else:
            guide_trace = poutine.trace(draw(layout.wrap(guide))).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(layout.wrap(model), trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        guide_sites = _sample_sites(guide_trace)
        model_sites = _sample_sites(model_trace)
        _check_pairing(guide_trace, guide_sites, model_trace, model_sites)
        unknown = [n for n in self.estimators if n not in guide_sites]
        if unknown:
            raise GradestError(
                f"estimators names {', '.join(map(repr, unknown))}, which the guide does not "
                f"sample; its sites are {', '.join(map(repr, guide_sites)) or 'none'}"
            )
        relaxed = any(
            self.sites[n].role == "reparameterized" and self.sites[n].estimator.capabilities.biased
            for n in guide_sites
        )
        costs: dict[tuple[str, str], torch.Tensor] = {}
        total = 0.0
        for n in model_sites:
            s = model_trace.nodes[n]
            if relaxed:
                unvalidated(s["fn"])
            costs["model", n] = -layout.pad(log_density(s), f"model site {n!r}")
            total = total + costs["model", n].sum()
        for n in guide_sites:
            s = guide_trace.nodes[n]
            if relaxed:
                unvalidated(s["fn"])
            lq = layout.pad(log_density(s), f"guide site {n!r}")
            costs["guide", n] = lq
            # a non-reparameterized site's log q at detached parameters: its direct term has mean 0
            live = lq if self.sites[n].role == "reparameterized" else lq.detach()
            total = total + live.sum()
        loss = total / k
        out = {"loss": loss.detach()}
        if not estimate:
            return out
        extra = 0.0
        for i, n in enumerate(guide_sites):
            site = self.sites[n]
            if site.role == "score":
                extra = extra + self._score_term(
                    n, i, guide_trace, guide_sites, model_trace, model_sites, costs, layout
                )
            elif site.role == "callable":
                if provenance is None:  # the site was met first in this call: its provenance is read now
                    return self._run(model, guide, args, kwargs, generator, learn, estimate)
                _refuse_dependents(n, site, guide_sites[i + 1 :], draw.origins)
                extra = extra + self._callable_term(
                    n, guide_trace, model, model_trace, model_sites, args, kwargs, layout, generator, learn
                )
        out["surrogate"] = loss + (extra - extra.detach()) / k if isinstance(extra, torch.Tensor) else loss
        return out

    def _score_term(
        self,
        name: str,
        index: int,
        guide_trace,
        guide_sites: list[str],
        model_trace,
        model_sites: list[str],
        costs: Mapping[tuple[str, str], torch.Tensor],
        layout: Layout,
    ) -> torch.Tensor:
        """⟨(C_z − b_z).detach(), log q_z(z)⟩: the downstream cost per element, the baseline, the score."""
        target = guide_trace.nodes[name]
        logq = layout.pad(log_density(target, scaled=False), f"guide site {name!r}")
        downstream = [("guide", w, guide_trace.nodes[w]) for w in guide_sites[index:]]
        start = model_sites.index(name)
        downstream += [("model", s, model_trace.nodes[s]) for s in model_sites[start:]]
        with torch.no_grad():  # the learning signal is a constant of the math
            signal = torch.zeros_like(logq)
            for kind, s, node in downstream:
                part = reduce(costs[kind, s].detach(), node, target)
                if part is not None:
                    signal = signal + part
            baseline = self.sites[name].estimator.baseline
            weight = signal - baseline(signal) if not _no_baseline(baseline) else signal
        return (weight * logq).sum()

    def _callable_term(
        self,
        name: str,
        guide_trace,
        model: Callable,
        model_trace,
        model_sites: list[str],
        args: tuple,
        kwargs: Mapping[str, Any],
        layout: Layout,
        generator: torch.Generator,
        learn: bool,
    ) -> torch.Tensor:
        """⟨φ, ĝ.detach()⟩ from the estimator's hook on a per-particle copy of the site."""
        site = self.sites[name]
        est = site.estimator
        target = guide_trace.nodes[name]
        fn = target["fn"]
        k = layout.particles
        f = _site_cost(name, target, model, model_trace, model_sites, args, kwargs, layout)
        if isinstance(est, Enumerate):
            return _enumerated(name, fn, est, f)
        family = node_tensors(fn)
        rows = {key: v.detach().clone() for key, v in family.items()}
        rows = {key: v.requires_grad_(True) if v.is_floating_point() else v for key, v in rows.items()}
        copy = rebuild(name, fn, rows)
        node = Node(copy, k, True, copy.batch_shape[1:], copy.event_shape, type(fn), rows, learn=learn)
        cost = BoundCost(
            f, (), {}, k, node.batch_shape, estimator=est.name, separable=est.capabilities.separable
        )
        live = [key for key, v in rows.items() if v.requires_grad]
        with torch.enable_grad():
            terms = est.terms(cost, node, generator)
            grads = terms.gradients([rows[key] for key in live])
        own = 0.0
        for key, g in zip(live, grads, strict=True):
            if family[key].requires_grad:
                own = own + (family[key] * g.detach()).sum()  # ∂/∂φ_k: the site's estimate ĝ_k
        return own if isinstance(own, torch.Tensor) else torch.zeros((), dtype=terms.values.dtype)

    # state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The generator's state and each site's estimator state (tensors, numbers, dicts only; copies,
        so later steps leave them as they were)."""
        sites = {n: _estimator_state(s) for n, s in self.sites.items()}
        return copy.deepcopy({"generator": self.generator.get_state(), "sites": {**self._pending, **sites}})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (sites not met yet are restored on first sight)."""
        if not isinstance(state, Mapping) or "sites" not in state or "generator" not in state:
            raise GradestError("load_state_dict needs the dict ELBO.state_dict() returned")
        self.generator.set_state(state["generator"])
        for n, s in state["sites"].items():
            if n in self.sites:
                _load_estimator(self.sites[n], s)
            else:
                self._pending[n] = copy.deepcopy(s)

    def __repr__(self) -> str:
        chosen = {n: s.spec for n, s in self.sites.items()} or self.estimators
        return f"gradest.pyro.ELBO(num_particles={self.num_particles}, estimators={chosen})"


# helpers ---------------------------------------------------------------------------------------


def _no_baseline(baseline: Any) -> bool:
    return type(baseline).__name__ == "NoBaseline"


def _sample_sites(trace) -> list[str]:
    return [n for n, s in trace.nodes.items() if s["type"] == "sample" and not is_subsample(s)]


def _check_pairing(guide_trace, guide_sites: list[str], model_trace, model_sites: list[str]) -> None:
    """Every latent of the model is a guide site, and every guide site (not auxiliary) a model site."""
    for n in model_sites:
        s = model_trace.nodes[n]
        if not s["is_observed"] and n not in guide_trace.nodes:
            raise GradestError(
                f"model site {n!r} is neither observed nor a guide site; add it to the guide "
                "(or observe it with obs=)"
            )
    for n in guide_sites:
        s = guide_trace.nodes[n]
        if n not in model_trace.nodes and not s["infer"].get("is_auxiliary"):
            raise GradestError(
                f"guide site {n!r} is not a site of the model; rename it to the model's "
                "site, or mark it infer={'is_auxiliary': True}"
            )
        if s["is_observed"]:
            raise GradestError(
                f"guide site {n!r} is observed in the guide (obs=); only the model observes "
                "data: drop obs= from the guide"
            )


def _enumerated(
    name: str, fn: Distribution, est: Enumerate, f: Callable[[torch.Tensor], torch.Tensor]
) -> torch.Tensor:
    """Σ_x p(x) f(x).detach() per particle and element, p live: its gradient is the exact gradient of
    E[f] in the site's family (every particle's own distribution), one batched run per support point."""
    family = unwrap(fn)
    if not isinstance(family, Bernoulli | Categorical | OneHotCategorical):
        raise GradestError(est.family_refusal(family))
    size = 2 if isinstance(family, Bernoulli) else family.logits.shape[-1]
    like = family.logits
    values_shape = fn.batch_shape + fn.event_shape  # [K, *B, *E]: one variable per entry
    with torch.no_grad():  # one point first: f's shape says which variables each cost element has
        probe = f(_point(torch.zeros(values_shape, dtype=torch.long), family, size, like))
    per_element = probe.dim() > 1
    variables = fn.event_shape.numel() if per_element else fn.batch_shape[1:].numel() * fn.event_shape.numel()
    support = size**variables
    if support > est.max_support:
        raise GradestError(
            f"guide site {name!r}: enumerate sums over the {size}^{variables} = {support} joint values of "
            "the "
            f"variables each cost element depends on, more than max_support = {est.max_support}; use "
            "'disarm' (Bernoulli), 'unordered-set=K' (Categorical) or 'score-loo' for this site"
        )
    out = like.new_zeros(())
    block = fn.event_shape if per_element else fn.batch_shape[1:] + fn.event_shape
    for m in range(support):  # the support's points (each runs all particles at once), not the particles
        digits = torch.tensor([m // size**v % size for v in range(variables)], device=like.device)
        x = _point(digits.reshape(block).expand(values_shape), family, size, like)
        logp = fn.log_prob(x)  # [K, *B]: live in the family's parameters
        with torch.no_grad():
            fx = f(x)
        p = logp.exp() if per_element else logp.reshape(logp.shape[0], -1).sum(1).exp()
        out = out + (p * fx.detach().reshape(p.shape)).sum()
    return out


def _point(index: torch.Tensor, family: Distribution, size: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(family, OneHotCategorical):
        return F.one_hot(index, size).to(like.dtype)
    return index.to(like.dtype) if isinstance(family, Bernoulli) else index


def _refuse_dependents(
    name: str, site: Site, later: list[str], origins: Mapping[str, frozenset[str]]
) -> None:
    for w in later:
        if name in origins.get(w, frozenset()):
            raise GradestError(
                f"guide site {w!r} is computed from {name!r}, and {site.spec!r} re-evaluates the model at "
                f"other values of {name!r} with the rest of the guide held fixed, which would be biased; "
                f"use 'score-loo' for {name!r} (its signal counts {w!r}), or make {w!r} independent of it"
            )


def _site_cost(
    name: str,
    target: Mapping[str, Any],
    model: Callable,
    model_trace,
    model_sites: list[str],
    args: tuple,
    kwargs: Mapping[str, Any],
    layout: Layout,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """f(x): the site's downstream model cost and its own log q (detached parameters) at z = x,
    per element ``[K, *B]`` when plate independence allows it, else ``[K]``."""
    start = model_sites.index(name)
    fixed = {
        n: model_trace.nodes[n]["value"].detach()
        for n in model_sites
        if not model_trace.nodes[n]["is_observed"]
    }
    # a subsampling plate's indices too: the re-run sees the same minibatch
    fixed.update(
        {n: s["value"] for n, s in model_trace.nodes.items() if s["type"] == "sample" and is_subsample(s)}
    )
    own = rebuild(name, target["fn"], {key: v.detach() for key, v in node_tensors(target["fn"]).items()})
    shape = layout.pad(torch.zeros(target["fn"].batch_shape), "").shape
    structure = [(n, tuple(model_trace.nodes[n]["fn"].batch_shape)) for n in model_sites]

    def f(x: torch.Tensor) -> torch.Tensor:
        data = dict(fixed)
        data[name] = x
        with pyro.validation_enabled(False):
            trace = poutine.trace(poutine.condition(layout.wrap(model), data=data)).get_trace(*args, **kwargs)
        found = [
            (n, tuple(s["fn"].batch_shape))
            for n, s in trace.nodes.items()
            if s["type"] == "sample" and not is_subsample(s)
        ]
        if found != structure:
            raise GradestError(
                f"the model's sites change with the value of guide site {name!r} (dynamic structure: "
                f"{[n for n, _ in structure]} became {[n for n, _ in found]}), so {name!r}'s estimator "
                "cannot "
                "re-evaluate it; use 'score-loo' for this site"
            )
        logq = scale_and_mask(unvalidated(own).log_prob(x), target["scale"], target["mask"])
        cost = layout.pad(logq, f"guide site {name!r}")
        separable = True
        for n in model_sites[start:]:
            s = trace.nodes[n]
            part = reduce(-layout.pad(log_density(s), f"model site {n!r}"), s, target)
            if part is None:
                continue
            separable = separable and tuple(part.shape) == tuple(shape)
            cost = cost + part
        cost = cost.expand(shape)
        if not separable:
            return cost.reshape(layout.particles, -1).sum(1) if math.prod(shape[1:]) > 1 else cost.reshape(-1)
        return cost

    return f


def _nesting_or_refuse(model: Callable, guide: Callable, args: tuple, kwargs: Mapping[str, Any]) -> int:
    """0 for a model and guide without plates; otherwise a GradestError naming the value to pass."""
    with poutine.block(), torch.no_grad():
        guide_trace = poutine.trace(_Probe()(guide)).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    dims = [
        f.dim
        for tr in (guide_trace, model_trace)
        for s in tr.nodes.values()
        if s["type"] == "sample"
        for f in s["cond_indep_stack"]
        if f.vectorized
    ]
    if dims:
        need = -min(dims)
        raise GradestError(
            f"max_plate_nesting is needed: the particles are an outermost pyro.plate left of the model's and "
            f"guide's plate dims; pass max_plate_nesting={need} (the number of nested pyro.plate dims)"
        )
    return 0


class _Probe(Messenger):
    """Draws a guide's sites from a generator of its own (the structure probe never touches the
    global RNG)."""

    def __init__(self) -> None:
        super().__init__()
        self.generator = rng.make_generator(0)

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if not (msg["is_observed"] or msg["value"] is not None or msg["done"] or is_subsample(msg)):
            msg["value"] = rng.sample(msg["fn"], (), self.generator, False)


def _estimator_state(site: Site) -> dict[str, Any]:
    est = site.estimator
    out: dict[str, Any] = {"spec": site.spec, "steps": int(getattr(est, "steps", 0))}
    baseline = getattr(est, "baseline", None)
    if isinstance(baseline, MovingAverage):
        out["average"] = {"raw": baseline._raw, "count": baseline._count}
    if isinstance(est, Rebar) and est.control is not None:
        out["width"] = est.control.width
        out["control"] = est.control.state_dict()
        out["optimizer"] = None if est.optimizer is None else est.optimizer.state_dict()
    return out


def _load_estimator(site: Site, state: Mapping[str, Any]) -> None:
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
    if isinstance(est, Rebar) and "control" in state:
        like = state["control"]["eta"]
        est.control = est.make_control(like, int(state["width"]))
        est.control.load_state_dict(state["control"])
        est.optimizer = torch.optim.Adam(est.control.parameters(), lr=est.lr) if est.learn else None
        if est.optimizer is not None and state.get("optimizer") is not None:
            est.optimizer.load_state_dict(state["optimizer"])
