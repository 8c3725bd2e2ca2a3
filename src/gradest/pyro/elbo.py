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
from collections.abc import Callable, Mapping
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO as PyroELBO
from pyro.poutine.messenger import Messenger

from gradest import rng
from gradest.errors import GradestError
from gradest.estimators.base import Estimator
from gradest.estimators.baselines import NoBaseline
from gradest.estimators.enumeration import Enumerate
from gradest.provenance import Provenance
from gradest.pyro import reevaluate, state
from gradest.pyro.sites import Site, default_spec, resolve
from gradest.pyro.traces import Draw, Layout, is_subsample, log_density, reduce, traced, unvalidated


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
                state.load_estimator(site, self._pending.pop(name))
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
                guide_trace = traced(draw(layout.wrap(guide)), *args, **kwargs)
        else:
            guide_trace = traced(draw(layout.wrap(guide)), *args, **kwargs)
        model_trace = traced(poutine.replay(layout.wrap(model), trace=guide_trace), *args, **kwargs)
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
        if provenance is None and any(self.sites[n].role == "callable" for n in guide_sites):
            # a callable site met first in this call: run again with its provenance read
            return self._run(model, guide, args, kwargs, generator, learn, estimate)
        extra = 0.0
        for i, n in enumerate(guide_sites):
            site = self.sites[n]
            if site.role == "score":
                extra = extra + self._score_term(
                    n, i, guide_trace, guide_sites, model_trace, model_sites, costs, layout
                )
            elif site.role == "callable":
                reevaluate.refuse_dependents(n, site, guide_sites[i + 1 :], draw.origins)
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
        # an auxiliary guide site (not in the model): every model site may depend on it
        start = model_sites.index(name) if name in model_sites else 0
        downstream += [("model", s, model_trace.nodes[s]) for s in model_sites[start:]]
        with torch.no_grad():  # the learning signal is a constant of the math
            signal = torch.zeros_like(logq)
            for kind, s, node in downstream:
                part = reduce(costs[kind, s].detach(), node, target)
                if part is not None:
                    signal = signal + part
            baseline = self.sites[name].estimator.baseline
            weight = signal if isinstance(baseline, NoBaseline) else signal - baseline(signal)
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
        f = reevaluate.site_cost(name, target, model, model_trace, model_sites, args, kwargs, layout)
        if isinstance(est, Enumerate):
            return reevaluate.enumerated(name, fn, est, f)
        return reevaluate.hook_term(name, fn, est, f, k, generator, learn)

    # state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The generator's state and each site's estimator state (tensors, numbers, dicts only; copies,
        so later steps leave them as they were)."""
        sites = {n: state.estimator_state(s) for n, s in self.sites.items()}
        return copy.deepcopy({"generator": self.generator.get_state(), "sites": {**self._pending, **sites}})

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output (sites not met yet are restored on first sight)."""
        if not isinstance(state, Mapping) or "sites" not in state or "generator" not in state:
            raise GradestError("load_state_dict needs the dict ELBO.state_dict() returned")
        self.generator.set_state(state["generator"])
        for n, s in state["sites"].items():
            if n in self.sites:
                state.load_estimator(self.sites[n], s)
            else:
                self._pending[n] = copy.deepcopy(s)

    def __repr__(self) -> str:
        chosen = {n: s.spec for n, s in self.sites.items()} or self.estimators
        return f"gradest.pyro.ELBO(num_particles={self.num_particles}, estimators={chosen})"


# helpers ---------------------------------------------------------------------------------------


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


def _nesting_or_refuse(model: Callable, guide: Callable, args: tuple, kwargs: Mapping[str, Any]) -> int:
    """0 for a model and guide without plates; otherwise a GradestError naming the value to pass."""
    with poutine.block(), torch.no_grad():
        guide_trace = traced(_Probe()(guide), *args, **kwargs)
        model_trace = traced(poutine.replay(model, trace=guide_trace), *args, **kwargs)
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
