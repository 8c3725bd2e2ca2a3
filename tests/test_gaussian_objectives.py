"""The CRPS and ELBO pieces against independent computations (Monte Carlo at 5 standard errors, grids)."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special

from conftest import Z_TOL
from gradest.gaussian import crps, elbo
from gradest.gaussian.data import Dataset, default_dataset
from gradest.rng import make_generator, sample

DATA = default_dataset()
X = DATA.values.numpy()


def test_crps_closed_form_matches_its_definition_by_quadrature():
    mu, sigma, x = 1.3, 0.7, 2.1
    pdf = lambda y: math.exp(-0.5 * ((y - mu) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    e_abs = (integrate.quad(lambda y: (x - y) * pdf(y), -np.inf, x)[0]
             + integrate.quad(lambda y: (y - x) * pdf(y), x, np.inf)[0])
    # E|y − y'| = 2σ/√π for independent draws of N(μ, σ²)
    assert crps.crps_normal(np.array([x]), mu, sigma) == pytest.approx(e_abs - sigma / math.sqrt(math.pi))


def test_crps_cost_is_an_unbiased_estimate_of_the_closed_form():
    mu, sigma, n = 4.0, 2.5, 40_000
    params = {"loc": torch.tensor(mu), "scale": torch.tensor(sigma)}
    pairs = sample(crps.pair_builder(**params), (n,), make_generator(0), reparameterized=False)
    assert pairs.shape == (n, 2)
    values = crps.crps_cost(DATA.values)(pairs)
    stderr = float(values.std()) / math.sqrt(n)
    assert abs(float(values.mean()) - crps.crps_normal(X, mu, sigma)) <= Z_TOL * stderr


def test_crps_gradient_matches_finite_differences():
    mu, sigma, h = 4.0, 1.2, 1e-6
    g = crps.crps_normal_grad(X, mu, sigma)
    dmu = (crps.crps_normal(X, mu + h, sigma) - crps.crps_normal(X, mu - h, sigma)) / (2 * h)
    assert g.mu == pytest.approx(dmu, rel=1e-6)
    assert g.sigma == pytest.approx(
        (crps.crps_normal(X, mu, sigma + h) - crps.crps_normal(X, mu, sigma - h)) / (2 * h), rel=1e-6)


def test_crps_minimiser_is_stationary_and_a_minimum():
    best = crps.crps_minimiser(X)
    g = crps.crps_normal_grad(X, *best)
    assert abs(g.mu) < 1e-8 and abs(g.sigma) < 1e-8
    value = crps.crps_normal(X, *best)
    for dm, ds in ((0.01, 0), (-0.01, 0), (0, 0.01), (0, -0.01)):
        assert crps.crps_normal(X, best.mu + dm, best.sigma + ds) > value
    assert best.sigma > 0.5 * DATA.sd  # the spread is recovered, unlike with the squared loss


def test_neg_elbo_closed_form_matches_monte_carlo():
    prior = elbo.weak_prior(DATA)
    q = np.array([5.0, 0.5, math.log(0.3), math.log(0.1)])
    loc, log_scale = torch.tensor(q[:2]), torch.tensor(q[2:])
    n = 50_000
    z = sample(elbo.q_builder(loc, log_scale), (n,), make_generator(1), reparameterized=False)
    values = elbo.neg_log_joint(DATA, prior)(z) - elbo.entropy(log_scale)
    stderr = float(values.std()) / math.sqrt(n)
    assert abs(float(values.mean()) - elbo.neg_elbo_closed_form(DATA, prior, q)) <= Z_TOL * stderr


def test_entropy_matches_torch():
    log_scale = torch.tensor([0.3, -1.2])
    q = elbo.q_builder(torch.zeros(2), log_scale)
    assert float(elbo.entropy(log_scale)) == pytest.approx(float(q.entropy()))


def test_exact_posterior_matches_a_brute_force_2d_grid():
    prior = elbo.weak_prior(DATA)
    post = elbo.exact_posterior(DATA, prior)
    m = np.linspace(post.mean_m - 10 * post.sd_m, post.mean_m + 10 * post.sd_m, 801)
    ell = np.linspace(post.mean_log_s - 10 * post.sd_log_s, post.mean_log_s + 10 * post.sd_log_s, 801)
    mm, ll = np.meshgrid(m, ell, indexing="ij")
    sq = DATA.n * (DATA.var_mle + (DATA.mean - mm) ** 2)
    log_p = (-DATA.n * ll - 0.5 * sq * np.exp(-2 * ll) - 0.5 * (mm / prior.m_sd) ** 2
             - 0.5 * ((ll - prior.log_s_mean) / prior.log_s_sd) ** 2)
    w = np.exp(log_p - special.logsumexp(log_p))
    assert float((w * mm).sum()) == pytest.approx(post.mean_m, abs=1e-6 * DATA.sd)
    assert float((w * ll).sum()) == pytest.approx(post.mean_log_s, abs=1e-6)
    assert math.sqrt(float((w * (ll - post.mean_log_s) ** 2).sum())) == pytest.approx(post.sd_log_s, rel=1e-4)


def test_best_gaussian_q_is_close_to_the_exact_posterior():
    prior = elbo.weak_prior(DATA)
    post = elbo.exact_posterior(DATA, prior)
    q = elbo.best_gaussian_q(DATA, prior)
    # n = 100: the mean-field Gaussian optimum sits within a few percent of a posterior sd
    assert abs(q[0] - post.mean_m) < 0.05 * post.sd_m
    assert abs(q[1] - post.mean_log_s) < 0.05 * post.sd_log_s
    assert math.exp(q[2]) == pytest.approx(post.sd_m, rel=0.05)
    assert math.exp(q[3]) == pytest.approx(post.sd_log_s, rel=0.05)


def test_fast_data_sums_equal_the_literal_sums_and_their_gradients():
    # Σ_i (y − x_i)² and (1/n) Σ_i |y − x_i| without an [N, n] table: same values, same y-gradients,
    # including ties (y equal to a data point) and y outside the data's range
    x = torch.tensor([3.0, -1.0, 2.5, 2.5, 7.0, 0.0], dtype=torch.float64) + 1e6
    data = Dataset(x, "test", "x")
    y = (torch.tensor([-5.0, -1.0, 0.3, 2.5, 4.0, 12.0], dtype=torch.float64) + 1e6).requires_grad_()
    for fast, literal in [
        (data.sum_squares, lambda y: ((y.unsqueeze(-1) - x) ** 2).sum(-1)),
        (crps.mean_abs_deviation(x), lambda y: (y.unsqueeze(-1) - x).abs().mean(-1)),
    ]:
        a, b = fast(y), literal(y)
        # both lose ≈ eps · 1e6 ≈ 2e-10 of y − x_i to the offset: agreement to 1e-8 relative
        assert torch.allclose(a, b, rtol=1e-8, atol=0)
        ga, = torch.autograd.grad(a.sum(), y)
        gb, = torch.autograd.grad(b.sum(), y)
        off_ties = (y.detach().unsqueeze(-1) != x).all(-1)  # |·| has a kink at a tie
        assert torch.allclose(ga[off_ties], gb[off_ties], rtol=1e-8, atol=0)


def _offset(data, shift):
    from gradest.gaussian.data import validate

    return validate(data.values * 1e-3 + shift)


@pytest.mark.parametrize("shift", [0.0, 1e9])
def test_targets_keep_the_data_units_far_from_zero(shift):
    # data 1e9 + 1e-3·x: every target is the same affine image of the unit-scale one (the priors are
    # in the data's own units), up to the rounding of the stored values (a few ulp of 1e9 = 1.2e-7,
    # 6e-5 of the spread) and not lost to rounding in the computation (old code: 1–10% of the spread)
    from gradest.gaussian import crps as crps_mod

    base, moved = _offset(DATA, 0.0), _offset(DATA, shift)
    sd = moved.sd
    tol = 4 * float(np.spacing(moved.mean)) + 1e-6 * sd
    a, b = crps_mod.crps_minimiser(base.values.numpy()), crps_mod.crps_minimiser(moved.values.numpy())
    assert abs((b.mu - moved.mean) - (a.mu - base.mean)) <= tol
    assert abs(b.sigma - a.sigma) <= tol
    pa = elbo.exact_posterior(base, elbo.weak_prior(base)).target()
    pb = elbo.exact_posterior(moved, elbo.weak_prior(moved)).target()
    assert abs(pb.mu - moved.mean) <= 1e-3 * sd  # the prior on m is 10 r wide: no visible pull
    assert abs(pb.sigma - pa.sigma) <= tol
    qb = elbo.best_gaussian_q(moved, elbo.weak_prior(moved))
    assert abs(qb[0] - pb.mu) <= 1e-3 * sd and abs(math.exp(qb[1]) - pb.sigma) <= 1e-3 * sd


def test_nll_through_sufficient_statistics_is_the_literal_likelihood():
    from gradest.gaussian.objectives import nll

    obj = nll(DATA)
    params = {"loc": torch.tensor(4.1, dtype=torch.float64, requires_grad=True),
              "scale": torch.tensor(1.3, dtype=torch.float64, requires_grad=True)}
    fast = obj.loss(params, None, 0, None)
    literal = -torch.distributions.Normal(params["loc"], params["scale"]).log_prob(DATA.values).mean()
    assert float(fast.detach()) == pytest.approx(float(literal.detach()), rel=1e-12)
    g_fast = torch.autograd.grad(fast, list(params.values()))
    g_lit = torch.autograd.grad(literal, list(params.values()))
    for a, b in zip(g_fast, g_lit, strict=True):
        assert float(a) == pytest.approx(float(b), rel=1e-10)
