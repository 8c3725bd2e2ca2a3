"""Randomness comes from the caller's generator alone: same seed, same numbers; the global RNG is
left as it was (also by the families that fall back to it, and under threads); the Normal's noise
is exactly ``loc + scale * randn(shape, generator=g)``; every family sampler has the right moments.
dtype and device: outputs in the parameters' dtype and on their device (CUDA tests skip without one).
"""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch
import torch.distributions as D

from conftest import Z_TOL, t
from gradest import GradestError, get_estimator, make_generator, named_cost, rng
from test_core_support import SPECS, applicable_specs, assert_views_agree, per_sample, surrogate, usable_specs

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def independent(loc, scale):
    return D.Independent(D.Normal(loc, scale), 1)


def categorical_logits(logits):
    return D.Categorical(logits=logits)


def _cos(x):
    return torch.cos(x).sum(-1)


def _square(x):
    return (x**2).sum(-1)


def _weighted(x):
    return (x * torch.tensor([1.0, -2.0, 3.0], dtype=x.dtype)).sum(-1)


def _bernoulli_cost(x):
    return ((x - 0.3) ** 2).sum(-1)


def _categorical_cost(x):
    return (x.to(torch.float64) - 1.5) ** 2


PARAMS = {"loc": t([[0.3, -0.5], [1.0, 0.2], [-0.7, 0.9]]), "scale": t(0.7, 1.2)}
#: families drawn from the generator (Normal, Bernoulli, …) and through the locked global fallback
#: (Gamma, Beta, Dirichlet)
FAMILIES = {
    "normal": (independent, PARAMS, _cos),
    "gamma": (D.Gamma, {"concentration": t(0.6, 3.0), "rate": t(2.0, 0.5)}, _square),
    "beta": (D.Beta, {"concentration1": t(0.7, 2.0), "concentration0": t(2.5, 1.0)}, _square),
    "dirichlet": (D.Dirichlet, {"concentration": t(0.5, 1.0, 4.0)}, _weighted),
    "bernoulli": (D.Bernoulli, {"probs": t(0.3, 0.8)}, _bernoulli_cost),
    "categorical": (categorical_logits, {"logits": t(0.5, -1.0, 0.2, 1.0)}, _categorical_cost),
    "poisson": (D.Poisson, {"rate": t(2.0, 0.5)}, _square),
    "exponential": (D.Exponential, {"rate": t(2.0, 0.5)}, _square),
}
PAIRS = [(name, spec) for name, (b, p, _) in FAMILIES.items() for spec in usable_specs(b, p)]


def test_every_estimator_meets_a_fallback_family():
    fallback = {spec for name, spec in PAIRS if name in ("gamma", "beta", "dirichlet")}
    assert {"pathwise", "score", "score-loo"} <= fallback
    assert {spec for _, spec in PAIRS} == set(SPECS)


@pytest.mark.parametrize("name,spec", PAIRS)
def test_same_seed_same_numbers_and_the_global_rng_untouched(name, spec):
    builder, params, f = FAMILIES[name]
    before = torch.get_rng_state()
    first = per_sample(spec, f, builder, params, 60, seed=4)
    loss, grads = surrogate(spec, f, builder, params, 60, seed=4)
    assert torch.equal(torch.get_rng_state(), before), f"{spec} on {name} moved the global RNG"
    again = per_sample(spec, f, builder, params, 60, seed=4)
    assert torch.equal(first.values, again.values)
    for k in params:
        assert torch.equal(first.grads[k], again.grads[k]), k
    assert_views_agree(first, loss, grads)
    # another seed, other numbers: the equality above is not that of a constant (an estimator that is
    # exact here, enumeration or a sample set covering the support, has nothing random to compare)
    if any(bool((g != g[:1]).any()) for g in first.grads.values()):
        other = per_sample(spec, f, builder, params, 60, seed=5)
        assert any(not torch.equal(other.grads[k], first.grads[k]) for k in params)


def test_torch_samplers_without_a_generator_would_move_the_global_rng():
    # the control of the test above: torch's own Gamma sampler draws from the global RNG
    before = torch.get_rng_state()
    D.Gamma(t(2.0), t(1.0)).rsample()
    assert not torch.equal(torch.get_rng_state(), before)
    torch.set_rng_state(before)


THREAD_CASES = [("gamma", s) for s in usable_specs(D.Gamma, FAMILIES["gamma"][1])] + [
    ("dirichlet", "pathwise"), ("normal", "pathwise"), ("normal", "score-loo")]


