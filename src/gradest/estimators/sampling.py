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

The inverse CDFs (``INVERSE_CDFS``, used by :func:`inverse_cdf` and the measure-valued rules) are
finite for every u in (0, 1) that the working dtype holds, down to its smallest normal number and
up to 1 − ε/2: tails end at the quantiles of the dtype's extreme uniforms (±5.4 for a float32
standard Normal), never at ±inf.

Because samples are dependent, the spread of the single-sample estimates no longer gives the
standard error of their mean. Each sampler therefore labels samples with ``groups``: samples in
different groups are independent and identically distributed as groups, so the variance of the
mean is estimated from the group means (see :func:`gradest.diagnostics.mean_stderr`).

References: Hammersley & Morton (1956); Owen (1997) "Scrambled net variance for integrals of
smooth functions"; Buchholz, Wenzel & Mandt (2018) "Quasi-Monte Carlo variational inference".
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch.distributions import (
    Cauchy,
    ContinuousBernoulli,
    Distribution,
    Exponential,
    GeneralizedPareto,
    HalfCauchy,
    HalfNormal,
    Independent,
    Laplace,
    Normal,
    TransformedDistribution,
    Uniform,
)

from gradest.errors import GradestError

_SEED_HIGH = 2**62


def _open_unit(u: torch.Tensor) -> torch.Tensor:
    """Clamp to the open interval: F⁻¹(0) or F⁻¹(1) is ±inf for unbounded families."""
    eps = torch.finfo(u.dtype).eps
    return u.clamp(min=torch.finfo(u.dtype).tiny, max=1.0 - eps / 2)


def below_one(t: torch.Tensor) -> torch.Tensor:
    """``t`` clamped into [−m, m], m = 1 − ε/2 the largest number below 1 in ``t``'s dtype.

    A uniform within half a spacing of 0 or 1 (any u < 2⁻²⁵ in float32) makes 2u − 1, (u + 1)/2 or
    2|u − ½| round to exactly ±1, where erfinv and log1p(−·) are infinite: clamping after that
    arithmetic moves only those draws, and only to the next representable quantile.
    """
    m = 1.0 - torch.finfo(t.dtype).eps / 2
    return t.clamp(-m, m)


def std_normal_icdf(u: torch.Tensor) -> torch.Tensor:
    """Φ⁻¹(u) = √2 erfinv(2u − 1), finite for every u in (0, 1) of its dtype (±5.4 at most in
    float32, ±8.3 in float64: the quantiles of the dtype's extreme uniforms)."""
    return torch.erfinv(below_one(2.0 * u - 1.0)) * math.sqrt(2.0)


@functools.cache
def _half_pi_below(dtype: torch.dtype) -> float:
    """The largest number below π/2 in ``dtype``: float32 rounds π/2 up, past which tan is negative."""
    half_pi = torch.tensor(math.pi / 2, dtype=dtype)
    if half_pi.item() > math.pi / 2:
        half_pi = torch.nextafter(half_pi, torch.zeros_like(half_pi))
    return half_pi.item()


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


#: one inverse CDF: (family, u in the open unit interval of its dtype) -> x = F⁻¹(u; θ), finite
InverseCdf = Callable[[Distribution, torch.Tensor], torch.Tensor]
#: family -> its inverse CDF, finite wherever u is; a family not here uses its own ``icdf`` (below)
INVERSE_CDFS: dict[type[Distribution], InverseCdf] = {}


def register_inverse_cdf(*families: type[Distribution]):
    """Decorator: the inverse CDF used for ``families`` (and subclasses without an ``icdf`` of their own)."""

    def wrap(fn: InverseCdf) -> InverseCdf:
        for family in families:
            INVERSE_CDFS[family] = fn
        return fn

    return wrap


