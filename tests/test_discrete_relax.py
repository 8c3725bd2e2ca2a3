"""RELAX's control network (and REBAR's optional tuning of η, λ) learns inside surrogate calls only:
the estimator's variance falls after some steps, per_sample leaves the control as it is, the
variance steps never touch the user's parameters' (or f's own tensors') .grad, and the estimates
stay unbiased after training. dtype and device follow the parameters for every discrete estimator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as D

from conftest import Z_TOL, t
from gradest import GradestError, exact_grad, get_estimator, make_generator
from gradest.estimators.rebar import Rebar
from gradest.estimators.relax import Relax

LOGITS = torch.linspace(-1.0, 1.0, 5, dtype=torch.float64)
M = 4000  # per_sample draws for the variance measurements


def bernoulli_logits(logits):
    return D.Bernoulli(logits=logits)


def toy(x):
    return ((x - 0.45) ** 2).sum(-1)


def _variance(est) -> tuple[float, float]:
    """Σ_i Var ĝ_i from M samples on a fixed seed, and its standard error (from the 4th moment)."""
    g = est.per_sample(toy, bernoulli_logits, {"logits": LOGITS}, M, make_generator(5)).grads["logits"]
    c2 = ((g - g.mean(0)) ** 2).sum(-1)  # per sample, summed over coordinates
    return float(c2.mean()), float(c2.std()) / math.sqrt(M)


def _train(est, steps: int, params: dict[str, torch.Tensor], f=toy) -> None:
    for step in range(steps):
        est.surrogate(f, bernoulli_logits, params, 16, make_generator(100 + step))


def _control_state(est) -> list[torch.Tensor]:
    return [p.detach().clone() for p in est.control.parameters()]


@pytest.mark.parametrize("make,steps", [(Relax, 30), (lambda: Rebar(learn=True), 30)],
                         ids=["relax", "rebar-learn"])
def test_the_control_learns_to_lower_the_variance_in_surrogate_calls_only(make, steps):
    est = make()
    before, se_before = _variance(est)
    state = _control_state(est)
    _variance(est)  # per_sample: no learning
    assert all(torch.equal(a, b) for a, b in zip(state, _control_state(est), strict=True))
    assert est.steps == 0
    leaf = LOGITS.clone().requires_grad_(True)
    _train(est, steps, {"logits": leaf})
    assert est.steps == steps
    # no backward was called: the variance steps left the user's parameter without a gradient
    assert leaf.grad is None
    after, se_after = _variance(est)
    assert before - after > Z_TOL * math.hypot(se_before, se_after), (before, after)


def test_relax_training_never_touches_the_users_gradients():
    weight = torch.tensor([0.5, -1.0, 2.0, 0.3, 1.1], dtype=torch.float64, requires_grad=True)

    def f(x):  # a tensor of f's own (a decoder), with a gradient path from x
        return torch.sin(x @ weight) + toy(x)

    est = Relax()
    leaf = LOGITS.clone().requires_grad_(True)
    _train(est, 5, {"logits": leaf}, f)
    assert leaf.grad is None and weight.grad is None
    # one surrogate + backward: the gradients are the estimate itself (the step came after)
    fresh, twin = Relax(), Relax()
    _train(fresh, 3, {"logits": LOGITS.clone().requires_grad_(True)}, f)
    _train(twin, 3, {"logits": LOGITS.clone().requires_grad_(True)}, f)
    leaf = LOGITS.clone().requires_grad_(True)
    want = twin.per_sample(f, bernoulli_logits, {"logits": LOGITS}, 64, make_generator(77)).grads["logits"]
    want = want.mean(0)
    fresh.surrogate(f, bernoulli_logits, {"logits": leaf}, 64, make_generator(77)).backward()
    assert torch.allclose(leaf.grad, want, rtol=1e-10, atol=1e-12)
    assert fresh.steps == 4 and twin.steps == 3  # the surrogate stepped after computing its estimate


def test_relax_stays_unbiased_after_training():
    est = Relax()
    _train(est, 20, {"logits": LOGITS.clone().requires_grad_(True)})
    exact = exact_grad(toy, bernoulli_logits, {"logits": LOGITS}, method="enumeration").grads["logits"]
    ps = est.per_sample(toy, bernoulli_logits, {"logits": LOGITS}, 20_000, make_generator(6))
    err = (ps.grads["logits"].mean(0) - exact).abs()
    assert bool((err <= Z_TOL * ps.stderr()["logits"] + 1e-12).all()), (err, ps.stderr()["logits"])


def test_a_learned_control_refuses_another_problem():
    est = Relax()
    _train(est, 2, {"logits": LOGITS.clone().requires_grad_(True)})
    with pytest.raises(GradestError, match="use a fresh estimator"):
        est.per_sample(toy, bernoulli_logits, {"logits": t(0.1, 0.2)}, 10, make_generator(0))
    with pytest.raises(GradestError, match="use a fresh estimator"):
        est.per_sample(toy, bernoulli_logits, {"logits": LOGITS.float()}, 10, make_generator(0))
    # an untrained control is rebuilt for the new problem
    fresh = Relax()
    fresh.per_sample(toy, bernoulli_logits, {"logits": LOGITS}, 10, make_generator(0))
    fresh.per_sample(toy, bernoulli_logits, {"logits": t(0.1, 0.2)}, 10, make_generator(0))


# ── dtype and device follow the parameters ──────────────────────────────────────────────────

CASES = {
    "bernoulli": (bernoulli_logits, {"logits": t(0.3, -0.5, 1.0)}, toy),
    "categorical": (lambda logits: D.Categorical(logits=logits),
                    {"logits": t([[0.5, -1.0, 0.2], [1.0, 0.0, -0.5]])},
                    lambda x: (x.to(torch.float64) - 1.5) ** 2),
    "one-hot": (lambda probs: D.OneHotCategorical(probs=probs),
                {"probs": t([[0.2, 0.5, 0.3], [0.6, 0.1, 0.3]])},
                lambda x: ((x - 0.3) ** 2).sum(-1)),
}
PAIRS = [("bernoulli", s) for s in ["arm", "disarm", "rebar", "relax", "enumerate", "gumbel-softmax",
                                    "straight-through", "gumbel-st"]] + \
    [("categorical", s) for s in ["unordered-set", "unordered-set=2", "enumerate"]] + \
    [("one-hot", s) for s in ["unordered-set=2", "enumerate", "gumbel-softmax", "gumbel-st"]]


def _devices() -> list[str]:
    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("case,spec", PAIRS)
def test_dtype_and_device_follow_the_parameters(case, spec, dtype, device):
    builder, params, f = CASES[case]
    params = {k: v.to(dtype=dtype, device=device) for k, v in params.items()}

    def cost(x):  # the cost in the parameters' dtype, whatever the samples' dtype (Categorical indices)
        return f(x.cpu()).to(dtype=dtype, device=x.device)

    est = get_estimator(spec).per_sample(cost, builder, params, 40, make_generator(3, device))
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    loss = get_estimator(spec).surrogate(cost, builder, leaves, 40, make_generator(3, device))
    loss.backward()
    for k, v in params.items():
        g = est.grads[k]
        assert g.dtype == dtype and g.device == v.device and leaves[k].grad.dtype == dtype
        assert bool(torch.isfinite(g).all())
        tol = 1e-4 if dtype == torch.float32 else 1e-10
        assert torch.allclose(leaves[k].grad, g.mean(0), rtol=tol, atol=tol * float(g.abs().max() + 1))
    assert est.values.dtype == dtype and loss.dtype == dtype and loss.device == params[k].device