@pytest.mark.parametrize("name,spec", THREAD_CASES)
def test_threads_get_the_serial_numbers_and_leave_the_global_rng(name, spec):
    builder, params, f = FAMILIES[name]
    seeds = (11, 12)
    serial = [per_sample(spec, f, builder, params, 400, seed) for seed in seeds]
    before = torch.get_rng_state()
    results: dict[int, list] = {0: [], 1: []}
    errors = []
    barrier = threading.Barrier(2)

    def work(i: int) -> None:
        try:
            barrier.wait()
            for _ in range(3):
                results[i].append(per_sample(spec, f, builder, params, 400, seeds[i]))
        except Exception as err:  # reported below, in the main thread
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert torch.equal(torch.get_rng_state(), before)
    for i in range(2):
        assert len(results[i]) == 3
        for got in results[i]:
            assert torch.equal(got.values, serial[i].values)
            for k in params:
                assert torch.equal(got.grads[k], serial[i].grads[k]), (i, k)
    assert not torch.equal(serial[0].values, serial[1].values)


def test_per_sample_leaves_other_threads_validation_on():
    def slow_builder(loc, scale):  # a builder that takes time (a network, here a sleep)
        time.sleep(0.002)
        return D.Normal(loc, scale)

    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            get_estimator("pathwise").per_sample(_cos, slow_builder, PARAMS, 20, make_generator(0))

    worker = threading.Thread(target=work)
    worker.start()
    accepted = 0
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline and not accepted:
            try:
                D.Normal(t(0.0), t(-1.0))
                accepted += 1
            except ValueError:
                pass
            time.sleep(0.0003)
    finally:
        stop.set()
        worker.join()
    assert accepted == 0, "an invalid Normal(0, -1) was accepted in another thread during per_sample"


# ── the Normal's noise ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normal_noise_is_loc_plus_scale_times_randn(dtype):
    loc, scale = PARAMS["loc"].to(dtype), PARAMS["scale"].to(dtype)
    n = 50
    want = loc + scale * torch.randn((n, 3, 2), generator=make_generator(8), dtype=dtype)
    for dist in (D.Normal(loc, scale), independent(loc, scale)):
        for reparameterized in (True, False):
            x = rng.sample(dist, (n,), make_generator(8), reparameterized)
            assert x.dtype == dtype and torch.equal(x, want)
    # replicated parameters (per_sample's layout) draw the same numbers
    rep = D.Normal(loc.expand(n, 3, 2), scale.expand(n, 1, 2))
    assert torch.equal(rng.sample(rep, (), make_generator(8), True), want)
    # through the estimators: x = μ + σε, so pathwise's ∂/∂σ of f(x) = x is ε itself
    mu, sigma = t(0.7).to(dtype), t(1.3).to(dtype)
    eps = torch.randn((n,), generator=make_generator(9), dtype=dtype)
    for spec in ("pathwise", "score"):
        est = per_sample(spec, lambda x: x, D.Normal, {"loc": mu, "scale": sigma}, n, seed=9)
        assert torch.equal(est.values, mu + sigma * eps), spec
    est = per_sample("pathwise", lambda x: x, D.Normal, {"loc": mu, "scale": sigma}, n, seed=9)
    assert torch.equal(est.grads["scale"], eps)
    assert not torch.equal(rng.sample(D.Normal(loc, scale), (n,), make_generator(7), True), want)


# ── the family samplers ─────────────────────────────────────────────────────────────────────


def _T(*values, dtype):
    return torch.tensor(values[0] if len(values) == 1 else list(values), dtype=dtype)


