"""The estimator laboratory: which estimator, and why — measured, integrated and reproduced.

* :func:`select` — pilot-run every applicable estimator and rank by efficiency
  (single-sample variance × seconds per sample), checking each for bias (``gradest advise``);
* :func:`run_sweep` — the Gaussian variance sweep of Mohamed et al. (2020, Fig. 2), measured and
  integrated exactly (``gradest sweep``); :func:`single_sample_variance` gives the exact values;
* :func:`run_blr` — Bayesian logistic regression by VI, the survey's second experiment
  (``gradest blr``).
"""

from gradest.lab.blr import BLRConfig, run_blr
from gradest.lab.selection import Candidate, Selection, select
from gradest.lab.sweep import SweepConfig, SweepRow, run_sweep
from gradest.lab.variance_exact import ExactVariance, NormalProblem, single_sample_variance

__all__ = [
    "BLRConfig",
    "Candidate",
    "ExactVariance",
    "NormalProblem",
    "Selection",
    "SweepConfig",
    "SweepRow",
    "run_blr",
    "run_sweep",
    "select",
    "single_sample_variance",
]
