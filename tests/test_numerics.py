"""Uniforms become draws without infinities: every inverse-CDF transform of the estimators is finite
(and monotone where it is one function of u) at the extreme uniforms of float32 and float64, and the
estimators that use them stay unbiased in float32 at sample sizes that reach those uniforms."""

import math

import pytest
import torch
from torch import distributions as D

from conftest import Z_TOL
from gradest import get_estimator, make_generator
from gradest.estimators import concrete
from gradest.estimators.mvd import _exponential
from gradest.estimators.sampling import Antithetic, QuasiMonteCarlo, family_icdf, open_unit, std_normal_icdf

DTYPES = [torch.float32, torch.float64]


def extremes(dtype: torch.dtype) -> torch.Tensor:
    """Sorted distinct uniforms of ``dtype`` in (0, 1), most of them at its ends: the smallest normal
    numbers of both dtypes, torch.rand's grids 2⁻²⁴·k and 2⁻⁵³·k, the values whose 2u − 1 rounds to
    −1 in float32 (below 2⁻²⁵), 1 − 2⁻²⁴·k and 1 − ε/2 (the largest number below 1), and a few
    interior points around ½."""
    ends = [torch.finfo(torch.float32).tiny, torch.finfo(dtype).tiny, 2.0**-100, 2.0**-60]
    ends += [k * 2.0**-53 for k in (1, 2, 3)] + [2.0**-27, 2.0**-26, 2.0**-25]
    ends += [k * 2.0**-24 for k in (1, 2, 3)] + [1e-3, 0.25, 0.5 - 2.0**-24, 0.5, 0.5 + 2.0**-24, 0.75]
    ends += [1 - 1e-3] + [1 - k * 2.0**-24 for k in (3, 2, 1)] + [1 - k * 2.0**-53 for k in (3, 2, 1)]
    u = torch.tensor(ends, dtype=torch.float64).to(dtype)
    u = torch.cat([u, torch.tensor([1.0 - torch.finfo(dtype).eps / 2], dtype=dtype)])
    return torch.unique(u[(u > 0) & (u < 1)])  # (sorted; float32 rounds some of them to 0 or 1)


def assert_finite_and_monotone(x: torch.Tensor, what: str, increasing: bool = True) -> None:
    assert torch.isfinite(x).all(), f"{what}: not finite at {x.tolist()}"
    steps = x.diff() if increasing else -x.diff()
    assert (steps >= 0).all(), f"{what}: not monotone: {x.tolist()}"


def test_the_extremes_include_the_uniforms_that_broke_the_old_transforms():
    u = extremes(torch.float32)
    assert u[0] == torch.finfo(torch.float32).tiny and u[-1] == 1 - 2.0**-24
    old = math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)  # the former Normal rule and torch's icdf
    assert torch.isinf(old).any()
    assert torch.isinf(D.Normal(0.0, 1.0).icdf(u)).any()
    assert torch.isinf(D.HalfNormal(1.0).icdf(u)).any()
    assert torch.isinf(D.Laplace(0.0, 1.0).icdf(u)).any()
    assert (D.Cauchy(0.0, 1.0).icdf(u).diff() < 0).any()  # tan(−π/2) in float32 is +2·10⁷