#: family sampler key -> dtype -> a distribution of that family
SAMPLER_CASES = {
    D.Normal: lambda dt: D.Normal(_T(0.3, -1.0, dtype=dt), _T(0.7, 2.0, dtype=dt)),
    D.MultivariateNormal: lambda dt: D.MultivariateNormal(
        _T(0.3, -1.0, dtype=dt), _T([[2.0, 0.6], [0.6, 1.0]], dtype=dt)),
    D.Independent: lambda dt: independent(_T(0.3, -1.0, dtype=dt), _T(0.7, 2.0, dtype=dt)),
    D.TransformedDistribution: lambda dt: D.LogNormal(_T(0.2, -0.5, dtype=dt), _T(0.4, 0.3, dtype=dt)),
    D.Uniform: lambda dt: D.Uniform(_T(-1.0, 2.0, dtype=dt), _T(0.5, 5.0, dtype=dt)),
    D.Exponential: lambda dt: D.Exponential(_T(0.5, 3.0, dtype=dt)),
    D.Laplace: lambda dt: D.Laplace(_T(0.3, -1.0, dtype=dt), _T(0.7, 2.0, dtype=dt)),
    D.Cauchy: lambda dt: D.Cauchy(_T(0.3, -1.0, dtype=dt), _T(0.7, 2.0, dtype=dt)),
    D.Bernoulli: lambda dt: D.Bernoulli(_T(0.2, 0.9, dtype=dt)),
    D.Categorical: lambda dt: D.Categorical(_T(0.1, 0.2, 0.3, 0.4, dtype=dt)),
    D.OneHotCategorical: lambda dt: D.OneHotCategorical(_T(0.1, 0.2, 0.3, 0.4, dtype=dt)),
    D.Geometric: lambda dt: D.Geometric(_T(0.3, 0.8, dtype=dt)),
    D.Poisson: lambda dt: D.Poisson(_T(0.5, 7.0, dtype=dt)),
    D.Binomial: lambda dt: D.Binomial(_T(10.0, 3.0, dtype=dt), _T(0.3, 0.6, dtype=dt)),
    D.relaxed_bernoulli.LogitRelaxedBernoulli: lambda dt: D.relaxed_bernoulli.LogitRelaxedBernoulli(
        _T(0.5, dtype=dt), logits=_T(0.3, -1.0, dtype=dt)),
    D.relaxed_categorical.ExpRelaxedCategorical: lambda dt: D.relaxed_categorical.ExpRelaxedCategorical(
        _T(0.5, dtype=dt), logits=_T(0.3, -1.0, 0.5, dtype=dt)),
}
#: families with no generator-aware sampler: torch's own, on the global RNG forked and seeded
FALLBACK_CASES = {
    "gamma": lambda dt: D.Gamma(_T(0.6, 3.0, dtype=dt), _T(2.0, 0.5, dtype=dt)),
    "beta": lambda dt: D.Beta(_T(0.7, 2.0, dtype=dt), _T(2.5, 1.0, dtype=dt)),
    "dirichlet": lambda dt: D.Dirichlet(_T(0.5, 1.0, 4.0, dtype=dt)),
    "studentt": lambda dt: D.StudentT(_T(6.0, 9.0, dtype=dt), _T(0.3, -1.0, dtype=dt),
                                      _T(0.7, 2.0, dtype=dt)),
    "chi2": lambda dt: D.Chi2(_T(1.5, 4.0, dtype=dt)),
}


def statistics(dist):
    """(name, g, E[g(x)]) to z-test: mean and variance where torch states them, else a transform
    with a known law."""
    if isinstance(dist, D.Cauchy):  # no moments: F(x) = atan((x − loc)/scale)/π + 1/2 ~ U(0, 1)
        u = lambda x: torch.atan((x - dist.loc) / dist.scale) / math.pi + 0.5  # noqa: E731
        return [("cdf mean", u, torch.full_like(dist.loc, 0.5)),
                ("cdf variance", lambda x: (u(x) - 0.5) ** 2, torch.full_like(dist.loc, 1 / 12))]
    if isinstance(dist, D.Categorical):  # class frequencies
        k = dist.probs.shape[-1]
        return [("frequency", lambda x: torch.nn.functional.one_hot(x, k).to(dist.probs.dtype), dist.probs)]
    if isinstance(dist, D.relaxed_categorical.ExpRelaxedCategorical):  # Gumbel-max: argmax ~ probs
        k = dist.probs.shape[-1]
        return [("argmax frequency",
                 lambda x: torch.nn.functional.one_hot(x.argmax(-1), k).to(dist.probs.dtype), dist.probs)]
    if isinstance(dist, D.relaxed_bernoulli.LogitRelaxedBernoulli):  # (Logistic(0, 1) + logits) / T
        m = dist.logits / dist.temperature
        v = math.pi**2 / 3 / dist.temperature**2 * torch.ones_like(m)
        return [("mean", lambda x: x, m), ("variance", lambda x: (x - m) ** 2, v)]
    m, v = dist.mean, dist.variance
    out = [("mean", lambda x: x, m), ("variance", lambda x: (x - m) ** 2, v)]
    if isinstance(dist, D.MultivariateNormal):
        out.append(("covariance", lambda x: (x - m).unsqueeze(-1) * (x - m).unsqueeze(-2),
                    dist.covariance_matrix))
    return out


