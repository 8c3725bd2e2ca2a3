"""gradest.pyro: every applicable estimator unbiased against an exact gradient (enumeration of the
discrete sites, closed forms for the rest) within Z_TOL standard errors over repeated calls, equal to
Trace_ELBO's in expectation on conjugate models whose SVI runs reach the analytic posterior, the
estimator state checkpointed, the monitor's per-site groups, and the refusals of bad use."""

from __future__ import annotations

import importlib
import itertools
import math
import sys
from pathlib import Path

import pytest
import torch

pyro = pytest.importorskip("pyro")

import pyro.distributions as dist  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402
from pyro.optim import Adam  # noqa: E402
from tests.conftest import Z_TOL  # noqa: E402

import gradest.pyro as gp  # noqa: E402
from gradest.errors import GradestError  # noqa: E402
from gradest.monitor import GradientMonitor  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src" / "gradest"


def t(*v):
    return torch.tensor(v[0] if len(v) == 1 else list(v), dtype=torch.float64)


@pytest.fixture(autouse=True)
def _fresh_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


def repeated(elbo, model, guide, calls, *args):
    """``calls`` gradients of the ELBO's surrogate w.r.t. the unconstrained parameters: mean, stderr."""
    guide(*args)  # creates the parameters
    params = dict(pyro.get_param_store()._params)
    rows = {k: [] for k in params}
    for _ in range(calls):
        loss = elbo.differentiable_loss(model, guide, *args)
        for k, g in zip(
            params,
            torch.autograd.grad(loss, list(params.values()), allow_unused=True, materialize_grads=True),
            strict=True,
        ):
            rows[k].append(g)
    stacked = {k: torch.stack(v) for k, v in rows.items()}
    return {k: v.mean(0) for k, v in stacked.items()}, {
        k: v.std(0) / math.sqrt(calls) for k, v in stacked.items()
    }


def assert_unbiased(mean, stderr, exact):
    for k, g in exact.items():
        z = (mean[k] - g).abs() / (stderr[k] + 1e-12 * (1 + g.abs()))
        assert float(z.max()) < Z_TOL, f"{k}: mean {mean[k]}, exact {g}, stderr {stderr[k]}"


# ── a model with continuous and discrete sites, exact by enumeration + closed form ───────────────

X = t(1.2, -0.3, 0.8)
INIT = {"m": t(0.2), "s": t(0.7), "a": t(0.3), "l": t(0.1, -0.5, 0.4), "w": t(0.8)}


def mixed_model():
    z = pyro.sample("z", dist.Normal(t(0.0), 1.0))
    c = pyro.sample("c", dist.Bernoulli(t(0.4)))
    with pyro.plate("d", 3):
        b = pyro.sample("b", dist.Bernoulli(torch.full((3,), 0.3, dtype=torch.float64)))
        pyro.sample("x", dist.Normal(z + b + 0.5 * c, 1.0), obs=X)


def mixed_guide(dependent=True):
    m = pyro.param("m", INIT["m"].clone())
    s = pyro.param("s", INIT["s"].clone(), constraint=dist.constraints.positive)
    a = pyro.param("a", INIT["a"].clone())
    l = pyro.param("l", INIT["l"].clone())
    w = pyro.param("w", INIT["w"].clone())
    pyro.sample("z", dist.Normal(m, s))
    c = pyro.sample("c", dist.Bernoulli(logits=a))
    with pyro.plate("d", 3):
        pyro.sample("b", dist.Bernoulli(logits=l + w * c if dependent else l))


