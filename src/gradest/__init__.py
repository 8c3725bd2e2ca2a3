"""gradest: gradients of expectations, ∇θ E_{p(x;θ)}[f(x)].

Two views of every estimator, on the same random numbers::

    import torch, gradest
    from torch.distributions import Normal

    params = {"loc": torch.tensor(1.0, dtype=torch.float64),
              "scale": torch.tensor(1.0, dtype=torch.float64)}
    f = gradest.named_cost("cos", k=2.0)
    gen = gradest.make_generator(0)

    est = gradest.get_estimator("pathwise")
    per_sample = est.per_sample(f, Normal, params, 10_000, gen)   # [N, *shape] per parameter
    print(gradest.summarize(per_sample, gradest.exact_grad(f, Normal, params)))

    loss = est.surrogate(f, Normal, params, 64, gen)                # train with loss.backward()
"""

import importlib

from gradest import rng
from gradest.costs import Cost, load_cost, named_cost
from gradest.diagnostics import EstimatorSummary, ParamStats, param_stats, summarize
from gradest.errors import GradestError, NonFiniteError
from gradest.estimators import (
    Antithetic,
    BoundCost,
    Capabilities,
    Constant,
    ConstantControl,
    ControlVariate,
    DeltaMethod,
    Estimator,
    LeaveOneOut,
    MeasureValued,
    MovingAverage,
    NoBaseline,
    Node,
    Pathwise,
    PerSampleGradients,
    QuasiMonteCarlo,
    ScoreFunction,
    Terms,
    available,
    available_samplers,
    get_estimator,
    register,
)
from gradest.families import FAMILIES, get_family
from gradest.graph import Attribution, Graph, NodeGradients, attribute, enumerate_graph, graph
from gradest.rng import make_generator

__version__ = "0.1.0"

__all__ = [
    "FAMILIES",
    "Antithetic",
    "Attribution",
    "BoundCost",
    "Capabilities",
    "Constant",
    "ConstantControl",
    "ControlVariate",
    "Cost",
    "DeltaMethod",
    "Estimator",
    "EstimatorSummary",
    "ExactGradient",
    "GradestError",
    "GradientMonitor",
    "Graph",
    "LeaveOneOut",
    "MeasureValued",
    "MovingAverage",
    "NoBaseline",
    "Node",
    "NodeGradients",
    "NonFiniteError",
    "ParamStats",
    "Pathwise",
    "PerSampleGradients",
    "QuasiMonteCarlo",
    "ScoreFunction",
    "Selection",
    "Terms",
    "__version__",
    "attribute",
    "available",
    "available_samplers",
    "enumerate_graph",
    "exact_grad",
    "get_estimator",
    "get_family",
    "graph",
    "load_cost",
    "make_generator",
    "named_cost",
    "param_stats",
    "register",
    "rng",
    "select",
    "summarize",
    "testing",
]

#: public names loaded on first use (PEP 562): exact.py and the lab import scipy, which
#: ``import gradest`` (and so every ``gradest`` command, ``--help`` included) should not pay for
_LAZY = {
    "ExactGradient": "gradest.exact",
    "exact_grad": "gradest.exact",
    "Selection": "gradest.lab.selection",
    "select": "gradest.lab.selection",
    "GradientMonitor": "gradest.monitor",
    "testing": "gradest.testing",  # the conformance kit, a module: gradest.testing.check_estimator
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradest' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if module == f"{__name__}.{name}" else getattr(loaded, name)
    globals()[name] = value  # later look-ups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
