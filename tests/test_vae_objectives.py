"""Every VAE estimator is unbiased for the gradient of its bound, in every parameter.

Tiny model: 1-D latent, 4 binary pixels, linear encoder x -> (μ, log σ²) and linear decoder z ->
logits, float64. The target gradient is computed by Gauss–Hermite quadrature over ε (z = μ + σ ε):
the ELBO is a 1-D integral per image, IWAE_K a K-D one (tensor grid), both smooth, so 40 nodes per
axis give ~1e-10 accuracy, far below the Monte Carlo standard error. Estimates: R batches, each of
M copies of the 3 images (independent noise per copy); the R batch gradients are i.i.d. (nearly,
for the moving-average baseline, whose value does not depend on the current batch), and each
coordinate's mean must lie within 5 standard errors of the target (false alarm ≈ 6e-7 per
coordinate). A negative control shows the test can fail: the IWAE gradient is rejected as an
estimate of the ELBO gradient.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gradest.estimators.baselines import MovingAverage
from gradest.rng import make_generator
from gradest.vae.model import VAE, bernoulli_log_prob, gaussian_kl, normal_log_prob
from gradest.vae.objectives import OBJECTIVES, Estimate

X = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]], dtype=torch.float64)
NODES = 40
R, M = 200, 100
Z_MAX = 5.0


def tiny_model() -> VAE:
    model = VAE.mlp(4, (), 1, make_generator(3)).double()
    with torch.no_grad():  # a posterior away from the prior, so no gradient is trivially zero
        model.decoder.net[0].weight.mul_(4.0)
    return model


def exact_bound(model: VAE, kind: str, k: int) -> torch.Tensor:
    """Mean over X of ELBO or IWAE_K by Gauss–Hermite quadrature (probabilists' nodes), differentiable."""
    t, w = np.polynomial.hermite_e.hermegauss(NODES)
    t = torch.tensor(t, dtype=torch.float64)
    w = torch.tensor(w / w.sum(), dtype=torch.float64)
    dims = 1 if kind == "elbo" else k
    grid = torch.cartesian_prod(*[t] * dims).reshape(-1, dims)  # [G, K]
    weight = torch.cartesian_prod(*[w] * dims).reshape(-1, dims).prod(-1)  # [G]
    loc, scale = model.encode(X)  # [B, 1]
    z = loc + scale * grid.T.unsqueeze(-1).unsqueeze(-1)  # [K, G, B, 1]
    log_w = model.log_weights(X, z, loc, scale)  # [K, G, B]
    inner = log_w.mean(0) if kind == "elbo" else torch.logsumexp(log_w, 0) - math.log(k)
    return (weight.unsqueeze(-1) * inner).sum(0).mean()


def flat_grad(model: VAE, scalar: torch.Tensor) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(scalar, list(model.parameters()))])


def mc_gradients(model: VAE, name: str, k: int) -> torch.Tensor:
    """R batch estimates of ∇ bound, [R, P] (the loss is −bound)."""
    gen = make_generator(11)
    baseline = MovingAverage(0.9) if OBJECTIVES[name].uses_baseline else None
    x = X.repeat(M, 1)
    return torch.stack(
        [-flat_grad(model, OBJECTIVES[name].fn(model, x, k, gen, baseline).loss) for _ in range(R)]
    )