def mixed_exact(dependent=True):
    """−ELBO's gradient in the unconstrained parameters: Σ over (c, b), closed form over z."""
    u = {k: (v.log() if k == "s" else v).clone().requires_grad_(True) for k, v in INIT.items()}
    m, s, a, l, w = u["m"], u["s"].exp(), u["a"], u["l"], u["w"]
    log2pi = math.log(2 * math.pi)
    elbo = 0.0
    for cv in (0.0, 1.0):
        qc = torch.sigmoid(a) if cv else torch.sigmoid(-a)
        pl = torch.sigmoid(l + w * cv if dependent else l)
        for bits in itertools.product((0.0, 1.0), repeat=3):
            b = t(*bits)
            qb = (pl**b * (1 - pl) ** (1 - b)).prod()
            logp = (b * math.log(0.3) + (1 - b) * math.log(0.7)).sum() + math.log(0.4 if cv else 0.6)
            r = X - b - 0.5 * cv
            lik = (-0.5 * ((r - m) ** 2 + s**2) - 0.5 * log2pi).sum()
            prior = -0.5 * (m**2 + s**2) - 0.5 * log2pi
            entropy = 0.5 * torch.log(2 * math.pi * math.e * s**2)
            elbo = elbo + qc * qb * (logp + lik + prior + entropy - torch.log(qc) - torch.log(qb))
    grads = torch.autograd.grad(-elbo, list(u.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(u, grads, strict=True))


@pytest.mark.parametrize(
    "b_est, c_est",
    [
        ("score", "score"),
        ("score-loo", "score-loo"),
        ("score-const=6", "score-ema=0.9"),
        ("arm", "score-loo"),
        ("disarm", "score-loo"),
        ("rebar", "score-loo"),
        ("relax", "score-loo"),
        ("enumerate", "score-loo"),
    ],
)
def test_mixed_model_unbiased(b_est, c_est):
    elbo = gp.ELBO(num_particles=8, max_plate_nesting=1, estimators={"b": b_est, "c": c_est}, seed=3)
    mean, stderr = repeated(elbo, mixed_model, mixed_guide, 40)
    assert_unbiased(mean, stderr, mixed_exact())


@pytest.mark.parametrize("c_est", ["disarm", "relax", "enumerate"])
def test_callable_site_upstream_unbiased(c_est):
    # c re-evaluated by its estimator; b (independent of c in the guide) by DisARM
    elbo = gp.ELBO(num_particles=8, max_plate_nesting=1, estimators={"b": "disarm", "c": c_est}, seed=4)
    mean, stderr = repeated(elbo, mixed_model, lambda: mixed_guide(False), 40)
    assert_unbiased(mean, stderr, mixed_exact(False))


def test_score_on_a_continuous_site_unbiased():
    elbo = gp.ELBO(num_particles=8, max_plate_nesting=1, estimators={"z": "score-loo", "b": "disarm"}, seed=5)
    mean, stderr = repeated(elbo, mixed_model, mixed_guide, 60)
    assert_unbiased(mean, stderr, mixed_exact())


# ── a Categorical site ────────────────────────────────────────────────────────────────────────

MU, Y = t(-1.0, 0.5, 2.0), t(0.7, 1.1)
V0 = t(0.2, -0.4, 0.1)


def cat_model():
    k = pyro.sample("k", dist.Categorical(t(0.2, 0.5, 0.3)))
    with pyro.plate("n", 2):
        pyro.sample("y", dist.Normal(MU[k], 1.0), obs=Y)


def cat_guide():
    pyro.sample("k", dist.Categorical(logits=pyro.param("v", V0.clone())))


def cat_exact():
    v = V0.clone().requires_grad_(True)
    q = v.softmax(-1)
    logp = t(0.2, 0.5, 0.3).log() + dist.Normal(MU.unsqueeze(-1), 1.0).log_prob(Y).sum(-1)
    (g,) = torch.autograd.grad((q * (q.log() - logp)).sum(), v)
    return {"v": g}


@pytest.mark.parametrize("est", ["score-loo", "unordered-set=2", "enumerate"])
def test_categorical_site_unbiased(est):
    elbo = gp.ELBO(num_particles=6, max_plate_nesting=1, estimators={"k": est}, seed=6)
    mean, stderr = repeated(elbo, cat_model, cat_guide, 40)
    assert_unbiased(mean, stderr, cat_exact())


def test_enumerate_is_exact():
    elbo = gp.ELBO(num_particles=2, max_plate_nesting=1, estimators={"k": "enumerate"}, seed=0)
    mean, _ = repeated(elbo, cat_model, cat_guide, 3)
    assert torch.allclose(mean["v"], cat_exact()["v"], atol=1e-12)


# ── a subsampled plate: the re-evaluations see the same minibatch ─────────────────────────────

XS = t(1.0, -0.4, 0.7, 1.5, 0.1, -1.0)


def sub_model(size):
    z = pyro.sample("z", dist.Normal(t(0.0), 1.0))
    with pyro.plate("data", 6, subsample_size=size) as idx:
        b = pyro.sample("b", dist.Bernoulli(t(0.3)))
        pyro.sample("x", dist.Normal(z + b, 1.0), obs=XS[idx])


def sub_guide(size):
    pyro.sample("z", dist.Normal(pyro.param("m", t(0.2)), 1.0))
    with pyro.plate("data", 6, subsample_size=size) as idx:
        pyro.sample("b", dist.Bernoulli(logits=pyro.param("l", torch.linspace(-1, 1, 6))[idx]))


@pytest.mark.parametrize("est", ["disarm", "enumerate"])
def test_subsampled_plate_unbiased(est):
    # minibatches of 3 of 6 data (scale 2) against all 6 data, both by the same estimator
    pyro.set_rng_seed(0)  # the plate's indices come from Pyro's global RNG
    full = gp.ELBO(num_particles=8, max_plate_nesting=1, estimators={"b": est}, seed=1)
    mean_f, se_f = repeated(full, sub_model, sub_guide, 60, 6)
    pyro.clear_param_store()
    half = gp.ELBO(num_particles=8, max_plate_nesting=1, estimators={"b": est}, seed=2)
    mean_h, se_h = repeated(half, sub_model, sub_guide, 60, 3)
    for k in mean_f:
        z = (mean_f[k] - mean_h[k]).abs() / (se_f[k] ** 2 + se_h[k] ** 2).sqrt()
        assert float(z.max()) < Z_TOL, (k, mean_f[k], mean_h[k])


# ── conjugate models: exact −ELBO gradients, Trace_ELBO, SVI to the analytic posterior ─────────

DATA = {
    "normal": t(0.9, 1.7, 0.4, 1.1),
    "beta": t(1.0, 0.0, 1.0, 1.0, 1.0, 0.0),
    "poisson": t(2.0, 4.0, 3.0, 1.0),
    "exponential": t(0.5, 1.3, 0.2, 0.8),
}
PRIOR = {"normal": (0.0, 1.0), "beta": (2.0, 2.0), "poisson": (2.0, 1.0), "exponential": (2.0, 1.0)}
INIT_U = {
    "normal": (t(0.3), t(0.8).log()),
    "beta": (t(2.0).log(), t(3.0).log()),
    "poisson": (t(3.0).log(), t(1.5).log()),
    "exponential": (t(3.0).log(), t(2.0).log()),
}
SIGMA = 0.8


def conjugate(kind):
    data = DATA[kind]
    a0, b0 = PRIOR[kind]
    prior = (
        dist.Normal(t(a0), b0)
        if kind == "normal"
        else dist.Beta(t(a0), t(b0))
        if kind == "beta"
        else dist.Gamma(t(a0), t(b0))
    )

    def likelihood(z):
        return {
            "normal": lambda: dist.Normal(z, SIGMA),
            "beta": lambda: dist.Bernoulli(probs=z),
            "poisson": lambda: dist.Poisson(z),
            "exponential": lambda: dist.Exponential(z),
        }[kind]()

    def model():
        z = pyro.sample("z", prior)
        with pyro.plate("data", len(data)):
            pyro.sample("x", likelihood(z), obs=data)  # z: [K, 1], against the data plate

    def family(p, q):
        return (
            dist.Normal(p, q) if kind == "normal" else dist.Beta(p, q) if kind == "beta" else dist.Gamma(p, q)
        )

    def guide():
        u1, u2 = INIT_U[kind]
        p = pyro.param(
            "p",
            u1.clone() if kind == "normal" else u1.exp(),
            constraint=dist.constraints.real if kind == "normal" else dist.constraints.positive,
        )
        q = pyro.param("q", u2.exp(), constraint=dist.constraints.positive)
        pyro.sample("z", family(p, q))

    def exact():
        u1, u2 = (v.clone().requires_grad_(True) for v in INIT_U[kind])
        p, q = (u1 if kind == "normal" else u1.exp()), u2.exp()
        qd = family(p, q)
        n, sx = len(data), data.sum()
        if kind == "normal":
            e_prior = -0.5 * math.log(2 * math.pi * b0**2) - ((p - a0) ** 2 + q**2) / (2 * b0**2)
            e_lik = (
                -0.5 * math.log(2 * math.pi * SIGMA**2) - ((data - p) ** 2 + q**2) / (2 * SIGMA**2)
            ).sum()
        elif kind == "beta":
            elog, elog1 = torch.digamma(p) - torch.digamma(p + q), torch.digamma(q) - torch.digamma(p + q)
            e_prior = (
                (a0 - 1) * elog
                + (b0 - 1) * elog1
                - (math.lgamma(a0) + math.lgamma(b0) - math.lgamma(a0 + b0))
            )
            e_lik = sx * elog + (n - sx) * elog1
        else:
            elog, mean = torch.digamma(p) - q.log(), p / q
            e_prior = a0 * math.log(b0) - math.lgamma(a0) + (a0 - 1) * elog - b0 * mean
            e_lik = (
                (sx * elog - n * mean - torch.lgamma(data + 1).sum())
                if kind == "poisson"
                else n * elog - mean * sx
            )
        (g1, g2) = torch.autograd.grad(-(e_prior + e_lik + qd.entropy()), [u1, u2])
        return {"p": g1, "q": g2}

    def posterior():
        n, sx = len(data), float(data.sum())
        if kind == "normal":
            precision = 1 / b0**2 + n / SIGMA**2
            return (a0 / b0**2 + sx / SIGMA**2) / precision, precision**-0.5
        a, b = {
            "beta": (a0 + sx, b0 + n - sx),
            "poisson": (a0 + sx, b0 + n),
            "exponential": (a0 + n, b0 + sx),
        }[kind]
        d = dist.Beta(t(a), t(b)) if kind == "beta" else dist.Gamma(t(a), t(b))
        return float(d.mean), float(d.stddev)

    return model, guide, exact, posterior, family


KINDS = ["normal", "beta", "poisson", "exponential"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("est", ["pathwise", "score-loo"])
def test_conjugate_unbiased_and_equal_to_trace_elbo(kind, est):
    model, guide, exact, _, _ = conjugate(kind)
    ours = gp.ELBO(num_particles=16, max_plate_nesting=1, estimators={"z": est}, seed=7)
    mean, stderr = repeated(ours, model, guide, 40)
    assert_unbiased(mean, stderr, exact())
    pyro.set_rng_seed(7)  # Trace_ELBO draws from the global RNG
    theirs = Trace_ELBO(num_particles=16, vectorize_particles=True, max_plate_nesting=1)
    mean_t, stderr_t = repeated(theirs, model, guide, 40)
    for k in mean:
        z = (mean[k] - mean_t[k]).abs() / (stderr[k] ** 2 + stderr_t[k] ** 2).sqrt()
        assert float(z) < Z_TOL, (k, mean[k], mean_t[k])


@pytest.mark.parametrize("kind", KINDS)
def test_svi_reaches_the_analytic_posterior(kind):
    model, guide, _, posterior, family = conjugate(kind)
    elbo = gp.ELBO(num_particles=16, max_plate_nesting=1, seed=8)
    svi = SVI(model, guide, Adam({"lr": 0.05}), elbo)
    for _ in range(300):
        svi.step()
    store = pyro.get_param_store()
    fitted = family(store["p"].detach(), store["q"].detach())
    mean, sd = posterior()
    # the optimum of the ELBO in a conjugate family is the posterior itself
    assert abs(float(fitted.mean) - mean) < 0.1 * sd, (float(fitted.mean), mean)
    assert abs(float(fitted.stddev) / sd - 1) < 0.1, (float(fitted.stddev), sd)


# ── state, monitor, reproducibility ───────────────────────────────────────────────────────────


def test_state_dict_restores_the_estimators():
    specs = {"b": "relax", "c": "score-ema=0.9"}
    elbo = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators=specs, seed=1)
    svi = SVI(mixed_model, mixed_guide, Adam({"lr": 0.05}), elbo)
    for _ in range(3):
        svi.step()
    state = elbo.state_dict()
    assert state["sites"]["b"]["steps"] == 3 and state["sites"]["c"]["average"]["count"] == 3
    twin = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators=specs, seed=99)
    twin.load_state_dict(state)
    params = list(pyro.get_param_store()._params.values())
    g1 = torch.autograd.grad(elbo.differentiable_loss(mixed_model, mixed_guide), params)
    g2 = torch.autograd.grad(twin.differentiable_loss(mixed_model, mixed_guide), params)
    for a, b in zip(g1, g2, strict=True):
        assert torch.equal(a, b)
    bad = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators={"b": "disarm", "c": "score-ema=0.9"})
    bad.load_state_dict(state)
    with pytest.raises(GradestError, match="saved state of guide site 'b' is for 'relax'"):
        bad.loss_and_grads(mixed_model, mixed_guide)