def moment_failures(dist, x) -> list[str]:
    """The statistics of ``x`` farther than Z_TOL standard errors from their values under ``dist``."""
    n = x.shape[0]
    bad = []
    for name, g, exact in statistics(dist):
        y = g(x).to(torch.float64)
        err = (y.mean(0) - exact).abs()
        if not bool((err <= Z_TOL * y.std(0) / math.sqrt(n) + 1e-12).all()):
            bad.append(f"{type(dist).__name__} {name}: {y.mean(0).tolist()} vs {exact.tolist()}")
    return bad


def check_moments(dist, seed: int, n: int = 20_000) -> None:
    before = torch.get_rng_state()
    x = rng.sample(dist, (n,), make_generator(seed), reparameterized=False)
    assert torch.equal(torch.get_rng_state(), before)
    assert torch.equal(x, rng.sample(dist, (n,), make_generator(seed), reparameterized=False))
    assert x.shape == (n, *dist.batch_shape, *dist.event_shape)
    bad = moment_failures(dist, x)
    assert not bad, bad


def test_every_family_sampler_has_a_case():
    assert set(rng.SAMPLERS) <= set(SAMPLER_CASES), f"add a case for {set(rng.SAMPLERS) - set(SAMPLER_CASES)}"


@pytest.mark.parametrize("family", list(rng.SAMPLERS), ids=[f.__name__ for f in rng.SAMPLERS])
def test_family_sampler_moments(family):
    make = SAMPLER_CASES[family]
    dist = make(torch.float64)
    assert rng.SAMPLERS.get(type(dist)) is rng.SAMPLERS[family] or isinstance(dist, family)
    check_moments(dist, seed=31)
    x32 = rng.sample(make(torch.float32), (5,), make_generator(0), reparameterized=False)
    assert x32.dtype in (torch.float32, torch.int64)  # integers only for Categorical's indices
    assert x32.dtype == torch.float32 or family is D.Categorical


def test_the_moment_check_catches_a_wrong_sampler():
    # a classic sampler bug, x = μ + Lᵀε instead of μ + Lε: same means and, here, wrong covariances
    dist = SAMPLER_CASES[D.MultivariateNormal](torch.float64)
    eps = torch.randn((20_000, 2), generator=make_generator(31), dtype=torch.float64)
    assert moment_failures(dist, dist.loc + eps @ dist.scale_tril)  # row-wise Lᵀε
    assert not moment_failures(dist, dist.loc + eps @ dist.scale_tril.mT)  # row-wise Lε


@pytest.mark.parametrize("name", list(FALLBACK_CASES))
def test_fallback_family_moments_from_the_generator(name):
    make = FALLBACK_CASES[name]
    dist = make(torch.float64)
    assert not any(isinstance(dist, f) for f in rng.SAMPLERS)  # really the fallback
    check_moments(dist, seed=32)
    assert rng.sample(make(torch.float32), (5,), make_generator(0), True).dtype == torch.float32
    with pytest.raises(GradestError, match="make_generator"):
        rng.sample(dist, (5,), 0, True)


# ── dtype ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("spec", applicable_specs(independent, PARAMS))
def test_outputs_in_the_parameters_dtype(spec, dtype):
    params = {k: v.to(dtype) for k, v in PARAMS.items()}
    cost = named_cost("cos", 1.3)
    for f in (cost, lambda x: cost.elementwise(x, cost.k).sum(-1)):
        est = per_sample(spec, f, independent, params, 40, seed=6)
        loss, grads = surrogate(spec, f, independent, params, 40, seed=6)
        got = {est.values.dtype, loss.dtype, *(g.dtype for g in est.grads.values()),
               *(s.dtype for s in est.stderr().values()), *(g.dtype for g in grads.values())}
        assert got == {dtype}, got


OTHER = [(name, s) for name, s in PAIRS if name != "normal"]


@pytest.mark.parametrize("name,spec", OTHER)
def test_other_families_keep_float32(name, spec):
    builder, params, f = FAMILIES[name]
    params = {k: v.to(torch.float32) for k, v in params.items()}
    est = per_sample(spec, f, builder, params, 40, seed=6)
    assert {g.dtype for g in est.grads.values()} == {torch.float32}
    if name != "categorical":  # its cost is the caller's, in float64 on purpose
        assert est.values.dtype == torch.float32