@pytest.mark.parametrize("dtype", DTYPES)
def test_open_unit_keeps_every_uniform_inside_after_the_cast(dtype):
    u = torch.tensor([0.0, 1e-300, 2.0**-60, 2.0**-25, 0.5, 1 - 2.0**-25, 1 - 2.0**-53, 1.0],
                     dtype=torch.float64)
    v = open_unit(u, dtype)
    assert v.dtype == dtype and ((v > 0) & (v < 1)).all(), v.tolist()
    assert (v.diff() >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_standard_normal_and_exponential_transforms_are_finite_and_monotone(dtype):
    u = extremes(dtype)
    eps = std_normal_icdf(u)
    assert_finite_and_monotone(eps, "Φ⁻¹")
    # where the former √2·erfinv(2u − 1) was finite, the same numbers: only the infinite draws moved
    old = math.sqrt(2.0) * torch.erfinv(2.0 * u - 1.0)
    assert torch.equal(eps[torch.isfinite(old)], old[torch.isfinite(old)])
    # ... and they moved to the dtype's extreme quantile, Φ⁻¹ of a half-spacing from 0 or 1
    assert eps.abs().max() <= -torch.special.ndtri(torch.tensor(torch.finfo(dtype).eps / 4,
                                                                dtype=torch.float64)) + 1e-3
    e = _exponential(u)
    assert_finite_and_monotone(e, "Exp⁻¹")
    assert (e > 0).all()
    # the measure-valued Normal rule's Weibull and Maxwell draws built from them
    assert_finite_and_monotone((2.0 * e).sqrt(), "Weibull")
    assert torch.isfinite((2.0 * e + eps**2).sqrt()).all()


def _families(dtype: torch.dtype) -> dict[str, D.Distribution]:
    def c(v):
        return torch.tensor(v, dtype=dtype)

    return {
        "Normal": D.Normal(c(0.5), c(1.3)),
        "Laplace": D.Laplace(c(0.5), c(1.3)),
        "Cauchy": D.Cauchy(c(0.5), c(1.3)),
        "HalfNormal": D.HalfNormal(c(1.3)),
        "HalfCauchy": D.HalfCauchy(c(1.3)),
        "Exponential": D.Exponential(c(0.7)),
        "Uniform": D.Uniform(c(-1.0), c(2.0)),
        "LogNormal": D.LogNormal(c(0.2), c(0.5)),
        "Gumbel": D.Gumbel(c(0.5), c(1.3)),
        "Weibull": D.Weibull(c(1.3), c(2.0)),
        "Pareto": D.Pareto(c(1.0), c(3.0)),
        "Kumaraswamy": D.Kumaraswamy(c(2.0), c(3.0)),
        "ContinuousBernoulli": D.ContinuousBernoulli(probs=c(0.3)),
    }


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(_families(torch.float64)))
def test_every_inverse_cdf_is_finite_monotone_and_torch_s_inside(name, dtype):
    dist = _families(dtype)[name]
    u = extremes(dtype)
    x = family_icdf(dist, u)
    assert x.dtype == dtype
    assert_finite_and_monotone(x, name)
    assert dist.support.check(x).all(), x.tolist()
    # away from the ends it is the family's own inverse CDF: the draws' distribution is unchanged
    inside = torch.linspace(0.01, 0.99, 99, dtype=dtype)
    torch.testing.assert_close(family_icdf(dist, inside), dist.icdf(inside))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_user_family_with_its_own_icdf_is_kept_inside_by_epsilon(dtype):
    class Mine(D.Normal):
        def icdf(self, value):
            return self.loc + self.scale * math.sqrt(2.0) * torch.erfinv(2.0 * value - 1.0)

    dist = Mine(torch.tensor(0.0, dtype=dtype), torch.tensor(1.0, dtype=dtype))
    assert_finite_and_monotone(family_icdf(dist, extremes(dtype)), "a user's icdf")


@pytest.mark.parametrize("dtype", DTYPES)
def test_the_concrete_noise_is_finite_and_monotone(dtype):
    u = extremes(dtype)
    ell = torch.tensor(0.3, dtype=dtype)
    assert_finite_and_monotone(concrete.perturb(D.Bernoulli(logits=ell), ell, u), "logistic")
    logits = torch.zeros(u.shape[0], 3, dtype=dtype)
    z = concrete.perturb(D.OneHotCategorical(logits=logits), logits, u.unsqueeze(1).expand(-1, 3))
    assert_finite_and_monotone(z[:, 0], "Gumbel")


def _grid(n: int, dim: int, u: torch.Tensor) -> torch.Tensor:
    """``[n, dim]`` uniforms cycling through ``u`` at a different stride per column."""
    rows = torch.arange(n).unsqueeze(1)
    cols = torch.arange(dim).unsqueeze(0)
    return u[(rows * (2 * cols + 1) + cols) % u.shape[0]]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec", ["mvd", "mvd-uncoupled"])
@pytest.mark.parametrize(
    ("family", "params"),
    [(D.Normal, {"loc": 0.5, "scale": 1.3}), (D.Exponential, {"rate": 0.7}), (D.Bernoulli, {"probs": 0.3})],
)
def test_the_measure_valued_rules_take_the_extreme_uniforms(spec, family, params, dtype):
    est = get_estimator(spec)
    u = extremes(dtype)
    # every uniform the rule asks for comes from the extremes, in every column
    est.uniforms = lambda n, dim, generator, like: _grid(n, dim, u).to(like.dtype)
    params = {k: torch.tensor(v, dtype=dtype) for k, v in params.items()}
    res = est.per_sample(lambda x: x, family, params, 4 * u.shape[0], make_generator(0))
    for name, g in res.grads.items():
        assert torch.isfinite(g).all(), name


