"""An SVI step under :class:`gradest.monitor.GradientMonitor`: one parameter group per guide site
("site:b": the parameters its distribution is computed from), and the step's loss drawn from the
monitor's generator, so the monitor shows which site's estimator carries the variance.

    groups = site_groups(elbo, model, guide, data)
    monitor = GradientMonitor(groups, monitor_loss(elbo, model, guide), state=[elbo], repeats=32)
    monitor.step(step, (data,))   # then svi.step(data) as usual: the run is unchanged
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch

from gradest.errors import GradestError
from gradest.graph.roles import node_tensors
from gradest.pyro.elbo import ELBO
from gradest.pyro.traces import Draw, traced


def site_groups(
    elbo: ELBO, model: Callable, guide: Callable, *args: Any, **kwargs: Any
) -> dict[str, list[torch.Tensor]]:
    """ "site:NAME" -> the unconstrained Pyro parameters its distribution is computed from, for every
    guide site that has some (a parameter shared by sites is in each of their groups); the monitor's
    ``params`` argument."""
    if not isinstance(elbo, ELBO):
        raise GradestError(f"site_groups needs a gradest.pyro.ELBO, got {type(elbo).__name__}")
    layout = elbo.layout(model, guide, args, kwargs)
    draw = Draw(elbo.site, layout, torch.Generator().manual_seed(0), False)
    with poutine.trace(param_only=True) as params:
        guide_trace = traced(draw(layout.wrap(guide)), *args, **kwargs)
    store = pyro.get_param_store()
    leaves = {n: store._params[n] for n in params.trace.nodes if n in store._params}
    groups: dict[str, list[torch.Tensor]] = {}
    for name, site in guide_trace.nodes.items():
        if site["type"] != "sample" or site["is_observed"] or name not in elbo.sites:
            continue
        tensors = [t for t in node_tensors(site["fn"]).values() if t.requires_grad]
        if not tensors or not leaves:
            continue
        grads = torch.autograd.grad(
            sum(t.sum() for t in tensors), list(leaves.values()), allow_unused=True, retain_graph=True
        )
        members = [p for p, g in zip(leaves.values(), grads, strict=True) if g is not None]
        if members:
            groups[f"site:{name}"] = members
    if not groups:
        raise GradestError(
            "no guide site's distribution is computed from Pyro parameters (pyro.param or a "
            "PyroModule's); create the guide's parameters before calling site_groups"
        )
    return groups


def monitor_loss(
    elbo: ELBO, model: Callable, guide: Callable, **kwargs: Any
) -> Callable[[Any, torch.Generator], torch.Tensor]:
    """``loss_fn(batch, generator)`` for the monitor: the ELBO's surrogate with ``batch`` as the
    model's and guide's positional arguments (a tuple; ``()`` for none, a tensor for one), its noise
    from the monitor's generator; a measurement, not a training step (nothing learns)."""

    def loss_fn(batch: Any, generator: torch.Generator) -> torch.Tensor:
        given = tuple(batch) if isinstance(batch, tuple | list) else (batch,)
        return elbo.surrogate(model, guide, given, kwargs, generator, learn=False)

    return loss_fn


__all__ = ["monitor_loss", "site_groups"]
