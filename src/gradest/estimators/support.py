"""Supports, as the score-type estimators need them: whether a continuous support moves with
the parameters (boundary terms the score identity misses), followed through Independent,
MixtureSameFamily and transform chains; discrete families at the boundary of their probabilities."""

from __future__ import annotations

import math

import torch
from torch.distributions import Distribution, Independent, TransformedDistribution, constraints
from torch.distributions.utils import clamp_probs

from gradest import health


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
    probs = health.given_probs(family)
    if probs is None or not is_discrete(family):
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
