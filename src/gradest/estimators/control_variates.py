r"""Control variates with variance-optimal coefficients that keep the estimate unbiased.

For a base estimator ĝ (score function, measure-valued or pathwise) and a control h(x) whose
expectation E_p[h] is known in closed form, the same estimator applied to h on the same random
numbers gives ĝ_h with E[ĝ_h] = ∇θ E_p[h]. Then, per parameter coordinate k,

    ĝ^cv_nk = ĝ_f,nk − c_k (ĝ_h,nk − ∂E_p[h]/∂θ_k)

is unbiased for any c_k independent of sample n, and its variance is least at
c_k* = Cov(ĝ_f,k, ĝ_h,k) / Var(ĝ_h,k). c_k is estimated from the *other* samples (leave-one-out;
with antithetic or quasi-Monte Carlo sampling, leave-one-group-out, since a sample's partners
depend on it), so it is independent of sample n and no bias enters — finer than the single
coefficient per variable of Mohamed et al. (2020), which is one c for a whole parameter vector.

Controls:

* ``DeltaMethod(order)``: h = f(μ) + ∇f(μ)ᵀ(x − μ) [+ ½ (x − μ)ᵀ ∇²f(μ) (x − μ)], the Taylor
  expansion of f at the Normal's mean, with E[h] = f(μ) + ½ Σ_d ∂²f/∂x_d² σ_d² (Paisley et al.,
  2012). Uses f's derivatives at μ only (one point, not per sample); the coefficients of h are
  frozen at the current μ, so ∇θ E[h] counts only p's dependence on θ. For f quadratic and
  order 2, h = f and the estimate is exact.
* ``ConstantControl``: h = 1, so ĝ_h is the score and c_k is the variance-optimal *constant
  baseline* per coordinate, b_k = Cov(f s_k, s_k)/Var(s_k), s = ∇θ log p (score function only).

Rounding: ĝ^cv is a difference of terms of size abs(ĝ_f) ≈ abs(s·f), with s the score (of order
1/σ). Where h ≈ f (the delta method on a quadratic f, exact in exact arithmetic) what is left is the
rounding of those terms, correlated with the draws, so the rows' spread does not show it: with
f = (x − 0.3)² + 5 under N(2, 10⁻³) and 8000 draws the mean sat 15 to 20 of the rows' standard errors
from the truth. The mean's rounding is bounded by ``RESOLUTION_ULPS`` ε of the terms' mean size
(:attr:`Terms.resolution`; measured: below 0.25 ε over costs x², x³, x⁴, eˣ, sin, log, cos 2x and
quadratics with offsets at scales 10⁻³ to 10⁻⁹), and :meth:`PerSampleGradients.stderr` adds that
bound.

A cost that declares θ keeps its direct term ∂f/∂θ (added outside the combination; the control
expands f at fixed θ).

Requires: N ≥ 3 samples (3 independent groups with a sampler: a variance of the others; fewer are
refused, never run without the control); for the delta method a Normal
(or ``Independent`` Normal) and f twice differentiable at μ.

References: Paisley, Blei & Jordan (2012); Mohamed et al., JMLR 21 (2020) §7; optax
``control_delta_method`` / ``control_variates_jacobians``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.distributions import Distribution, Normal

from gradest.errors import GradestError
from gradest.estimators.base import (
    BoundCost,
    Estimator,
    Node,
    Terms,
    build,
    replicate,
    unwrap,
)

#: the rounding of ĝ_f − c ĝ_h, in machine epsilons of the terms' size: the few operations of a score,
#: a cost and the combination, each adding up to ε of its operands (:attr:`Terms.resolution`)
RESOLUTION_ULPS = 16

#: a fitted control: h (x [N, ...] -> [N]) and E_p[h] per sample ``[N]``, differentiable in θ
Fitted = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[Distribution], torch.Tensor]]


class DeltaMethod:
    """Taylor expansion of f at the mean of a diagonal Normal, of order 1 or 2."""

    families = (Normal,)
    differentiates_f = True

    def __init__(self, order: int = 2) -> None:
        if order not in (1, 2):
            raise GradestError(f"the delta method expands f to order 1 or 2, got {order!r}")
        self.order = order

    def fit(self, f: BoundCost, dist: Distribution, like: torch.Tensor) -> Fitted:
        """Fit the control variate h(x) and its known mean E h for this distribution."""
        family = unwrap(dist)
        # Replicas share their values, so row 0 is the current μ; h is frozen at it.
        mu = family.loc.detach()[0]
        shape = mu.shape
        mu = mu.reshape(-1)

        def at(z: torch.Tensor) -> torch.Tensor:
            return f(z.reshape(1, *shape), direct=False).sum()

        with torch.enable_grad():
            z = mu.clone().requires_grad_(True)
            value = at(z)
            if not value.requires_grad:
                raise GradestError(
                    "the delta-method control variate differentiates f at the mean, and f has no "
                    "gradient path; use 'score-optb' (a variance-optimal baseline) instead"
                )
            (grad,) = torch.autograd.grad(value, z)
        a, b = value.detach(), grad.detach()
        hess = torch.autograd.functional.hessian(at, mu) if self.order == 2 else None
        # a diagonal Hessian (f a sum of functions of one coordinate each) gives the quadratic form in
        # O(D) per point instead of O(D²): measure-valued points are N · 2D of them
        diagonal = None if hess is None or bool((hess - torch.diag(hess.diagonal())).any()) \
            else hess.diagonal()

        def quadratic(delta: torch.Tensor) -> torch.Tensor:
            if diagonal is not None:
                return (delta * delta) @ diagonal
            return ((delta @ hess) * delta).sum(1)

        def h(x: torch.Tensor) -> torch.Tensor:
            delta = x.reshape(x.shape[0], -1) - mu
            out = a + delta @ b
            return out if hess is None else out + 0.5 * quadratic(delta)

        def expectation(d: Distribution) -> torch.Tensor:
            fam = unwrap(d)
            n = fam.loc.shape[0]
            delta = fam.loc.reshape(n, -1) - mu
            out = a + delta @ b
            if hess is None:
                return out
            variance = fam.scale.reshape(n, -1) ** 2
            return out + 0.5 * (quadratic(delta) + (variance * hess.diagonal()).sum(1))

        return h, expectation

    def __repr__(self) -> str:
        return f"DeltaMethod(order={self.order})"


class ConstantControl:
    """h = 1 (E[h] = 1): with the score function, a variance-optimal baseline per coordinate."""

    families = None
    differentiates_f = False

    def fit(self, f: BoundCost, dist: Distribution, like: torch.Tensor) -> Fitted:
        """Fit the control variate h(x) and its known mean E h for this distribution."""
        def h(x: torch.Tensor) -> torch.Tensor:
            return like.new_ones(x.shape[0])

        def expectation(d: Distribution) -> torch.Tensor:
            return like.new_ones(d.batch_shape[0])

        return h, expectation

    def __repr__(self) -> str:
        return "ConstantControl()"


#: samples (or independent groups) a leave-one-out coefficient needs: a variance of the others
MIN_INDEPENDENT = 3


def leave_group_out_coefficients(
    a: torch.Tensor, b: torch.Tensor, groups: torch.Tensor | None = None
) -> torch.Tensor:
    """c_nk = Cov(a_k, b_k) / Var(b_k) over the samples outside sample n's group: ``[N, P]``.

    a, b: ``[N, P]``. groups: ``[N]`` labels of independent groups (None: every sample alone).
    Fewer than ``MIN_INDEPENDENT`` samples (groups) are refused: the coefficient is undefined there.
    Where b_k happens to have no spread outside the group (a discrete family's draws all alike),
    c = 0 for that sample: no correction, and still no bias (c does not depend on sample n).
    """
    n = a.shape[0]
    size = n if groups is None else int(groups.max()) + 1
    if size < MIN_INDEPENDENT:
        # with one other sample (or group) Var(b_k) is 0 by construction: c would silently be 0,
        # i.e. no control variate at all
        what = "samples" if groups is None else "independent groups (pairs, randomizations)"
        raise GradestError(
            f"control-variate coefficients c = Cov/Var are estimated from the other samples, so at "
            f"least {MIN_INDEPENDENT} {what} are needed (a variance needs 2 besides the sample's own), "
            f"got {size}; use more samples"
            + (f" (at least {MIN_INDEPENDENT})" if groups is None else
               f" (at least {MIN_INDEPENDENT} pairs or randomizations, e.g. {2 * MIN_INDEPENDENT} with "
               "+antithetic)")
        )
    # The formula is invariant to shifting a and b; centring first avoids cancellation.
    a = a - a.mean(0)
    b = b - b.mean(0)

    def split(t: torch.Tensor) -> torch.Tensor:
        """Sums over each group's complement ``[G, P]``."""
        if groups is None:
            return t.sum(0) - t
        return t.sum(0) - t.new_zeros(size, t.shape[1]).index_add_(0, groups, t)

    own = torch.ones(n, device=a.device) if groups is None else torch.bincount(groups, minlength=size)
    count = (n - own).to(a.dtype).unsqueeze(1)
    sa, sb, sab, sbb = split(a), split(b), split(a * b), split(b * b)
    cov = sab - sa * sb / count
    var = sbb - sb * sb / count
    tiny = torch.finfo(a.dtype).tiny
    coeff = torch.where(var > tiny, cov / var.clamp_min(tiny), torch.zeros_like(var))
    return coeff if groups is None else coeff[groups]


def _grads(output: torch.Tensor | float, leaves: list[torch.Tensor]) -> list[torch.Tensor]:
    if not isinstance(output, torch.Tensor) or not output.requires_grad:
        return [torch.zeros_like(v) for v in leaves]
    return list(
        torch.autograd.grad(output, leaves, retain_graph=True, allow_unused=True, materialize_grads=True)
    )


class ControlVariate(Estimator):
    """ĝ^cv = ĝ_f − c ⊙ (ĝ_h − ∇θ E[h]) with leave-one(-group)-out coefficients c per coordinate."""

    #: c_(−n) comes from the other samples: the estimates are dependent (see :mod:`gradest.batches`)
    couples_samples = True
    node_refusal = "fits control-variate coefficients on per-sample gradients"

    def __init__(self, inner: Estimator, control, name: str | None = None) -> None:
        if not isinstance(inner, Estimator):
            raise GradestError(f"a control variate wraps an Estimator (e.g. get_estimator('score')), "
                               f"got {inner!r}")
        if not hasattr(control, "fit"):
            raise GradestError(f"control must be a control variate (DeltaMethod, ConstantControl), "
                               f"got {control!r}")
        self.inner = inner
        self.control = control
        self.name = name or f"{inner.name}-cv"
        self.min_samples = max(inner.min_samples, MIN_INDEPENDENT)
        caps = inner.capabilities
        families = control.families if caps.families is None else caps.families
        if control.families is not None and caps.families is not None:
            families = tuple(c for c in caps.families if issubclass(c, control.families))
        # the wrapped estimator's needs, and a control variate's own: the control's derivative,
        # its coefficients fitted on per-sample gradients, each sample's cost weighted by itself
        self.capabilities = dataclasses.replace(
            caps,
            differentiates_f=caps.differentiates_f or control.differentiates_f,
            families=families,
            replicates=True,
            separable=True,
            health="any",
            node="none",
        )
        self.draws_through_inverse_cdf = inner.draws_through_inverse_cdf

    def family_refusal(self, family: Distribution) -> str:
        if self.control.families is not None and not isinstance(family, self.control.families):
            return (
                f"the delta-method control variate needs a Normal (its closed-form E[h]), got "
                f"{type(family).__name__}; use 'score-optb' or 'score-loo' for other families"
            )
        return self.inner.family_refusal(family)

    @property
    def sampler(self):
        """The variance-reducing sampler of the wrapped estimator (None: i.i.d.)."""
        return self.inner.sampler

    @sampler.setter
    def sampler(self, value) -> None:
        """The variance-reducing sampler of the wrapped estimator (None: i.i.d.)."""
        # the base estimator draws the samples, so it is the one that needs the sampler
        self.inner.sampler = value

    def terms(self, cost: BoundCost, node: Node, generator: torch.Generator) -> Terms:
        # Per-sample gradients of f's and h's estimates are needed before combining them, so the
        # estimator differentiates its own detached replicas here (in both views).
        n = node.num_samples
        with torch.enable_grad():
            if node.replicated:
                targets = {k: v.detach().requires_grad_(True) for k, v in node.params.items()}
                dist = build(node.builder, targets)
            else:
                base = {k: v.detach().requires_grad_(True) for k, v in node.params.items()}
                targets, dist, _ = replicate(node.builder, base, n)
            inner_node = node._replace(dist=dist, replicated=True, params=targets)
            h, expectation = self.control.fit(cost, dist, node.like().detach())
            control_cost = BoundCost(h, (), {}, n, node.batch_shape)
            twin = torch.Generator(device=generator.device)
            twin.set_state(generator.get_state())
            terms_f = self.inner.terms(cost, inner_node, generator)
            # the twin generator replays the same random numbers: ĝ_h is coupled with ĝ_f
            terms_h = self.inner.terms(control_cost, inner_node, twin)
            leaves = list(targets.values())
            # retained: the three share the builder's graph, and terms_f's carrier is backpropagated
            # again by the caller (its direct term)
            g_f = terms_f.gradients(leaves, retain_graph=True)
            g_h = terms_h.gradients(leaves, retain_graph=True)
            g_e = _grads(expectation(dist).sum(), leaves)
        groups = self.groups(n, terms_f.values.device)
        explicit, resolution = [], []
        for param, gf, gh, ge in zip(node.params.values(), g_f, g_h, g_e, strict=True):
            a = gf.reshape(n, -1)
            control = (gh - ge).reshape(n, -1)  # zero mean: E[ĝ_h] = ∇θ E[h]
            coeff = leave_group_out_coefficients(a, control, groups)
            # ĝ^cv through the caller's parameter (a constant of the math)
            explicit.append((param, (a - coeff * control).reshape(gf.shape).detach()))
            if node.diagnostic:  # (read by the standard error: per_sample)
                # where h ≈ f, ĝ^cv is what rounding leaves of ĝ_f − c ĝ_h, terms of size |s|·|f| (the
                # score's 1/σ): bound its mean by the terms' mean size, not the difference's (c varies
                # by the leave-one-out share alone: its largest bounds it)
                size = a.abs().mean(0) + coeff.abs().amax(0) * (gh.reshape(n, -1).abs().mean(0)
                                                                 + ge.reshape(n, -1).abs().amax(0))
                resolution.append(RESOLUTION_ULPS * torch.finfo(a.dtype).eps * size)
        # the direct term ∂f/∂θ (and f's own tensors) through f's graph, outside the combination:
        # terms_f's carrier depends on the caller's parameters only through f's arguments
        return Terms(terms_f.carrier, explicit, terms_f.values, resolution or None)

    def __repr__(self) -> str:
        return f"ControlVariate(inner={self.inner!r}, control={self.control!r}, name={self.name!r})"
