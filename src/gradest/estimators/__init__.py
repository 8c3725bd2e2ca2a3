"""Gradient estimators of ∇θ E_{p(x;θ)}[f(x)], one module each, behind one interface (base.py)."""

from gradest.estimators.base import Estimator, PerSampleGradients
from gradest.estimators.baselines import Constant, LeaveOneOut, MovingAverage, NoBaseline
from gradest.estimators.pathwise import Pathwise
from gradest.estimators.registry import available, get_estimator, register
from gradest.estimators.score import ScoreFunction

__all__ = [
    "Constant",
    "Estimator",
    "LeaveOneOut",
    "MovingAverage",
    "NoBaseline",
    "Pathwise",
    "PerSampleGradients",
    "ScoreFunction",
    "available",
    "get_estimator",
    "register",
]
