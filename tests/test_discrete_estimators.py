"""The discrete estimators (arm, disarm, rebar, relax, unordered-set, enumerate; the relaxed ones in
test_discrete_relaxed.py) against enumeration on random products of Bernoulli and Categorical
variables (≤ 5; fixed seeds; Z_TOL standard errors of the per-sample mean), the two views on one
generator, θ declared in f, probs or logits, and the refusals that name the alternative."""

from __future__ import annotations

import math
from typing import NamedTuple

import pytest
import torch
import torch.distributions as D
import torch.nn.functional as F

import gradest
from conftest import Z_TOL, t
from gradest import GradestError, exact_grad, get_estimator, make_generator

UNBIASED = ["arm", "disarm", "rebar", "relax", "unordered-set", "enumerate"]
DISCRETE = [*UNBIASED, "gumbel-softmax", "straight-through", "gumbel-st"]


# ── random problems ─────────────────────────────────────────────────────────────────────────


class Problem(NamedTuple):
    label: str
    builder: object
    params: dict
    f: object
    plain: object  # the same distribution without Independent (exact_grad enumerates plain families)


def _bernoulli_logits(logits):
    return D.Bernoulli(logits=logits)


def _categorical_logits(logits):
    return D.Categorical(logits=logits)


def _one_hot_logits(logits):
    return D.OneHotCategorical(logits=logits)


def _independent_bernoulli(logits):
    return D.Independent(D.Bernoulli(logits=logits), 1)


def bernoulli_problem(seed: int, shape: tuple[int, ...], parameterization: str, cost: str) -> Problem:
    """Bernoulli variables of batch ``shape`` (≤ 5 in all), random logits and a random cost that couples
    all of them (``joint``, [N]), one per row (``per-row``, [N, shape[0]]) or one that declares θ."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    logits = 1.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    a = torch.randn(d, generator=g, dtype=torch.float64)
    pair = torch.randn(d, d, generator=g, dtype=torch.float64).triu(1)
    c = torch.randn(d, generator=g, dtype=torch.float64)

    def joint(x):
        flat = x.reshape(x.shape[0], -1)
        return flat @ a + ((flat @ pair) * flat).sum(-1) + torch.sin(3.0 * flat @ c)

    def per_row(x):  # [N, B]: row b's cost depends on row b only
        return torch.sin(3.0 * x * c.reshape(shape)).sum(-1) + (x * a.reshape(shape)).prod(-1)

    if parameterization == "probs":
        params, builder = {"probs": torch.sigmoid(logits)}, D.Bernoulli

        def declared(x, probs):
            n = x.shape[0]
            return joint(x) * (1.0 + probs.reshape(n, -1).sum(-1)) + (x * probs).reshape(n, -1).sum(-1)
    else:
        params, builder = {"logits": logits}, _bernoulli_logits

        def declared(x, logits):
            flat = logits.reshape(logits.shape[0], -1)
            return joint(x) * torch.tanh(flat).sum(-1) + (x.reshape(x.shape[0], -1) * flat).sum(-1)

    f = {"joint": joint, "per-row": per_row, "declared": declared}[cost]
    label = f"bernoulli{list(shape)}-{parameterization}-{cost}"
    return Problem(label, builder, params, f, builder)


def categorical_problem(seed: int, batch: int, classes: int, one_hot: bool, probs: bool) -> Problem:
    """``batch`` Categorical variables of ``classes`` values, one random cost per variable (what the
    unordered set estimator needs) plus a coupling term for the joint variant."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=g, dtype=torch.float64)
    table = 2.0 * torch.randn(batch, classes, generator=g, dtype=torch.float64)

    def per_variable(x):  # [N, batch]
        if one_hot:  # the same values, differentiable in x (for the relaxed estimators)
            return (x * table).sum(-1) ** 2 + torch.cos(x @ torch.arange(classes, dtype=x.dtype))
        return table[torch.arange(batch), x] ** 2 + torch.cos(x.to(torch.float64))

    if one_hot:
        builder = D.OneHotCategorical if probs else _one_hot_logits
    else:
        builder = (lambda probs: D.Categorical(probs=probs)) if probs else _categorical_logits
    params = {"probs": torch.softmax(logits, -1)} if probs else {"logits": logits}
    kind = ("one-hot" if one_hot else "categorical") + ("-probs" if probs else "-logits")
    return Problem(f"{kind}[{batch}x{classes}]", builder, params, per_variable, builder)