def test_same_seed_same_numbers():
    losses = []
    for _ in range(2):
        pyro.clear_param_store()
        elbo = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators={"b": "disarm"}, seed=11)
        losses.append([elbo.loss_and_grads(mixed_model, mixed_guide) for _ in range(3)])
    assert losses[0] == losses[1]


def test_monitor_groups_per_site():
    elbo = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators={"b": "disarm", "c": "score-loo"}, seed=2)
    mixed_guide()
    groups = gp.site_groups(elbo, mixed_model, mixed_guide)
    assert set(groups) == {"site:z", "site:c", "site:b"}
    store = pyro.get_param_store()._params
    assert {id(p) for p in groups["site:b"]} == {id(store["l"]), id(store["w"])}
    before = {k: v.detach().clone() for k, v in store.items()}
    monitor = GradientMonitor(
        groups, gp.monitor_loss(elbo, mixed_model, mixed_guide), state=[elbo], repeats=4
    )
    records = monitor.step(0, ())
    assert {r.group for r in records} == {"site:z", "site:c", "site:b", "all"}
    assert all(r.variance >= 0 for r in records)
    assert all(torch.equal(before[k], v) for k, v in store.items())


# ── bad use ───────────────────────────────────────────────────────────────────────────────────


def test_refuses_an_estimator_that_does_not_apply():
    elbo = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators={"z": "disarm"})
    with pytest.raises(GradestError, match="guide site 'z': disarm has rules for Bernoulli, not Normal"):
        elbo.loss_and_grads(mixed_model, mixed_guide)
    elbo = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators={"b": "pathwise"})
    with pytest.raises(GradestError, match="guide site 'b': pathwise needs a reparameterizable family"):
        elbo.loss_and_grads(mixed_model, mixed_guide)
    elbo = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators={"z": "mvd"})
    with pytest.raises(
        GradestError, match=r"'mvd' evaluates the downstream cost at perturbed points.*'pathwise'"
    ):
        elbo.loss_and_grads(mixed_model, mixed_guide)
    elbo = gp.ELBO(num_particles=1, max_plate_nesting=1, estimators={"b": "score-loo"})
    with pytest.raises(GradestError, match="needs num_particles ≥ 2"):
        elbo.loss_and_grads(mixed_model, mixed_guide)
    elbo = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators={"b": "nonsense"})
    with pytest.raises(GradestError, match="unknown estimator 'nonsense'"):
        elbo.loss_and_grads(mixed_model, mixed_guide)