def z_scores(estimates: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    stderr = estimates.std(0, correction=1) / math.sqrt(estimates.shape[0])
    return (estimates.mean(0) - target) / stderr


CASES = [
    ("pathwise", 1),
    ("stl", 1),
    ("score", 1),
    ("score-loo", 3),
    ("iwae", 3),
    ("iwae-dreg", 3),
    ("vimco", 3),
    ("pathwise", 2),
    ("iwae", 1),
]


@pytest.mark.parametrize(("name", "k"), CASES)
def test_estimator_is_unbiased_for_its_bound(name: str, k: int) -> None:
    model = tiny_model()
    target = flat_grad(model, exact_bound(model, OBJECTIVES[name].bound, k))
    z = z_scores(mc_gradients(model, name, k), target)
    assert z.abs().max() < Z_MAX, f"{name}: z-scores {z.tolist()} (target {target.tolist()})"


def test_covers_every_estimator() -> None:
    assert {name for name, _ in CASES} == set(OBJECTIVES)


def test_quadrature_matches_monte_carlo_value() -> None:
    """The quadrature bound itself agrees with a plain Monte Carlo average (5 standard errors)."""
    model = tiny_model()
    gen = make_generator(5)
    with torch.no_grad():
        exact = float(exact_bound(model, "iwae", 3))
        est = OBJECTIVES["iwae"].fn(model, X.repeat(20_000, 1), 3, gen, None).bound
    assert abs(float(est.mean()) - exact) < Z_MAX * float(est.std()) / math.sqrt(est.numel())


def test_negative_control_iwae_is_biased_for_the_elbo() -> None:
    """The test has power: the IWAE_3 gradient is not the ELBO's."""
    model = tiny_model()
    target = flat_grad(model, exact_bound(model, "elbo", 1))
    z = z_scores(mc_gradients(model, "iwae", 3), target)
    assert z.abs().max() > Z_MAX


def test_dreg_and_stl_have_lower_encoder_variance_than_score() -> None:
    """Same bound, different estimator: the reparameterized ones vary far less (a sanity ordering)."""
    model = tiny_model()
    enc = sum(p.numel() for p in model.encoder.parameters())
    var = {
        name: mc_gradients(model, name, k)[:, :enc].var(0).sum()
        for name, k in [("stl", 1), ("score", 1), ("iwae-dreg", 3), ("vimco", 3)]
    }
    assert var["stl"] < var["score"]
    assert var["iwae-dreg"] < var["vimco"]


# ── the core estimators against the hand-written formulas they replaced ─────────────────────
# The objectives before they called gradest.estimators, verbatim but for taking (μ, σ): on the same
# generator state they must give the same loss, ELBO, bound and gradients (up to float rounding).


def _old_noise(x, k, latent, generator):
    return torch.randn(k, x.shape[0], latent, generator=generator, device=x.device, dtype=x.dtype)


def _old_iwae(log_w):
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def old_pathwise(model, x, k, generator, baseline=None):
    loc, scale = model.encode(x)
    z = loc + scale * _old_noise(x, k, model.latent, generator)
    elbo = bernoulli_log_prob(x, model.decoder(z)).mean(0) - gaussian_kl(loc, scale)
    value = elbo.detach()
    return Estimate(-elbo.mean(), value, value)


def old_stl(model, x, k, generator, baseline=None):
    loc, scale = model.encode(x)
    z = loc + scale * _old_noise(x, k, model.latent, generator)
    log_w = model.log_joint(x, z) - normal_log_prob(z, loc.detach(), scale.detach())
    elbo = log_w.detach().mean(0)
    return Estimate(-log_w.mean(0).mean(), elbo, elbo)


def _old_reinforce(model, x, k, generator, baseline_fn):
    loc, scale = model.encode(x)
    z = (loc + scale * _old_noise(x, k, model.latent, generator)).detach()
    log_lik = bernoulli_log_prob(x, model.decoder(z))
    log_q = normal_log_prob(z, loc, scale)
    kl = gaussian_kl(loc, scale)
    signal = log_lik.detach()
    surrogate = (log_lik + (signal - baseline_fn(signal)) * log_q).mean(0) - kl
    elbo = signal.mean(0) - kl.detach()
    return Estimate(-surrogate.mean(), elbo, elbo)


def old_score(model, x, k, generator, baseline=None):
    def moving_average(signal):
        return baseline(signal.reshape(-1)).reshape(signal.shape) if baseline is not None else 0.0

    return _old_reinforce(model, x, k, generator, moving_average)


def old_score_loo(model, x, k, generator, baseline=None):
    return _old_reinforce(model, x, k, generator, lambda s: (s.sum(0, keepdim=True) - s) / (k - 1))


def old_iwae(model, x, k, generator, baseline=None):
    loc, scale = model.encode(x)
    z = loc + scale * _old_noise(x, k, model.latent, generator)
    log_w = model.log_weights(x, z, loc, scale)
    bound = _old_iwae(log_w)
    return Estimate(-bound.mean(), log_w.detach().mean(0), bound.detach())


def old_iwae_dreg(model, x, k, generator, baseline=None):
    loc, scale = model.encode(x)
    z = loc + scale * _old_noise(x, k, model.latent, generator)
    log_w = model.log_joint(x, z) - normal_log_prob(z, loc.detach(), scale.detach())
    weights = torch.softmax(log_w.detach(), 0)
    z.register_hook(lambda grad: grad * weights.unsqueeze(-1))
    surrogate = (weights * log_w).sum(0)
    return Estimate(-surrogate.mean(), log_w.detach().mean(0), _old_iwae(log_w.detach()))


def old_vimco(model, x, k, generator, baseline=None):
    loc, scale = model.encode(x)
    z = (loc + scale * _old_noise(x, k, model.latent, generator)).detach()
    log_q = normal_log_prob(z, loc, scale)
    log_w = model.log_joint(x, z) - log_q
    lw = log_w.detach()
    bound = _old_iwae(lw)
    others = (lw.sum(0, keepdim=True) - lw) / (k - 1)
    eye = torch.eye(k, dtype=torch.bool, device=lw.device).unsqueeze(-1)
    loo = _old_iwae(torch.where(eye, others.unsqueeze(1), lw.unsqueeze(0)).transpose(0, 1))
    surrogate = ((bound - loo) * log_q).sum(0) + _old_iwae(log_w)
    return Estimate(-surrogate.mean(), lw.mean(0), bound)


OLD = {
    "pathwise": old_pathwise,
    "stl": old_stl,
    "score": old_score,
    "score-loo": old_score_loo,
    "iwae": old_iwae,
    "iwae-dreg": old_iwae_dreg,
    "vimco": old_vimco,
}


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-11, atol=1e-11 * (1.0 + float(b.abs().max())))