_INVERSE_CDF_CASES = [
    (D.Normal, {"loc": 0.5, "scale": 1.3}),
    (D.Laplace, {"loc": 0.5, "scale": 1.3}),
    (D.LogNormal, {"loc": 0.2, "scale": 0.5}),
    (D.Gumbel, {"loc": 0.5, "scale": 1.3}),
    (D.Exponential, {"rate": 0.7}),
]
#: (spec, family, params) for each sampler-using estimator and each family it applies to
_SAMPLER_CASES = [
    (spec, family, params)
    for spec in ("pathwise+qmc", "pathwise+antithetic", "score+antithetic", "score+qmc", "mvd+qmc",
                 "mvd-uncoupled+antithetic")
    for family, params in _INVERSE_CDF_CASES
    if get_estimator(spec).applicable(family(**{k: torch.tensor(v) for k, v in params.items()})) is None
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("spec", "family", "params"), _SAMPLER_CASES)
def test_the_samplers_uniforms_at_the_extremes_reach_f_finite(spec, family, params, dtype):
    est = get_estimator(spec)
    # the samplers hand over float64 uniforms; the cast to float32 rounds some to 0 or 1
    u = extremes(torch.float64)
    est.sampler.uniforms = lambda n, dim, generator: _grid(n, dim, u)
    params = {k: torch.tensor(v, dtype=dtype) for k, v in params.items()}
    res = est.per_sample(lambda x: x, family, params, 10 * u.shape[0], make_generator(0))
    for name, g in res.grads.items():
        assert torch.isfinite(g).all(), name


@pytest.mark.parametrize("sampler", [Antithetic(), QuasiMonteCarlo(4)])
def test_the_samplers_uniforms_are_inside_in_both_dtypes(sampler):
    u = sampler.uniforms(4000, 3, make_generator(0))
    for dtype in DTYPES:
        v = open_unit(u, dtype)
        assert ((v > 0) & (v < 1)).all()


# The tester's repro: float32, 5·10⁵ samples, f(x) = x under Normal(0.5, 1.3), where ∂/∂μ = 1 and
# ∂/∂σ = 0. Seeds 1 and 3 of mvd-uncoupled drew a uniform below 2⁻²⁵ and failed ("f returned NaN or
# inf") before the fix.
@pytest.mark.parametrize(
    ("spec", "seed"),
    [("mvd", 0), ("mvd", 1), ("mvd-uncoupled", 1), ("mvd-uncoupled", 3), ("mvd+antithetic", 0),
     ("mvd+qmc", 0), ("mvd-uncoupled+qmc", 2), ("pathwise+qmc", 0), ("score+antithetic", 0),
     ("score+qmc", 1)],
)
def test_float32_at_half_a_million_samples_is_unbiased(spec, seed):
    params = {"loc": torch.tensor(0.5, dtype=torch.float32), "scale": torch.tensor(1.3, dtype=torch.float32)}
    res = get_estimator(spec).per_sample(lambda x: x, D.Normal, params, 500_000, make_generator(seed))
    exact = {"loc": 1.0, "scale": 0.0}
    mean, stderr = res.mean(), res.stderr()
    for name, g in res.grads.items():
        assert g.dtype == torch.float32 and torch.isfinite(g).all()
        error = mean[name].double() - exact[name]
        if stderr[name] == 0:  # (pathwise's ∂/∂μ of a linear f is 1 on every sample)
            assert error == 0, f"{spec} seed {seed} {name}: {mean[name].item()} with no spread"
            continue
        z = error / stderr[name].double()
        assert abs(z) <= Z_TOL, f"{spec} seed {seed} {name}: z = {z.item():.2f}"



@pytest.mark.parametrize(("dtype", "step"), [(torch.float32, 2.0**-24), (torch.float64, 2.0**-53)])
def test_a_zero_uniform_becomes_the_middle_of_its_cell(monkeypatch, dtype, step):
    """torch.rand's 0 stands for [0, step): rng.uniform makes it step/2, which logistic and Gumbel noise
    keep near the cell's mass (the dtype's smallest number would put it 20 to 70 units out)."""
    from gradest import rng

    real = torch.rand
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.zeros_like(real(*a, **k)))
    u = rng.uniform((3,), torch.Generator().manual_seed(0), torch.zeros((), dtype=dtype))
    assert torch.equal(u, torch.full((3,), step / 2, dtype=dtype))
    assert float(rng.logistic(u)[0]) == pytest.approx(math.log(step / 2), rel=1e-6)
