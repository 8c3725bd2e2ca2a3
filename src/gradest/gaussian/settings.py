"""The settings of one ``gradest gaussian`` run (light: the command's help reads their defaults)."""

from __future__ import annotations

from typing import NamedTuple

from gradest.errors import GradestError


class Settings(NamedTuple):
    """steps and samples_per_step are per fit; check_samples per estimator and check point.

    device: where the parameters and the generators live (cpu, cuda or cuda:N); the data's moments,
    the check points and the targets are computed on the CPU whatever the device.
    """

    seed: int = 0
    steps: int = 3000
    samples_per_step: int = 64
    eta: float = 0.1
    check_samples: int = 20_000
    sweep_samples: int = 10_000
    fit_estimators: tuple[str, ...] = ("pathwise", "score-loo")
    #: (objective, estimator) pairs fitted in addition, at the same settings: plain REINFORCE on the
    #: question's own loss, to show what an unreduced score-function variance does to SGD
    extra_fits: tuple[tuple[str, str], ...] = (("squared", "score"),)
    device: str = "cpu"

    def validate(self) -> Settings:
        from gradest.device import resolve_device
        from gradest.gaussian.objectives import OBJECTIVES

        if self.steps < 1:
            raise GradestError(f"--steps must be ≥ 1, got {self.steps}")
        if self.samples_per_step < 2:
            raise GradestError(
                "--samples-per-step must be ≥ 2 (the leave-one-out baseline needs 2), "
                f"got {self.samples_per_step}"
            )
        unknown = [name for name, _ in self.extra_fits if name not in OBJECTIVES]
        if unknown:
            raise GradestError(f"unknown objective(s) {unknown}; choose from {', '.join(OBJECTIVES)}")
        if self.check_samples < 40 or self.sweep_samples < 2:
            raise GradestError("check_samples must be ≥ 40 and sweep_samples ≥ 2")
        resolve_device(self.device)
        return self
