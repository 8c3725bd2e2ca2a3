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

import time
from collections.abc import Mapping

import torch
from torch.distributions import Distribution

from gradest import contract, health, rng
from gradest.errors import GradestError, NonFiniteError

# The contract's parts live in rooms of their own; the template uses them, and they are re-exported
# here, where estimators written against the template look for them.
from gradest.estimators.cost import (  # noqa: F401
    BoundCost,
    broadcast_signal,
    carrier,
    check_cost,
    constant_in_x,
    cost_arguments,
    declared_parameters,
    per_element,
    total,
)
from gradest.estimators.records import (  # noqa: F401
    NODE_ROLES,
    Builder,
    Capabilities,
    Cost,
    Node,
    PerSampleGradients,
    Terms,
)
from gradest.estimators.replication import (
    _graph_reaches,
    build,
    check_memory,
    check_num_samples,
    check_params,
    plain_replicas,
    replicate,
)
from gradest.estimators.sampling import Sampler, inverse_cdf, open_unit
from gradest.estimators.support import (
    at_the_boundary,
    has_inverse_cdf,
    is_discrete,
    support_moves_with_parameters,
    unwrap,
)

REDUCTIONS = ("sum", "mean")


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
    #: Where the randomness of a sample comes from — None (the family's own sampler) or a Sampler.
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

    def draw_standardized(self, node: Node, generator: torch.Generator
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``draw(node, generator, reparameterized=False)``, and for a Normal family drawn by gradest's own
        sampler from the generator the ε ``[N, *B]`` of x = μ + σε (else None): a score rule then reads
        (x − μ)/σ as ε, a pass over the draws fewer and without the rounding of x − μ."""
        family = unwrap(node.dist)
        if self.sampler is not None or type(self).draw is not Estimator.draw \
                or not rng.draws_normal_itself(node.dist):
            return self.draw(node, generator, reparameterized=False), None
        with torch.no_grad():
            x, eps = rng.normal_draw(family, node.sample_shape, generator)
        self.healthy(node, x)
        return x, eps

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
                             separable=self.capabilities.separable, diagnostic=True, watch=params,
                             continuous=not is_discrete(single))
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
        resolution = _resolution(terms, replicas, params)
        groups = self.groups(num_samples, values.device)
        if groups is not None and is_discrete(single) and any(health.frozen(g, groups) for g in grads):
            groups = None  # every group counted alike: the estimates' own spread (gradest.health.frozen)
        if values.device.type == "cuda":  # kernels run asynchronously: time them to completion
            torch.cuda.synchronize(values.device)
        return PerSampleGradients(
            grads={k: g.reshape(num_samples, *params[k].shape)
                   for k, g in zip(replicas, grads, strict=True)},
            values=values.detach(),
            seconds=time.perf_counter() - start,
            estimator=self.name,
            groups=groups,
            resolution=resolution,
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
                         separable=self.capabilities.separable, continuous=not is_discrete(dist))
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




def _resolution(terms: Terms, replicas: Mapping[str, torch.Tensor],
                params: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor] | None:
    """:attr:`PerSampleGradients.resolution` from the hook's bounds of the rounding in each mean
    (:attr:`Terms.resolution`), per parameter, of its shape (a shared parameter's replica carries the
    batch's broadcast dimensions)."""
    if not terms.resolution:
        return None
    if len(terms.resolution) != len(terms.explicit):
        raise GradestError(f"Terms.resolution has {len(terms.resolution)} entries for {len(terms.explicit)} "
                           "explicit pairs; give one per pair (None where the pair has no bound)")
    out: dict[str, torch.Tensor] = {}
    for (phi, _), bound in zip(terms.explicit, terms.resolution, strict=True):
        if bound is None:
            continue
        name = next((k for k, v in replicas.items() if v is phi), None)
        if name is None:
            raise GradestError("Terms.resolution bounds the mean of a pair whose φ is not one of the node's "
                               "parameters; give it for pairs (param, ĝ) only, or None")
        if bound.numel() != params[name].numel():
            raise GradestError(f"Terms.resolution for {name!r} has {bound.numel()} numbers; give one per "
                               f"coordinate of the parameter ({params[name].numel()})")
        row = bound.detach().reshape(params[name].shape)
        out[name] = out[name] + row if name in out else row
    return out or None
