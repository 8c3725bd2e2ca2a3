"""A Pyro model/guide pair as gradest sees it: K particles along one leading axis, every guide site
drawn from the ELBO's generator by its estimator's role, each site's cost (−log p, +log q) laid out
``[K, *plates]``, and the plate rule that says which costs a site's learning signal contains.

Layout: the particles are an outermost ``pyro.plate`` at dim −(P + 1), P = max_plate_nesting, so
every site's batch shape is ``[K, *P dims]`` and its log-density too (padded with ones on the left
where a site has fewer dims). Costs of site s seen from site z (``reduce``), as Pyro's
``TraceGraph_ELBO`` uses plate independence: a dim where s lies in a plate z does not share is
summed (s depends on every z element there, and only the sum matters); a dim of a plate they share
keeps its index (element b of s depends on element b of z only); a plate of z that s lacks leaves
s's cost broadcast over z's elements (it depends on all of them). Two iterations of one sequential
``pyro.plate`` (``for i in pyro.plate(...)``) are independent: s is not downstream of z at all.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.messenger import Messenger
from pyro.poutine.subsample_messenger import _Subsample
from torch.distributions import Distribution, Independent

from gradest import rng
from gradest.errors import GradestError
from gradest.estimators.base import Node
from gradest.estimators.pathwise import Pathwise
from gradest.graph.roles import node_tensors
from gradest.provenance import Provenance
from gradest.pyro.sites import Site

#: the particle plate's name (outermost, dim −(P + 1))
PARTICLES = "_gradest_particles"


class Layout(NamedTuple):
    """K particles and P plate dims: every site's log-density is ``[K, *P dims]``."""

    particles: int
    nesting: int

    def wrap(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` run inside the outermost particle plate."""

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            with pyro.plate(PARTICLES, self.particles, dim=-(self.nesting + 1)):
                try:
                    return fn(*args, **kwargs)
                except ValueError as err:
                    if PARTICLES not in str(err):
                        raise
                    raise GradestError(
                        f"a site's batch shape collides with the particles at dim −{self.nesting + 1} "
                        f"(max_plate_nesting={self.nesting}): {str(err).splitlines()[0]}; declare its batch "
                        "dims with pyro.plate (or move them into the event with .to_event()), or raise "
                        "max_plate_nesting"
                    ) from None

        return wrapped

    def pad(self, t: torch.Tensor, what: str) -> torch.Tensor:
        """A site's log-density as ``[K, *P dims]`` (ones added on the left), or a GradestError."""
        full = self.nesting + 1
        if t.dim() > full or (t.dim() == full and t.shape[0] not in (1, self.particles)):
            raise GradestError(
                f"{what} has batch shape {list(t.shape)}, with dims left of the {self.nesting} plate dims "
                f"(max_plate_nesting={self.nesting}) that no pyro.plate declares; declare them with "
                "pyro.plate, move them into the event with .to_event(), or raise max_plate_nesting"
            )
        t = t.reshape(*([1] * (full - t.dim())), *t.shape)
        return t.expand(self.particles, *t.shape[1:])


def traced(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``poutine.trace(fn).get_trace(...)``; a GradestError raised inside reaches the caller as raised
    (Pyro's trace handler re-raises errors with the trace's shapes appended to the message)."""
    try:
        return poutine.trace(fn).get_trace(*args, **kwargs)
    except GradestError as err:
        if isinstance(err.__cause__, GradestError):
            raise err.__cause__ from None
        raise


def frames(site: Mapping[str, Any]) -> tuple[dict[int, str], dict[str, int]]:
    """(vectorized plate dim -> plate name, sequential plate name -> iteration), particles left out."""
    dims, sequential = {}, {}
    for f in site["cond_indep_stack"]:
        if f.name == PARTICLES:
            continue
        if f.vectorized:
            dims[f.dim] = f.name
        else:
            sequential[f.name] = f.counter
    return dims, sequential


def reduce(cost: torch.Tensor, source: Mapping[str, Any], target: Mapping[str, Any]) -> torch.Tensor | None:
    """The part of ``source``'s cost ``[K, *P]`` that ``target``'s element b sees (module docstring),
    or None when the two sites are different iterations of a sequential plate."""
    s_dims, s_seq = frames(source)
    t_dims, t_seq = frames(target)
    if any(name in t_seq and t_seq[name] != i for name, i in s_seq.items()):
        return None
    nesting = cost.dim() - 1
    summed = [
        d
        for d in range(-nesting, 0)
        if cost.shape[d] > 1 and (s_dims.get(d) is None or s_dims.get(d) != t_dims.get(d))
    ]
    return cost.sum(summed, keepdim=True) if summed else cost


def log_density(
    site: Mapping[str, Any], value: torch.Tensor | None = None, scaled: bool = True
) -> torch.Tensor:
    """log p of the site's value (or ``value``), masked, scaled unless ``scaled=False``."""
    lp = site["fn"].log_prob(site["value"] if value is None else value)
    return scale_and_mask(lp, site["scale"] if scaled else 1.0, site["mask"])


def unvalidated(fn: Distribution) -> Distribution:
    """``fn`` with argument validation off (a relaxed point of a Bernoulli has a log-density too)."""
    d = fn
    while d is not None:
        d._validate_args = False
        d = d.base_dist if isinstance(d, Independent) else getattr(d, "base_dist", None)
    return fn


def is_subsample(site: Mapping[str, Any]) -> bool:
    """A plate's index site (not a random variable)."""
    return isinstance(site["fn"], _Subsample)


class Draw(Messenger):
    """Draws every unobserved guide site from ``generator`` by its site's role; records provenance
    (which earlier sites each site's distribution was computed from) when ``provenance`` is given."""

    def __init__(
        self,
        plan: Callable[[str, Distribution], Site],
        layout: Layout,
        generator: torch.Generator,
        learn: bool,
        provenance: Provenance | None = None,
    ) -> None:
        super().__init__()
        self.plan, self.layout, self.generator, self.learn = plan, layout, generator, learn
        self.provenance = provenance
        #: site name -> the guide sites its distribution was computed from
        self.origins: dict[str, frozenset[str]] = {}

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        if msg["is_observed"] or msg["value"] is not None or msg["done"] or is_subsample(msg):
            return
        name, fn = msg["name"], msg["fn"]
        if msg["infer"].get("enumerate"):
            raise GradestError(
                f"guide site {name!r} asks for Pyro's enumeration (infer={{'enumerate': …}}); "
                "gradest.pyro.ELBO sums over a site's values with estimators={"
                f"{name!r}: 'enumerate'}} instead: drop the infer flag"
            )
        if not isinstance(fn, Distribution):
            raise GradestError(f"guide site {name!r} is not a torch distribution ({type(fn).__name__})")
        batch = fn.batch_shape
        if len(batch) != self.layout.nesting + 1 or batch[0] != self.layout.particles:
            raise GradestError(
                f"guide site {name!r} has batch shape {list(batch)}, and with {self.layout.particles} "
                f"particles and max_plate_nesting={self.layout.nesting} it must be [K, …] with "
                f"{self.layout.nesting} plate dims: declare its batch dims with pyro.plate (or "
                "move them into the event with .to_event()), or raise max_plate_nesting"
            )
        site = self.plan(name, fn)
        est = site.estimator
        relaxed = site.role == "reparameterized" and not isinstance(est, Pathwise)
        node = Node(
            fn,
            self.layout.particles,
            True,
            batch[1:],
            fn.event_shape,
            type(fn),
            node_tensors(fn) if relaxed else {},
            learn=self.learn,
        )
        if relaxed:
            x = est.node_sample(node, self.generator)  # the relaxation's own draw (checks its health)
        else:
            x = rng.sample(fn, (), self.generator, site.role == "reparameterized")
            est.healthy(node, x)
        if self.provenance is not None:
            self.origins[name] = self.provenance.of(fn)
            self.provenance.mark(x, name)
        msg["value"] = x