BERNOULLI = [
    bernoulli_problem(1, (5,), "logits", "joint"),
    bernoulli_problem(2, (2, 2), "probs", "joint"),
    bernoulli_problem(3, (3,), "probs", "per-row"),
    bernoulli_problem(4, (2, 2), "logits", "per-row"),
    bernoulli_problem(5, (4,), "logits", "declared"),
    bernoulli_problem(6, (3,), "probs", "declared"),
]
CATEGORICAL = [
    categorical_problem(7, 2, 5, one_hot=False, probs=False),
    categorical_problem(8, 1, 6, one_hot=False, probs=True),
    categorical_problem(9, 2, 4, one_hot=True, probs=True),
]
N = 20_000


def run(spec, problem, num_samples, seed):
    """per_sample of a fresh estimator on ``problem``."""
    return get_estimator(spec).per_sample(problem.f, problem.builder, problem.params, num_samples,
                                          make_generator(seed))


def check_unbiased(est, exact: dict[str, torch.Tensor]) -> None:
    """|mean − exact| ≤ Z_TOL · stderr + rounding, and the check rejects the negated gradient."""
    for name, g in est.grads.items():
        mean, stderr, ref = g.mean(0), est.stderr()[name], exact[name]
        bound = Z_TOL * stderr + 1e-10 * (1.0 + ref.abs())
        err = (mean - ref).abs()
        assert bool((err <= bound).all()), (
            f"{est.estimator} {name}: mean {mean.tolist()} vs exact {ref.tolist()}, error {err.tolist()} "
            f"> {bound.tolist()}")
        # power: a wrong reference (the negated gradient) is rejected by the same bound
        assert bool(((mean + ref).abs() > bound).any()), f"{est.estimator}: too few samples to fail"


@pytest.mark.parametrize("spec", ["arm", "disarm", "rebar", "relax", "enumerate"])
@pytest.mark.parametrize("problem", BERNOULLI, ids=[p.label for p in BERNOULLI])
def test_bernoulli_products_against_enumeration(spec, problem):
    exact = exact_grad(problem.f, problem.builder, problem.params, method="enumeration")
    est = run(spec, problem, N, 11)
    check_unbiased(est, exact.grads)
    values = est.values
    assert abs(float(values.mean() - exact.value)) <= Z_TOL * float(values.std()) / math.sqrt(N) + 1e-10


@pytest.mark.parametrize("spec", ["unordered-set", "unordered-set=2", "unordered-set=3", "enumerate"])
@pytest.mark.parametrize("problem", CATEGORICAL, ids=[p.label for p in CATEGORICAL])
def test_categorical_products_against_enumeration(spec, problem):
    exact = exact_grad(problem.f, problem.builder, problem.params, method="enumeration")
    est = run(spec, problem, N, 12)
    check_unbiased(est, exact.grads)


def test_enumerate_is_exact_with_zero_variance():
    for problem in [*BERNOULLI, *CATEGORICAL]:
        exact = exact_grad(problem.f, problem.builder, problem.params, method="enumeration")
        est = run("enumerate", problem, 3, 0)
        for name, g in est.grads.items():
            assert torch.allclose(g, exact.grads[name].expand_as(g), rtol=1e-10, atol=1e-12), problem.label
        assert torch.allclose(est.values, exact.value.expand(3), rtol=1e-12)


def test_unordered_set_with_the_whole_support_is_exact():
    problem = CATEGORICAL[0]  # 5 values
    exact = exact_grad(problem.f, problem.builder, problem.params, method="enumeration")
    est = run("unordered-set=5", problem, 4, 0)
    want = exact.grads["logits"].expand(4, -1, -1)
    assert torch.allclose(est.grads["logits"], want, rtol=1e-10, atol=1e-12)
    assert torch.allclose(est.values, exact.value.expand(4), rtol=1e-12)


def test_independent_bernoulli_matches_the_plain_product():
    # exact_grad does not enumerate Independent: the same draws under Independent and plain Bernoulli
    logits = t([[0.3, -1.2, 0.5], [1.1, 0.0, -0.4]])
    weights = t([[1.0, -2.0, 0.5], [0.3, 0.7, -1.1]])

    def per_row(x):  # [N, 2]
        return torch.sin((x * weights).sum(-1))

    for spec in ["arm", "disarm", "rebar", "relax", "enumerate"]:
        a = run(spec, Problem("", _independent_bernoulli, {"logits": logits}, per_row, None), 500, 3)
        b = run(spec, Problem("", _bernoulli_logits, {"logits": logits}, per_row, None), 500, 3)
        assert torch.allclose(a.grads["logits"], b.grads["logits"], rtol=1e-12, atol=1e-14), spec


# ── the two views ───────────────────────────────────────────────────────────────────────────


