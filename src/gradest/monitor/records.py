"""The monitor's records and names: one GroupStats per parameter group and step, its overhead,
the modes and the loss and estimates signatures it accepts."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import torch

from gradest.estimators.base import PerSampleGradients

if TYPE_CHECKING:
    from gradest.graph import Graph




MODES = ("auto", "vmap", "batched", "loop")


ALL = "all"


#: the group name of a stochastic node's records: ``"node:z1"``
NODE_PREFIX = "node:"


LossFn = Callable[..., "torch.Tensor | Graph"]


#: node -> parameter name -> ``[R, *shape]``: each repeat's gradient split by stochastic node
NodeEstimates = dict[str, dict[str, torch.Tensor]]


EstimatesFn = Callable[[Any, torch.Generator, int], "Mapping[str, torch.Tensor] | PerSampleGradients"]


class MonitorWarning(UserWarning):
    """An optional output of the monitor is skipped (its package is not installed)."""


class GroupStats(NamedTuple):
    """One record: a parameter group at one step.

    size: P, the numbers in the group. repeats: R. seconds: wall time of the whole measurement
    (every group). path: how the estimates were drawn (module docstring).
    """

    step: int
    group: str
    size: int
    repeats: int
    mean_norm: float
    variance: float
    variance_stderr: float
    variance_max: float
    snr: float
    seconds: float
    path: str

    def to_json(self, tags: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A JSON-ready dict; NaN and ±inf become null (JSON has no such numbers)."""
        out = dict(tags or {})
        for key, value in self._asdict().items():
            out[key] = None if isinstance(value, float) and not math.isfinite(value) else value
        return out


class Overhead(NamedTuple):
    """The monitor's own wall time against the wall time between its first and latest call."""

    monitor_seconds: float
    total_seconds: float

    @property
    def share(self) -> float:
        return self.monitor_seconds / self.total_seconds if self.total_seconds > 0 else math.nan