def family_icdf(dist: Distribution, u: torch.Tensor) -> torch.Tensor:
    """x = F⁻¹(u; θ) for ``u`` in (0, 1), differentiable in θ, finite for every u its dtype holds.

    The inverse CDF is the registered one of the nearest class in ``dist``'s MRO; a class with an
    ``icdf`` of its own and no registered one (a user's family) gets u kept ε inside (0, 1), where
    the usual forms (erfinv(2u − 1), log1p(−u), (u + 1)/2) stay finite. Raises NotImplementedError
    for a family without an inverse CDF.
    """
    for cls in type(dist).__mro__:
        rule = INVERSE_CDFS.get(cls)
        if rule is not None:
            return rule(dist, u)
        if "icdf" in vars(cls):
            eps = torch.finfo(u.dtype).eps
            return dist.icdf(u.clamp(eps, 1.0 - eps))
    raise NotImplementedError  # (unreachable: Distribution defines icdf)


@register_inverse_cdf(Exponential, Uniform, ContinuousBernoulli, GeneralizedPareto)
def _torch_icdf(dist: Distribution, u: torch.Tensor) -> torch.Tensor:
    # torch's own: −log1p(−u)/λ, low + u(high − low), … are finite for every u < 1 (a quantile beyond
    # the dtype's range, a GeneralizedPareto's with a large concentration, still overflows)
    return dist.icdf(u)


@register_inverse_cdf(Normal)
def _normal_icdf(dist: Normal, u: torch.Tensor) -> torch.Tensor:
    return dist.loc + dist.scale * std_normal_icdf(u)


@register_inverse_cdf(HalfNormal)
def _half_normal_icdf(dist: HalfNormal, u: torch.Tensor) -> torch.Tensor:
    # torch's Normal.icdf((u + 1)/2) rounds u > 1 − 2⁻²⁵ (float32) to Φ⁻¹(1) = inf
    return dist.scale * torch.erfinv(below_one(u)) * math.sqrt(2.0)


@register_inverse_cdf(Laplace)
def _laplace_icdf(dist: Laplace, u: torch.Tensor) -> torch.Tensor:
    term = u - 0.5
    return dist.loc - dist.scale * term.sign() * torch.log1p(-below_one(2.0 * term.abs()))


@register_inverse_cdf(Cauchy)
def _cauchy_icdf(dist: Cauchy, u: torch.Tensor) -> torch.Tensor:
    # π(u − ½) rounds to ∓π/2, whose tangent in float32 has the wrong sign (+2·10⁷ for u → 0)
    half_pi = _half_pi_below(u.dtype)
    return dist.loc + dist.scale * torch.tan((math.pi * (u - 0.5)).clamp(-half_pi, half_pi))


@register_inverse_cdf(HalfCauchy)
def _half_cauchy_icdf(dist: HalfCauchy, u: torch.Tensor) -> torch.Tensor:
    # torch's Cauchy.icdf((u + 1)/2) gives tan(π/2) < 0 in float32 for u near 1
    return dist.scale * torch.tan((math.pi / 2 * u).clamp(max=_half_pi_below(u.dtype)))


@register_inverse_cdf(TransformedDistribution)
def _transformed_icdf(dist: TransformedDistribution, u: torch.Tensor) -> torch.Tensor:
    sign = 1
    for transform in dist.transforms:
        sign = sign * transform.sign
    if not (isinstance(sign, int) and sign == 1):
        # a decreasing transform takes the base's 1 − u; torch's sign·(u − ½) + ½ rounds u < 2⁻²⁵ to
        # 0 even where sign = +1, and 1 − u to 1
        decreasing = torch.as_tensor(sign, device=u.device) < 0
        u = _open_unit(torch.where(decreasing, 1.0 - u, u))
    x = family_icdf(dist.base_dist, u)
    for transform in dist.transforms:
        x = transform(x)
    return x


def inverse_cdf(node, u: torch.Tensor, sampler: Sampler) -> torch.Tensor:
    """x = F⁻¹(u; θ) ``[N, *B, *E]``, differentiable in θ, for ``u [N, D]``; unwraps ``Independent``."""
    base = node.dist
    while isinstance(base, Independent):
        base = base.base_dist
    like = node.like()
    u = open_unit(u.to(like.device), like.dtype)
    try:
        return family_icdf(base, u.reshape(node.num_samples, *node.batch_shape, *node.event_shape))
    except NotImplementedError:
        raise GradestError(
            f"sampler {sampler.name!r} draws through the inverse CDF, and {type(base).__name__} has "
            "none in torch.distributions; drop the '+" + sampler.name + "' suffix for this family"
        ) from None