VIEW_CASES = [
    ("bernoulli-joint", BERNOULLI[0], ["arm", "disarm", "rebar", "relax", "enumerate", "gumbel-softmax",
                                       "straight-through", "gumbel-st", "disarm+antithetic", "rebar+qmc=4"]),
    ("bernoulli-declared", BERNOULLI[5], ["arm", "disarm", "rebar", "relax", "enumerate", "gumbel-softmax",
                                          "straight-through", "gumbel-st"]),
    ("bernoulli-per-row", BERNOULLI[3], ["arm", "rebar", "relax", "enumerate", "gumbel-st"]),
    ("categorical", CATEGORICAL[0], ["unordered-set", "unordered-set=2", "enumerate",
                                     "unordered-set+antithetic"]),
    ("one-hot", CATEGORICAL[2], ["unordered-set", "enumerate", "gumbel-softmax", "straight-through",
                                 "gumbel-st"]),
]


@pytest.mark.parametrize("label,problem,specs", VIEW_CASES, ids=[c[0] for c in VIEW_CASES])
def test_surrogate_gradient_equals_the_per_sample_mean(label, problem, specs):
    for spec in specs:
        est = run(spec, problem, 64, 5)
        leaves = {k: v.clone().requires_grad_(True) for k, v in problem.params.items()}
        loss = get_estimator(spec).surrogate(problem.f, problem.builder, leaves, 64, make_generator(5))
        loss.backward()
        assert torch.allclose(loss.detach(), est.values.mean(), rtol=1e-10, atol=1e-12), spec
        for name, g in est.grads.items():
            assert torch.allclose(leaves[name].grad, g.mean(0), rtol=1e-10, atol=1e-12), (spec, name)
            assert float(g.mean(0).abs().max()) > 0.0, (spec, name)  # not vacuous


def test_every_discrete_estimator_is_registered_with_its_capabilities():
    names = {key.partition("=")[0] for key in gradest.available()}
    assert set(DISCRETE) <= {n.partition("=")[0] for n in names}
    for spec in DISCRETE:
        caps = get_estimator(spec).capabilities
        assert caps.discrete and caps.families is not None
        assert caps.biased == (spec not in UNBIASED), spec


def test_a_decoder_inside_f_gets_its_gradient_from_the_surrogate():
    # f's own tensors receive ∇ E f; exact by enumeration of E f through them
    logits = t(0.4, -0.8, 1.2)
    weight = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64, requires_grad=True)

    def f(x):
        return torch.sin(x @ weight)

    exact_value = exact_grad(lambda x: torch.sin(x @ weight.detach()), _bernoulli_logits, {"logits": logits})
    (want,) = torch.autograd.grad(_enumerated(logits, f), weight)
    n = 20_000
    for spec in ["arm", "disarm", "rebar", "relax", "enumerate"]:
        weight.grad = None
        leaves = {"logits": logits.clone().requires_grad_()}
        loss = get_estimator(spec).surrogate(f, _bernoulli_logits, leaves, n, make_generator(8))
        loss.backward()
        # single-sample gradients cos(x·w) x and values sin(x·w) lie in [−1, 1]: stderr ≤ 1/√N
        tol = 1e-10 if spec == "enumerate" else Z_TOL / math.sqrt(n)
        assert torch.allclose(weight.grad, want, rtol=0.0, atol=tol), (spec, weight.grad, want)
        assert abs(float(loss.detach()) - float(exact_value.value)) <= tol, spec


def _enumerated(logits, f):
    """E f by summing over {0, 1}^3, differentiable in f's tensors."""
    x = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * 3)
    return (_log_prob(x, logits).exp() * f(x)).sum()


def _log_prob(x, logits):
    """log p(x) of independent bits, summed over the last axis."""
    return (x * F.logsigmoid(logits) + (1 - x) * F.logsigmoid(-logits)).sum(-1)


# ── refusals ────────────────────────────────────────────────────────────────────────────────


def _cost(x):
    return x.reshape(x.shape[0], -1).to(torch.float64).sum(1)


@pytest.mark.parametrize("spec", ["arm", "disarm", "rebar", "relax"])
def test_bernoulli_only_estimators_refuse_categorical_naming_the_alternative(spec):
    dist = _categorical_logits(t(0.1, 0.2, -0.3))
    reason = get_estimator(spec).applicable(dist)
    assert reason is not None and "'unordered-set'" in reason and "'score-loo'" in reason
    with pytest.raises(GradestError) as err:
        get_estimator(spec).per_sample(_cost, _categorical_logits, {"logits": t(0.1, 0.2, -0.3)}, 10,
                                       make_generator(0))
    assert str(err.value) == reason


