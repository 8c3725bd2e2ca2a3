"""Gradient estimators of ∇θ E_{p(x;θ)}[f(x)], one module each, behind one interface (base.py).

=======================  =================================================================
module                   estimators (registry names)
=======================  =================================================================
pathwise.py              ``pathwise``: ∇θ f(g(ε; θ))
score.py, baselines.py   ``score``, ``score-loo``, ``score-const=B``, ``score-ema=DECAY``
mvd.py                   ``mvd`` (coupled), ``mvd-uncoupled``: c (f(x⁺) − f(x⁻))
control_variates.py      ``score-delta[=ORDER]``, ``mvd-delta[=ORDER]``, ``pathwise-delta[=ORDER]``,
                         ``score-optb``: ĝ_f − c (ĝ_h − ∇θ E h), c per coordinate, leave-one-out
sampling.py              suffixes ``+antithetic``, ``+qmc[=R]`` on any name
=======================  =================================================================
"""

from gradest.estimators.base import Estimator, PerSampleGradients
from gradest.estimators.baselines import Constant, LeaveOneOut, MovingAverage, NoBaseline
from gradest.estimators.control_variates import ConstantControl, ControlVariate, DeltaMethod
from gradest.estimators.mvd import MeasureValued
from gradest.estimators.pathwise import Pathwise
from gradest.estimators.registry import available, available_samplers, get_estimator, register
from gradest.estimators.sampling import Antithetic, QuasiMonteCarlo, get_sampler
from gradest.estimators.score import ScoreFunction

__all__ = [
    "Antithetic",
    "Constant",
    "ConstantControl",
    "ControlVariate",
    "DeltaMethod",
    "Estimator",
    "LeaveOneOut",
    "MeasureValued",
    "MovingAverage",
    "NoBaseline",
    "Pathwise",
    "PerSampleGradients",
    "QuasiMonteCarlo",
    "ScoreFunction",
    "available",
    "available_samplers",
    "get_estimator",
    "get_sampler",
    "register",
]