def test_refuses_a_site_name_not_in_the_guide():
    elbo = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators={"bb": "disarm"})
    with pytest.raises(
        GradestError,
        match="estimators names 'bb', which the guide does not sample; its sites are 'z', 'c', 'b'",
    ):
        elbo.loss_and_grads(mixed_model, mixed_guide)
    with pytest.raises(GradestError) as raised:
        elbo.loss_and_grads(mixed_model, mixed_guide)
    assert "Trace Shapes" not in str(raised.value)  # the message as raised, no trace dump appended


def test_refuses_dependence_on_a_re_evaluated_site():
    elbo = gp.ELBO(num_particles=4, max_plate_nesting=1, estimators={"c": "disarm"})
    with pytest.raises(GradestError, match=r"guide site 'b' is computed from 'c'.*use 'score-loo' for 'c'"):
        elbo.loss_and_grads(mixed_model, mixed_guide)


def test_refuses_a_model_whose_sites_change_with_the_value():
    def model():
        c = pyro.sample("c", dist.Bernoulli(t(0.5)))
        if c.sum() > 1:  # data-dependent structure
            pyro.sample("extra", dist.Normal(t(0.0), 1.0), obs=t(0.3))
        pyro.sample("y", dist.Normal(c, 1.0), obs=t(1.0))

    def guide():
        pyro.sample("c", dist.Bernoulli(logits=pyro.param("a", t(0.0))))

    elbo = gp.ELBO(num_particles=4, max_plate_nesting=0, estimators={"c": "enumerate"})
    with pytest.raises(GradestError, match="the model's sites change with the value of guide site 'c'"):
        for _ in range(3):  # the structure moves once the particles' draws differ from an evaluation point
            elbo.loss_and_grads(model, guide)


