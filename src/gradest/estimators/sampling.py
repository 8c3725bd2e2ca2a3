r"""Variance-reduced sampling for every estimator: antithetic pairs and randomized quasi-Monte Carlo.

A sampler supplies the uniforms u ∈ (0, 1)^dim behind each sample; an estimator turns them into
draws through inverse CDFs, x = F⁻¹(u; θ), which is also a valid reparameterization (the
pathwise estimator differentiates through it). Each sample's u is exactly Uniform(0, 1)^dim, so
every estimate stays unbiased; what changes is the dependence between samples:

* ``Antithetic``: pairs (u, 1 − u); for a symmetric family F⁻¹(1 − u) mirrors F⁻¹(u), so a Normal
  gets ε and −ε. Pairs are independent of each other; the two halves of a pair are not.
* ``QuasiMonteCarlo(R)``: R independent scramblings of a Sobol sequence (Owen scrambling via
  ``torch.quasirandom.SobolEngine(scramble=True)``, seeds drawn from the generator), N/R points
  each. Points within a randomization are dependent (evenly spread); randomizations are independent.

Because samples are dependent, the spread of the single-sample estimates no longer gives the
standard error of their mean. Each sampler therefore labels samples with ``groups``: samples in
different groups are independent and identically distributed as groups, so the variance of the
mean is estimated from the group means (see :func:`gradest.diagnostics.mean_stderr`).

References: Hammersley & Morton (1956); Owen (1997) "Scrambled net variance for integrals of
smooth functions"; Buchholz, Wenzel & Mandt (2018) "Quasi-Monte Carlo variational inference".
"""

from __future__ import annotations

import math

import torch
from torch.distributions import Independent

from gradest.errors import GradestError

_SEED_HIGH = 2**62


def _open_unit(u: torch.Tensor) -> torch.Tensor:
    """Clamp to the open interval: F⁻¹(0) or F⁻¹(1) is ±inf for unbounded families."""
    eps = torch.finfo(u.dtype).eps
    return u.clamp(min=torch.finfo(u.dtype).tiny, max=1.0 - eps / 2)


def open_unit(u: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``u`` in ``dtype``, still inside (0, 1): float32 rounds some float64 u up to exactly 1."""
    return _open_unit(u.to(dtype))


class Antithetic:
    """Pairs (u, 1 − u): samples 2i and 2i + 1 form group i. Needs an even number of samples."""

    name = "antithetic"
    min_samples = 2

    def check(self, num_samples: int) -> None:
        """Refuse a sample count this sampler cannot split into its groups."""
        if num_samples % 2:
            raise GradestError(
                f"antithetic sampling draws pairs, so num_samples must be even, got {num_samples}; "
                f"use {num_samples + 1}"
            )

    def uniforms(self, num_samples: int, dim: int, generator: torch.Generator) -> torch.Tensor:
        """``[N, dim]`` uniforms in (0, 1) from ``generator``, with this sampler's structure."""
        self.check(num_samples)
        u = torch.rand(num_samples // 2, dim, generator=generator, dtype=torch.float64,
                       device=generator.device)
        return _open_unit(torch.stack([u, 1.0 - u], dim=1).reshape(num_samples, dim))

    def groups(self, num_samples: int) -> torch.Tensor:
        """``[N]`` group labels: samples sharing a label are dependent, different labels independent."""
        return torch.arange(num_samples) // 2

    def __repr__(self) -> str:
        return "Antithetic()"


class QuasiMonteCarlo:
    """R independently scrambled Sobol sequences of N/R points: group r = randomization r."""

    name = "qmc"

    def __init__(self, randomizations: int = 10) -> None:
        if isinstance(randomizations, bool) or not isinstance(randomizations, int) or randomizations < 2:
            raise GradestError(
                f"quasi-Monte Carlo needs at least 2 independent randomizations to estimate its "
                f"standard error, got {randomizations!r}; use e.g. qmc=10"
            )
        self.randomizations = randomizations
        self.min_samples = randomizations

    def check(self, num_samples: int) -> None:
        """Refuse a sample count this sampler cannot split into its groups."""
        if num_samples % self.randomizations:
            raise GradestError(
                f"quasi-Monte Carlo splits the samples into {self.randomizations} equal "
                f"randomizations, so num_samples must be a multiple of {self.randomizations}, got "
                f"{num_samples}; use {math.ceil(num_samples / self.randomizations) * self.randomizations}"
                f" or choose the count with +qmc=R"
            )

    def uniforms(self, num_samples: int, dim: int, generator: torch.Generator) -> torch.Tensor:
        """``[N, dim]`` uniforms in (0, 1) from ``generator``, with this sampler's structure."""
        self.check(num_samples)
        if dim > torch.quasirandom.SobolEngine.MAXDIM:
            raise GradestError(
                f"Sobol points exist in at most {torch.quasirandom.SobolEngine.MAXDIM} dimensions, and "
                f"this estimator needs {dim} uniforms per sample; use +antithetic or no sampler"
            )
        per = num_samples // self.randomizations
        seeds = torch.randint(_SEED_HIGH, (self.randomizations,), generator=generator,
                              device=generator.device).tolist()
        blocks = [
            torch.quasirandom.SobolEngine(dim, scramble=True, seed=int(s)).draw(per, dtype=torch.float64)
            for s in seeds
        ]
        return _open_unit(torch.cat(blocks).to(generator.device))

    def groups(self, num_samples: int) -> torch.Tensor:
        """``[N]`` group labels: samples sharing a label are dependent, different labels independent."""
        return torch.arange(num_samples) // (num_samples // self.randomizations)

    def __repr__(self) -> str:
        return f"QuasiMonteCarlo(randomizations={self.randomizations})"


Sampler = Antithetic | QuasiMonteCarlo


def get_sampler(spec: str) -> Sampler:
    """A sampler from ``antithetic``, ``qmc`` or ``qmc=R``."""
    name, _, arg = spec.partition("=")
    if name == "antithetic":
        if arg:
            raise GradestError(f"sampler 'antithetic' takes no argument, got {spec!r}")
        return Antithetic()
    if name == "qmc":
        if not arg:
            return QuasiMonteCarlo()
        try:
            count = int(arg)
        except ValueError:
            raise GradestError(f"the number of randomizations must be an integer, got {arg!r}") from None
        return QuasiMonteCarlo(count)
    raise GradestError(f"unknown sampler {name!r}; choose one of: {', '.join(SAMPLERS)}")


#: Sampler suffix -> one-line summary, for help texts (``NAME+SUFFIX``).
SAMPLERS: dict[str, str] = {
    "antithetic": "antithetic pairs (u, 1 − u) through the inverse CDF; stderr over pairs",
    "qmc": "scrambled Sobol points through the inverse CDF, R = 10 randomizations (qmc=R); "
    "stderr over randomizations",
}


def inverse_cdf(node, u: torch.Tensor, sampler: Sampler) -> torch.Tensor:
    """x = F⁻¹(u; θ) ``[N, *B, *E]``, differentiable in θ, for ``u [N, D]``; unwraps ``Independent``."""
    base = node.dist
    while isinstance(base, Independent):
        base = base.base_dist
    like = node.like()
    u = open_unit(u.to(like.device), like.dtype)
    try:
        return base.icdf(u.reshape(node.num_samples, *node.batch_shape, *node.event_shape))
    except NotImplementedError:
        raise GradestError(
            f"sampler {sampler.name!r} draws through the inverse CDF, and {type(base).__name__} has "
            "none in torch.distributions; drop the '+" + sampler.name + "' suffix for this family"
        ) from None