@pytest.mark.parametrize("spec", ["gumbel-softmax", "straight-through", "gumbel-st"])
def test_relaxed_estimators_refuse_index_samples_naming_one_hot(spec):
    reason = get_estimator(spec).applicable(_categorical_logits(t(0.1, 0.2, -0.3)))
    assert reason is not None and "OneHotCategorical" in reason and "'score-loo'" in reason
    assert get_estimator(spec).applicable(_one_hot_logits(t(0.1, 0.2, -0.3))) is None


def test_discrete_estimators_refuse_continuous_families():
    for spec in DISCRETE:
        reason = get_estimator(spec).applicable(D.Normal(t(0.0), t(1.0)))
        assert reason is not None and "'score" in reason, spec


def test_unordered_set_refuses_a_cost_of_several_categoricals():
    problem = CATEGORICAL[0]
    with pytest.raises(GradestError, match=r"one cost per variable, shape \[N, 2\], got \[10\]") as err:
        run("unordered-set", problem._replace(f=lambda x: problem.f(x).sum(-1)), 10, 0)
    assert "'score-loo'" in str(err.value)


def test_enumerate_refuses_a_large_support_and_takes_per_element_costs():
    params = {"logits": torch.zeros(13, dtype=torch.float64)}
    with pytest.raises(GradestError, match=r"2\^13 = 8192 .* more than max_support = 4096") as err:
        get_estimator("enumerate").per_sample(_cost, _bernoulli_logits, params, 4, make_generator(0))
    assert "per-element cost" in str(err.value) and "'disarm'" in str(err.value)
    # 64 data of 3 bits each with a per-datum cost: 2³ points, not 2¹⁹²
    logits = torch.linspace(-2.0, 2.0, 192, dtype=torch.float64).reshape(64, 3)
    est = get_estimator("enumerate").per_sample(lambda x: torch.sin(x.sum(-1) + 0.3), _independent_bernoulli,
                                                {"logits": logits}, 2, make_generator(0))
    p = torch.sigmoid(logits)
    # d/dℓ_i E sin(Σ x + 0.3): check one datum against its own 8-point enumeration
    x = torch.cartesian_prod(*[torch.tensor([0.0, 1.0], dtype=torch.float64)] * 3)
    leaf = logits[5].clone().requires_grad_(True)
    (want,) = torch.autograd.grad((_log_prob(x, leaf).exp() * torch.sin(x.sum(-1) + 0.3)).sum(), leaf)
    assert torch.allclose(est.grads["logits"][0, 5], want, rtol=1e-12)
    assert p.shape == (64, 3)


@pytest.mark.parametrize("spec", ["gumbel-softmax", "straight-through", "gumbel-st", "rebar", "relax"])
def test_estimators_that_differentiate_f_refuse_a_thresholding_f(spec):
    def threshold(x):
        return (x > 0.5).to(torch.float64).sum(-1)

    with pytest.raises(GradestError, match="no gradient path") as err:
        run(spec, Problem("", _bernoulli_logits, {"logits": t(0.3, -0.2)}, threshold, None), 10, 0)
    assert "'disarm'" in str(err.value)
    # a cost that ignores x has a zero gradient, which is right
    constant = Problem("", _bernoulli_logits, {"logits": t(0.3, -0.2)},
                       lambda x: torch.ones(x.shape[0], dtype=torch.float64), None)
    est = run(spec, constant, 10, 0)
    assert torch.equal(est.grads["logits"], torch.zeros(10, 2, dtype=torch.float64))


@pytest.mark.parametrize("spec,message", [
    ("unordered-set=1", "from 2 to 8"), ("unordered-set=9", "from 2 to 8"), ("unordered-set=x", "integer"),
    ("gumbel-softmax=0", "positive"), ("gumbel-st=-1", "positive"), ("gumbel-softmax=cold", "number"),
])
def test_bad_arguments_are_refused(spec, message):
    with pytest.raises(GradestError, match=message):
        get_estimator(spec)


def test_randomness_from_the_generator_only():
    problem = BERNOULLI[0]
    for spec in ["arm", "disarm", "rebar", "relax", "gumbel-softmax", "gumbel-st", "straight-through"]:
        before = torch.get_rng_state()
        a = get_estimator(spec).per_sample(problem.f, problem.builder, problem.params, 50, make_generator(4))
        b = get_estimator(spec).per_sample(problem.f, problem.builder, problem.params, 50, make_generator(4))
        c = get_estimator(spec).per_sample(problem.f, problem.builder, problem.params, 50, make_generator(5))
        assert torch.equal(torch.get_rng_state(), before), spec
        assert torch.equal(a.grads["logits"], b.grads["logits"]) and torch.equal(a.values, b.values), spec
        assert not torch.equal(a.grads["logits"], c.grads["logits"]), spec
