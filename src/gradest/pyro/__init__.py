r"""gradest inside Pyro: the estimator of your choice at every sample site of any model/guide.

    svi = pyro.infer.SVI(model, guide, optim,
                         gradest.pyro.ELBO(num_particles=8, max_plate_nesting=1,
                                           estimators={"b": "disarm", "z": "pathwise"}))

:class:`ELBO` subclasses ``pyro.infer.ELBO`` (``loss``, ``loss_and_grads``, ``differentiable_loss``);
a guide site not named gets pathwise where its family has rsample, score-loo otherwise. Any
registered gradest estimator applies where its capabilities say it does (refused with the
alternative elsewhere): score-function sites use their downstream cost per plate element as
``TraceGraph_ELBO`` does; ARM/DisARM, REBAR/RELAX and enumeration re-evaluate the model through
``poutine.condition``, all particles in one batch. :func:`site_groups` and :func:`monitor_loss` put
an SVI step under :class:`gradest.monitor.GradientMonitor`, one group per guide site ("site:b").

Needs Pyro: ``pip install gradest[pyro]``. Nothing else in gradest imports this package.
"""

try:
    import pyro  # noqa: F401
except ImportError as err:  # pragma: no cover - exercised where Pyro is absent
    raise ImportError("gradest.pyro needs Pyro (pyro-ppl ≥ 1.9): pip install gradest[pyro]") from err

from gradest.pyro.elbo import ELBO
from gradest.pyro.monitoring import monitor_loss, site_groups
from gradest.pyro.sites import Site, default_spec, resolve

__all__ = ["ELBO", "Site", "default_spec", "monitor_loss", "resolve", "site_groups"]
