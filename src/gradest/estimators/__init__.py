"""Gradient estimators of ∇θ E_{p(x;θ)}[f(x)], one module each, behind one interface (base.py).

=======================  =================================================================
module                   estimators (registry names)
=======================  =================================================================
pathwise.py              ``pathwise``: ∇θ f(g(ε; θ))
score.py, baselines.py   ``score``, ``score-loo``, ``score-const=B``, ``score-ema=DECAY``
mvd.py                   ``mvd`` (coupled), ``mvd-uncoupled``: c (f(x⁺) − f(x⁻))
control_variates.py      ``score-delta[=ORDER]``, ``mvd-delta[=ORDER]``, ``pathwise-delta[=ORDER]``,
                         ``score-optb``: ĝ_f − c (ĝ_h − ∇θ E h), c per coordinate, leave-one-out
scores.py                analytic ∇φ log p (Normal, Bernoulli, Categorical, Exponential, Poisson, Gamma)
relaxed.py, concrete.py  ``gumbel-softmax=TEMP``, ``straight-through``, ``gumbel-st=TEMP`` (biased by design)
arm.py                   ``arm``, ``disarm``: antithetic Bernoulli estimators
rebar.py, relax.py       ``rebar``, ``relax``: the relaxation as a (learned) control variate
unordered_set.py         ``unordered-set=K``: sampling without replacement for Categorical
enumeration.py           ``enumerate``: the exact sum over a small support
sampling.py              suffixes ``+antithetic``, ``+qmc[=R]`` on any name
registry.py              names -> factories; installed packages add theirs through the entry-point
                         group ``gradest.estimators`` (loaded on first use)
=======================  =================================================================
"""

from gradest.estimators.arm import ARM
from gradest.estimators.base import BoundCost, Capabilities, Estimator, Node, PerSampleGradients, Terms
from gradest.estimators.baselines import Constant, LeaveOneOut, MovingAverage, NoBaseline
from gradest.estimators.control_variates import ConstantControl, ControlVariate, DeltaMethod
from gradest.estimators.enumeration import Enumerate
from gradest.estimators.mvd import MeasureValued
from gradest.estimators.pathwise import Pathwise
from gradest.estimators.rebar import Rebar
from gradest.estimators.registry import PluginWarning, available, available_samplers, get_estimator, register
from gradest.estimators.relax import Relax
from gradest.estimators.relaxed import Annealing, GumbelSoftmax, StraightThrough
from gradest.estimators.sampling import Antithetic, QuasiMonteCarlo, get_sampler
from gradest.estimators.score import ScoreFunction
from gradest.estimators.unordered_set import UnorderedSet

__all__ = [
    "ARM",
    "Annealing",
    "Antithetic",
    "BoundCost",
    "Capabilities",
    "Constant",
    "ConstantControl",
    "ControlVariate",
    "DeltaMethod",
    "Enumerate",
    "Estimator",
    "GumbelSoftmax",
    "LeaveOneOut",
    "MeasureValued",
    "MovingAverage",
    "NoBaseline",
    "Node",
    "Pathwise",
    "PerSampleGradients",
    "PluginWarning",
    "QuasiMonteCarlo",
    "Rebar",
    "Relax",
    "ScoreFunction",
    "StraightThrough",
    "Terms",
    "UnorderedSet",
    "available",
    "available_samplers",
    "get_estimator",
    "get_sampler",
    "register",
]