def test_refuses_missing_max_plate_nesting():
    elbo = gp.ELBO(num_particles=4, estimators={"b": "disarm"})
    with pytest.raises(GradestError, match="pass max_plate_nesting=1"):
        elbo.loss_and_grads(mixed_model, mixed_guide)
    with pytest.raises(GradestError, match="vectorize_particles=True"):
        gp.ELBO(num_particles=4, max_plate_nesting=1, vectorize_particles=False)
    # without plates, nothing is needed

    def no_plates():
        pyro.sample("z", dist.Normal(t(0.0), 1.0))
        pyro.sample("x", dist.Normal(pyro.sample("w", dist.Normal(t(0.0), 1.0)), 1.0), obs=t(0.5))

    def no_plates_guide():
        pyro.sample("z", dist.Normal(pyro.param("p", t(0.0)), 1.0))
        pyro.sample("w", dist.Normal(pyro.param("r", t(0.0)), 1.0))

    assert math.isfinite(gp.ELBO(num_particles=4).loss_and_grads(no_plates, no_plates_guide))


def test_refuses_undeclared_batch_dims_and_unpaired_sites():
    def guide():
        pyro.sample("z", dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0))  # batch [3], no plate

    def model():
        pyro.sample("z", dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0))

    with pytest.raises(
        GradestError,
        match=r"declare its batch dims with pyro.plate \(or move them into the "
        r"event with .to_event\(\)\)",
    ):
        gp.ELBO(num_particles=2, max_plate_nesting=0).loss(model, guide)

    def latent_model():
        pyro.sample("z", dist.Normal(t(0.0), 1.0))
        pyro.sample("u", dist.Normal(t(0.0), 1.0))

    def guide_z():
        pyro.sample("z", dist.Normal(pyro.param("p", t(0.0)), 1.0))

    with pytest.raises(GradestError, match="model site 'u' is neither observed nor a guide site"):
        gp.ELBO(num_particles=2, max_plate_nesting=0).loss(latent_model, guide_z)


