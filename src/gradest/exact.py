r"""Exact gradients of L(θ) = E_{p(x;θ)}[f(x)], to check estimators against.

Three methods, each differentiating an exact (or quadrature-exact) expression of L(θ) with autograd:

* ``closed-form``: a :class:`~gradest.costs.Cost` with a known E[f] under a diagonal Normal;
  ∇θ L = autograd of that expression through the builder's loc and scale.
* ``quadrature``: any f under a Normal with at most 3 coordinates. Gauss–Hermite nodes
  x_i = μ + √2 σ t_i with weights w_i / π^(D/2) give L ≈ Σ_i w_i f(x_i), and
  ∇θ L = ∫ f(x) ∇θ log p(x; θ) p(x; θ) dx ≈ Σ_i w_i f(x_i) ∇θ log p(x_i; θ), so f need not be
  differentiable. The error estimate is the difference between orders n and n/2.
* ``enumeration``: a family with finite support (Bernoulli, Categorical, products of them):
  L = Σ_x p(x; θ) f(x) summed over every point of the support.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
from scipy.special import roots_hermite
from torch.distributions import Distribution, Independent, Normal

from gradest.costs import Cost
from gradest.errors import GradestError
from gradest.estimators.base import Builder, build, check_params, joint_log_prob

METHODS = ("closed-form", "quadrature", "enumeration")
#: Gauss–Hermite order per dimension count (the error estimate uses half of it)
QUADRATURE_ORDER = {1: 2000, 2: 200, 3: 50}
MAX_SUPPORT = 2**20


class ExactGradient(NamedTuple):
    """grads: name -> ∂L/∂θ (param shape); value: L; method used; error: name -> estimate or None."""

    grads: dict[str, torch.Tensor]
    value: torch.Tensor
    method: str
    error: dict[str, torch.Tensor] | None


def _normal_parts(dist: Distribution) -> tuple[torch.Tensor, torch.Tensor] | None:
    base = dist.base_dist if isinstance(dist, Independent) else dist
    if type(base) is Normal:
        loc, scale = torch.broadcast_tensors(base.loc, base.scale)
        return loc, scale
    return None


def _closed_form(f, dist):
    parts = _normal_parts(dist)
    if not isinstance(f, Cost) or f.normal_mean is None or parts is None:
        return None
    return f.expectation_normal(*parts), None


def _quadrature_value(f, dist, loc, order):
    dims = loc.numel()
    t, w = roots_hermite(order)  # stable for high orders, unlike numpy's hermgauss
    t = torch.as_tensor(t, dtype=loc.dtype, device=loc.device)
    w = torch.as_tensor(w, dtype=loc.dtype, device=loc.device)
    nodes = torch.cartesian_prod(*[t] * dims).reshape(-1, dims)
    weights = torch.cartesian_prod(*[w] * dims).reshape(-1, dims).prod(1) / math.pi ** (dims / 2)
    parts = _normal_parts(dist)
    with torch.no_grad():
        x = (parts[0].reshape(-1) + math.sqrt(2.0) * parts[1].reshape(-1) * nodes)
        x = x.reshape(len(nodes), *loc.shape)
        fx = f(x)
    logp = joint_log_prob(dist, x, len(nodes))
    # value Σ w f, gradient Σ w f ∇log p: the detach is the score identity, not an approximation
    return (weights * fx * (1.0 + logp - logp.detach())).sum()


def _enumeration(f, dist):
    if not dist.has_enumerate_support:
        return None
    support = dist.enumerate_support(expand=True)  # [K, *batch, *event]
    k, batch, event = support.shape[0], dist.batch_shape, dist.event_shape
    b = math.prod(batch)
    if k**b > MAX_SUPPORT:
        raise GradestError(
            f"enumeration needs {k}^{b} = {k**b} support points, more than {MAX_SUPPORT}; "
            "use a Monte Carlo estimate with many samples instead"
        )
    flat = support.reshape(k, b, *event)
    index = torch.cartesian_prod(*[torch.arange(k)] * b).reshape(k**b, b)
    x = flat[index, torch.arange(b)].reshape(k**b, *batch, *event)
    with torch.no_grad():
        fx = f(x)
    logp = joint_log_prob(dist, x, k**b)
    return (logp.exp() * fx).sum(), None


def exact_grad(
    f: Callable[[torch.Tensor], torch.Tensor],
    dist_builder: Builder,
    params: Mapping[str, torch.Tensor],
    method: str = "auto",
) -> ExactGradient:
    """∇θ E_{p(x;θ)}[f(x)] by the first applicable method (or the one named).

    Args:
        f, dist_builder, params: as for the estimators (see :mod:`gradest.estimators.base`).
        method: ``"auto"`` or one of ``closed-form``, ``quadrature``, ``enumeration``.

    Raises:
        GradestError: when the named method (or, for ``auto``, every method) does not apply.
    """
    if method != "auto" and method not in METHODS:
        raise GradestError(f"unknown method {method!r}; choose auto or one of {', '.join(METHODS)}")
    params = check_params(params)
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    with torch.enable_grad():
        dist = build(dist_builder, leaves)
        for name in METHODS if method == "auto" else (method,):
            result = _attempt(name, f, dist)
            if result is None:
                continue
            value, errors = result
            grads = torch.autograd.grad(value, list(leaves.values()), allow_unused=True,
                                        materialize_grads=True)
            grads = dict(zip(leaves, grads, strict=True))
            error = None
            if errors is not None:
                coarse = torch.autograd.grad(errors, list(leaves.values()), allow_unused=True,
                                             materialize_grads=True)
                error = {k: (grads[k] - c).abs() for k, c in zip(leaves, coarse, strict=True)}
            return ExactGradient(grads, value.detach(), name, error)
    raise GradestError(_why_not(method, f, dist))


def _attempt(name: str, f, dist: Distribution):
    if name == "closed-form":
        return _closed_form(f, dist)
    if name == "enumeration":
        return _enumeration(f, dist)
    parts = _normal_parts(dist)
    if parts is None or parts[0].numel() > 3:
        return None
    order = QUADRATURE_ORDER[parts[0].numel()]
    fine = _quadrature_value(f, dist, parts[0], order)
    coarse = _quadrature_value(f, dist, parts[0], order // 2)
    return fine, coarse


def _why_not(method: str, f, dist: Distribution) -> str:
    family = type(dist).__name__
    if method == "closed-form":
        return (f"no closed form for this cost under {family}: closed forms cover the named "
                "costs (square, exp, cos, linear) under a Normal; try method='quadrature'")
    if method == "quadrature":
        return (f"quadrature needs a Normal with at most 3 coordinates, got {family} with "
                f"batch {list(dist.batch_shape)} and event {list(dist.event_shape)}")
    if method == "enumeration":
        return f"enumeration needs a family with finite support; {family} has none"
    return (f"no exact gradient for {family} with this cost: exact methods cover named costs "
            "under a Normal, any cost under a Normal of ≤ 3 coordinates, and finite-support "
            "families; compare estimators against each other instead")
