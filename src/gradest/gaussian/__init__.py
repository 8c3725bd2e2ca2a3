r"""The reparameterization trick worked end to end on fitting N(μ, σ²) to data (``gradest gaussian``).

Data x_1..x_n, a stochastic node y ~ N(μ, σ²), the loss f(y) = Σ_i (y − x_i)²: exact gradients and
single-sample variances in closed form (:mod:`.closed_form`), Monte Carlo checks with the core
estimators (:mod:`.checks`), SGD fits of four objectives (:mod:`.objectives`, :mod:`.fits`),
conclusions computed from the numbers (:mod:`.conclusions`), and the report (:mod:`.report`)::

    from gradest.gaussian import load_dataset, run, write_outputs
    results = run(load_dataset("data.csv", column="height"))
    write_outputs(results, "gradest-out/gaussian")
"""

import importlib

__all__ = ["Dataset", "Results", "Settings", "check_out_dir", "default_dataset", "load_dataset", "run",
           "write_outputs"]

#: the public names, loaded on first use (PEP 562): the report imports matplotlib and the
#: objectives scipy, which `gradest --help` and `from gradest.gaussian.settings import ...` skip
_LAZY = {
    "Dataset": "gradest.gaussian.data",
    "default_dataset": "gradest.gaussian.data",
    "load_dataset": "gradest.gaussian.data",
    "check_out_dir": "gradest.gaussian.report",
    "write_outputs": "gradest.gaussian.report",
    "Results": "gradest.gaussian.results",
    "run": "gradest.gaussian.walkthrough",
    "Settings": "gradest.gaussian.settings",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'gradest.gaussian' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