# ── the package stays optional ────────────────────────────────────────────────────────────────


def test_nothing_else_imports_pyro():
    for path in SRC.rglob("*.py"):
        if "pyro" in path.relative_to(SRC).parts[:1]:
            continue
        text = path.read_text(encoding="utf-8")
        assert "import pyro" not in text and "from pyro" not in text, path


def test_clear_import_error_without_pyro(monkeypatch):
    # Pyro made unimportable, gradest.pyro imported afresh (the modules put back afterwards)
    for name in [m for m in sys.modules if m == "gradest.pyro" or m.startswith("gradest.pyro.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pyro", None)
    with pytest.raises(ImportError, match=r"pip install gradest\[pyro\]"):
        importlib.import_module("gradest.pyro")


def test_defaults_per_family():
    elbo = gp.ELBO(num_particles=4, max_plate_nesting=1, seed=0)
    elbo.loss(mixed_model, mixed_guide)
    assert {n: s.spec for n, s in elbo.sites.items()} == {"z": "pathwise", "c": "score-loo", "b": "score-loo"}
    one = gp.ELBO(num_particles=1, max_plate_nesting=1, seed=0)
    one.loss(mixed_model, mixed_guide)
    assert one.sites["b"].spec == "score"
    shared = gp.ELBO(num_particles=4, max_plate_nesting=1, default="relax", estimators={"z": "pathwise"})
    shared.loss(mixed_model, mixed_guide)
    assert shared.sites["b"].estimator is not shared.sites["c"].estimator
