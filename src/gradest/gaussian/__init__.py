r"""The reparameterization trick worked end to end on fitting N(μ, σ²) to data (``gradest gaussian``).

Data x_1..x_n, a stochastic node y ~ N(μ, σ²), the loss f(y) = Σ_i (y − x_i)²: exact gradients and
single-sample variances in closed form (:mod:`.closed_form`), Monte Carlo checks with the core
estimators (:mod:`.checks`), SGD fits of four objectives (:mod:`.objectives`, :mod:`.fits`),
conclusions computed from the numbers (:mod:`.conclusions`), and the report (:mod:`.report`)::

    from gradest.gaussian import load_dataset, run, write_outputs
    results = run(load_dataset("data.csv", column="height"))
    write_outputs(results, "gradest-out/gaussian")
"""

from gradest.gaussian.data import Dataset, default_dataset, load_dataset
from gradest.gaussian.report import check_out_dir, write_outputs
from gradest.gaussian.walkthrough import Results, Settings, run

__all__ = ["Dataset", "Results", "Settings", "check_out_dir", "default_dataset", "load_dataset", "run",
           "write_outputs"]