@pytest.mark.parametrize("name", list(OLD))
def test_objective_equals_the_hand_written_formula_on_the_same_generator(name: str) -> None:
    """Loss, ELBO, bound and every parameter's gradient agree, step after step (baseline state too)."""
    model = VAE.mlp(12, (7,), 3, make_generator(4)).double()
    x = torch.rand(5, 12, generator=make_generator(5), dtype=torch.float64)
    k = 4
    objective = OBJECTIVES[name]
    ours, theirs = make_generator(6), make_generator(6)
    b_ours = MovingAverage(0.9) if objective.uses_baseline else None
    b_theirs = MovingAverage(0.9) if objective.uses_baseline else None
    params = list(model.parameters())
    for _ in range(3):  # the moving average is 0 on the first step only
        new = objective.fn(model, x, k, ours, b_ours)
        old = OLD[name](model, x, k, theirs, b_theirs)
        assert _close(new.elbo, old.elbo) and _close(new.bound, old.bound), name
        if name in ("score", "score-loo"):
            # The core's surrogate is valued at the estimate itself (the old one was not): −ELBO.
            assert _close(new.loss.detach(), -new.elbo.mean()), name
        else:
            assert _close(new.loss.detach(), old.loss.detach()), name
        grads = zip(torch.autograd.grad(new.loss, params), torch.autograd.grad(old.loss, params), strict=True)
        assert all(_close(a, b) for a, b in grads), name
    assert torch.equal(ours.get_state(), theirs.get_state())  # the same numbers were drawn
    assert b_ours == b_theirs


def test_noise_comes_straight_from_the_generator() -> None:
    """z = μ + σ ε with ε = torch.randn(K, B, L, generator=g): the numbers the evaluation also draws."""
    model = VAE.mlp(12, (7,), 3, make_generator(4)).double()
    x = torch.rand(5, 12, generator=make_generator(5), dtype=torch.float64)
    seen = []
    real = model.decoder.forward
    model.decoder.forward = lambda z: seen.append(z.detach()) or real(z)
    OBJECTIVES["score"].fn(model, x, 4, make_generator(8), None)
    loc, scale = model.encode(x)
    eps = torch.randn(4, 5, 3, generator=make_generator(8), dtype=torch.float64)
    assert torch.equal(seen[0], (loc + scale * eps).detach())
