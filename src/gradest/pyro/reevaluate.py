"""A callable site's re-evaluations: the model re-run under ``poutine.condition`` with the site set
to the points its estimator asks for (every other latent, and a subsampling plate's indices, at
their drawn values), all K particles in one run per point; the exact sum over a small support; and
the refusal of guide sites that depend on a re-evaluated one."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
import torch.nn.functional as F
from pyro.distributions.util import scale_and_mask
from torch.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical

from gradest.errors import GradestError
from gradest.estimators.base import BoundCost, Estimator, Node, unwrap
from gradest.estimators.enumeration import Enumerate
from gradest.graph.roles import node_tensors, rebuild
from gradest.pyro.sites import Site
from gradest.pyro.traces import Layout, is_subsample, log_density, reduce, traced, unvalidated


def site_cost(
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
    if name not in model_sites:
        raise GradestError(
            f"guide site {name!r} is auxiliary (not a site of the model), so re-running the model at other "
            f"values of it says nothing; use 'score-loo' or 'pathwise' for {name!r}"
        )
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
            trace = traced(poutine.condition(layout.wrap(model), data=data), *args, **kwargs)
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


def enumerated(
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
        probe = f(point(torch.zeros(values_shape, dtype=torch.long), family, size, like))
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
        x = point(digits.reshape(block).expand(values_shape), family, size, like)
        logp = fn.log_prob(x)  # [K, *B]: live in the family's parameters
        with torch.no_grad():
            fx = f(x)
        p = logp.exp() if per_element else logp.reshape(logp.shape[0], -1).sum(1).exp()
        out = out + (p * fx.detach().reshape(p.shape)).sum()
    return out


def point(index: torch.Tensor, family: Distribution, size: int, like: torch.Tensor) -> torch.Tensor:
    if isinstance(family, OneHotCategorical):
        return F.one_hot(index, size).to(like.dtype)
    return index.to(like.dtype) if isinstance(family, Bernoulli) else index


def refuse_dependents(name: str, site: Site, later: list[str], origins: Mapping[str, frozenset[str]]) -> None:
    for w in later:
        if name in origins.get(w, frozenset()):
            raise GradestError(
                f"guide site {w!r} is computed from {name!r}, and {site.spec!r} re-evaluates the model at "
                f"other values of {name!r} with the rest of the guide held fixed, which would be biased; "
                f"use 'score-loo' for {name!r} (its signal counts {w!r}), or make {w!r} independent of it"
            )


def hook_term(
    name: str,
    fn: Distribution,
    est: Estimator,
    f: Callable[[torch.Tensor], torch.Tensor],
    k: int,
    generator: torch.Generator,
    learn: bool,
) -> torch.Tensor:
    """⟨φ, ĝ.detach()⟩: the estimator's hook (:meth:`gradest.Estimator.terms`) on a copy of the site
    with one row of its family's tensors per particle (detached leaves), so ∂S/∂(row k) is particle
    k's estimate ĝ_k whatever the hook puts in its carrier; φ the live family tensors."""
    family = node_tensors(fn)
    rows = {key: v.detach().clone() for key, v in family.items()}
    rows = {key: v.requires_grad_(True) if v.is_floating_point() else v for key, v in rows.items()}
    copy = rebuild(name, fn, rows)
    node = Node(copy, k, True, copy.batch_shape[1:], copy.event_shape, type(fn), rows, learn=learn)
    cost = BoundCost(f, (), {}, k, node.batch_shape, estimator=est.name, separable=est.capabilities.separable)
    live = [key for key, v in rows.items() if v.requires_grad]
    with torch.enable_grad():
        terms = est.terms(cost, node, generator)
        grads = terms.gradients([rows[key] for key in live])
    own = 0.0
    for key, g in zip(live, grads, strict=True):
        if family[key].requires_grad:
            own = own + (family[key] * g.detach()).sum()  # ∂/∂φ_k: the site's estimate ĝ_k
    return own if isinstance(own, torch.Tensor) else torch.zeros((), dtype=terms.values.dtype)