def test_mixed_dtypes_are_refused():
    with pytest.raises(GradestError, match="dtypes"):
        per_sample("pathwise", _cos, independent,
                   {"loc": PARAMS["loc"].float(), "scale": PARAMS["scale"]}, 20, seed=0)


# ── CUDA ────────────────────────────────────────────────────────────────────────────────────



def _on_cuda(params):
    return {k: v.cuda() for k, v in params.items()}


#: the specs that apply to the batched Normal the CUDA checks use (discrete estimators refuse it)
NORMAL_SPECS = applicable_specs(independent, PARAMS)


def _collect(check, specs) -> None:
    """Run ``check(spec)`` for every spec and report all failures at once."""
    failures = []
    for spec in specs:
        try:
            check(spec)
        except (AssertionError, GradestError, RuntimeError) as err:
            failures.append(f"{spec}: {type(err).__name__}: {err}")
    assert not failures, "\n".join(failures)


@cuda
def test_per_sample_on_cuda():
    params = _on_cuda(PARAMS)

    def check(spec):
        first = get_estimator(spec).per_sample(_cos, independent, params, 100, make_generator(3, "cuda"))
        assert first.values.device.type == "cuda"
        assert all(g.device.type == "cuda" for g in first.grads.values())
        again = get_estimator(spec).per_sample(_cos, independent, params, 100, make_generator(3, "cuda"))
        assert torch.equal(first.values, again.values)
        for k in params:
            assert torch.equal(first.grads[k], again.grads[k])
        leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
        loss = get_estimator(spec).surrogate(_cos, independent, leaves, 100, make_generator(3, "cuda"))
        loss.backward()
        assert loss.device.type == "cuda"
        assert_views_agree(first, loss.detach(), {k: v.grad for k, v in leaves.items()})

    _collect(check, NORMAL_SPECS)


@cuda
def test_a_cpu_generator_drives_cuda_parameters():
    params = _on_cuda(PARAMS)

    def check(spec):
        a = get_estimator(spec).per_sample(_cos, independent, params, 100, make_generator(3))
        b = get_estimator(spec).per_sample(_cos, independent, params, 100, make_generator(3))
        assert a.values.device.type == "cuda" and torch.equal(a.values, b.values)
        # the numbers are drawn on the CPU generator and copied: the CPU computation up to rounding
        cpu = get_estimator(spec).per_sample(_cos, independent, PARAMS, 100, make_generator(3))
        assert torch.allclose(a.values.cpu(), cpu.values, rtol=1e-9, atol=1e-12)
        for k in params:
            assert torch.equal(a.grads[k], b.grads[k])
            scale = float(cpu.grads[k].abs().max())
            assert torch.allclose(a.grads[k].cpu(), cpu.grads[k], rtol=1e-6, atol=1e-9 * scale), k

    _collect(check, NORMAL_SPECS)


def _check_stderr_on_cuda(spec):
    est = get_estimator(spec).per_sample(_cos, independent, _on_cuda(PARAMS), 100, make_generator(3, "cuda"))
    for s in est.stderr().values():
        assert s.device.type == "cuda" and bool(torch.isfinite(s).all())


@cuda
def test_stderr_on_cuda():
    _collect(_check_stderr_on_cuda, [s for s in NORMAL_SPECS if "+" not in s])


@cuda
def test_stderr_of_grouped_samples_on_cuda():
    _collect(_check_stderr_on_cuda, [s for s in NORMAL_SPECS if "+" in s])


@cuda
def test_fallback_families_on_cuda_leave_both_global_rngs():
    for name in ("gamma", "beta", "dirichlet"):
        builder, params, f = FAMILIES[name]
        params = _on_cuda(params)
        cpu_before, cuda_before = torch.get_rng_state(), torch.cuda.get_rng_state()
        a = get_estimator("pathwise").per_sample(f, builder, params, 100, make_generator(3, "cuda"))
        b = get_estimator("pathwise").per_sample(f, builder, params, 100, make_generator(3, "cuda"))
        assert torch.equal(torch.get_rng_state(), cpu_before), name
        assert torch.equal(torch.cuda.get_rng_state(), cuda_before), name
        assert a.values.device.type == "cuda" and torch.equal(a.values, b.values), name
