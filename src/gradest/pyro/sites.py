"""Which estimator runs at a guide site: the user's choice checked against the same capability data
as the core (``Capabilities``, the graph role ``node``), or the default.

Roles (``capabilities.node``): ``reparameterized`` — the site's value is drawn along an autograd path
(``pathwise``; the relaxations ``gumbel-softmax``, ``straight-through``, ``gumbel-st``, biased by
design); ``score`` — a score-function term weighted by the site's downstream cost (``score``,
``score-loo``, ``score-const=B``, ``score-ema=DECAY``: the moving average lives in the ELBO object,
which persists across steps); ``callable`` — the estimator's own hook re-evaluates the site's
downstream cost at points of its choice through Pyro handlers (``arm``, ``disarm``, ``rebar``,
``relax``, ``unordered-set=K``, ``enumerate``); ``none`` — refused with the reason and the alternative.
"""

from __future__ import annotations

from typing import NamedTuple

from torch.distributions import Bernoulli, Categorical, Distribution, OneHotCategorical

from gradest.errors import GradestError
from gradest.estimators.base import Estimator, unwrap
from gradest.estimators.registry import get_estimator


class Site(NamedTuple):
    """One guide site's estimator: its spec, the estimator value (kept across steps) and its role."""

    name: str
    spec: str
    estimator: Estimator
    role: str


def default_spec(fn: Distribution, num_particles: int) -> str:
    """pathwise where the family has rsample; score-loo otherwise (score with one particle)."""
    if fn.has_rsample:
        return "pathwise"
    return "score-loo" if num_particles >= 2 else "score"


def alternative(fn: Distribution, num_particles: int) -> str:
    """The estimators that do apply to ``fn``'s family, as a phrase naming them."""
    family = unwrap(fn)
    loo = "'score-loo'" if num_particles >= 2 else "'score' (or 'score-loo' with num_particles ≥ 2)"
    if fn.has_rsample:
        return f"'pathwise' or {loo}"
    if isinstance(family, Bernoulli):
        return f"'disarm', 'relax', 'enumerate' or {loo}"
    if isinstance(family, Categorical | OneHotCategorical):
        return f"'unordered-set=K', 'enumerate' or {loo}"
    return loo


def resolve(name: str, fn: Distribution, spec: str | Estimator, num_particles: int) -> Site:
    """The site's estimator, or a GradestError naming why it does not apply and what does."""
    try:
        est = get_estimator(spec)
    except GradestError as err:
        raise GradestError(f"guide site {name!r}: {err}") from None
    label = est.name
    if est.sampler is not None:
        raise GradestError(
            f"guide site {name!r}: {label!r} draws dependent samples (a sampler suffix), which "
            "the ELBO's independent particles cannot hold; drop the '+…' suffix"
        )
    role = est.capabilities.node
    if role == "none":
        raise GradestError(
            f"guide site {name!r}: {label!r} {est.node_refusal}, which a Pyro site cannot "
            f"hand over; use {alternative(fn, num_particles)} for this site"
        )
    reason = est.applicable(fn)
    if reason is not None:
        raise GradestError(f"guide site {name!r}: {reason}")
    if est.min_samples > num_particles:
        raise GradestError(
            f"guide site {name!r}: {label!r} needs num_particles ≥ {est.min_samples} (its "
            f"baseline uses the other particles), got {num_particles}; raise num_particles "
            f"or use {alternative(fn, 1)}"
        )
    return Site(name, label, est, role)
