"""Capability flags as data: ``applicable`` refuses exactly what each estimator's ``capabilities``
and the family's mathematical facts rule out, with a message naming the alternative, and
per_sample enforces it; the analytic scores of scores.py against autograd of ``log_prob``.
"""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
import torch.distributions as D

from conftest import t
from gradest import GradestError, get_estimator, make_generator, rng
from gradest.estimators.base import has_inverse_cdf, unwrap
from gradest.estimators.scores import SCORES, analytic_score
from test_core_support import (
    SAMPLER_GAP,
    SPECS,
    leaves,
    per_sample,
    sampler_gap,
)


class Family(NamedTuple):
    """A family with the facts that decide applicability, stated here (not read from gradest)."""

    name: str
    builder: object
    params: dict
    discrete: bool
    support_moves: bool  # with the parameters (boundary terms the score identity misses)


def categorical_logits(logits):
    return D.Categorical(logits=logits)


FAMILIES = [
    Family("normal", D.Normal, {"loc": t(0.3), "scale": t(1.2)}, False, False),
    Family("bernoulli", D.Bernoulli, {"probs": t(0.3, 0.6)}, True, False),
    Family("categorical", categorical_logits, {"logits": t(0.5, -1.0, 0.2)}, True, False),
    Family("gamma", D.Gamma, {"concentration": t(0.6, 3.0), "rate": t(2.0, 0.5)}, False, False),
    Family("poisson", D.Poisson, {"rate": t(2.0, 0.5)}, True, False),
    Family("uniform", D.Uniform, {"low": t(0.0), "high": t(2.0)}, False, True),
    Family("pareto", D.Pareto, {"scale": t(1.0), "alpha": t(2.5)}, False, True),  # support [scale, ∞)
    # transformed families whose support does not move although their transforms carry parameters
    Family("gumbel", D.Gumbel, {"loc": t(0.3), "scale": t(1.2)}, False, False),  # ℝ
    Family("weibull", D.Weibull, {"scale": t(1.0), "concentration": t(2.0)}, False, False),  # (0, ∞)
    Family("kumaraswamy", D.Kumaraswamy, {"concentration1": t(2.0), "concentration0": t(3.0)},
           False, False),  # (0, 1)
]


def expected_refusal(spec: str, family: Family) -> str | None:
    """Which capability rules ``family`` out for ``spec`` (None: it applies)."""
    caps = get_estimator(spec).capabilities
    dist = family.builder(**leaves(family.params))
    if caps.families is not None and not isinstance(unwrap(dist), caps.families):
        return "families"
    if caps.needs_rsample and not dist.has_rsample:
        return "rsample"
    if not caps.discrete and family.discrete:
        return "discrete"
    est = get_estimator(spec)
    if est.sampler is not None and est.draws_through_inverse_cdf and not has_inverse_cdf(dist):
        return "inverse-cdf"
    if caps.fixed_support and family.support_moves:
        return "support"
    if est.sampler is not None and isinstance(unwrap(dist), D.Poisson) and not est.draws_through_inverse_cdf:
        return "inverse-cdf"  # the measure-valued Poisson rule has no inverse CDF either
    return None


def _cost(x):
    return x.reshape(x.shape[0], -1).to(torch.float64).sum(1)


def check_applicability(spec: str, family: Family) -> None:
    dist = family.builder(**leaves(family.params))
    reason = get_estimator(spec).applicable(dist)
    want = expected_refusal(spec, family)
    if want is None:
        assert reason is None, f"{spec} refuses {family.name}: {reason}"
        return
    assert reason is not None, f"{spec} accepts {family.name}, expected a refusal ({want})"
    if want == "inverse-cdf":
        assert "draws through the inverse CDF" in reason and "drop the" in reason, reason
    elif want == "support":
        assert "moves with its parameters" in reason and "'pathwise'" in reason, reason
    else:  # the alternative for a family without rsample, discrete, or without rules: the score family
        assert "'score" in reason, reason
    # per_sample enforces the refusal with the same message, before drawing anything
    with pytest.raises(GradestError) as err:
        per_sample(spec, _cost, family.builder, family.params, 20, seed=0)
    assert str(err.value) == reason


@pytest.mark.parametrize("family", FAMILIES, ids=[f.name for f in FAMILIES])
@pytest.mark.parametrize("spec", SPECS)
def test_applicable_follows_the_capabilities(spec, family):
    check_applicability(spec, family)


def test_the_flags_refuse_what_the_issue_names():
    # the rule above is not vacuous: the cases the issue lists are refusals
    by_name = {f.name: f for f in FAMILIES}
    assert expected_refusal("pathwise", by_name["bernoulli"]) == "rsample"
    assert expected_refusal("pathwise", by_name["categorical"]) == "rsample"
    assert expected_refusal("mvd", by_name["gamma"]) == "families"
    assert expected_refusal("score", by_name["uniform"]) == "support"
    assert expected_refusal("score-loo", by_name["pareto"]) == "support"
    assert expected_refusal("pathwise", by_name["pareto"]) is None
    assert expected_refusal("score", by_name["normal"]) is None
    assert expected_refusal("score", by_name["gumbel"]) is None  # support ℝ, parameters in transforms


NO_INVERSE_CDF = [
    (D.Bernoulli, {"probs": t(0.3, 0.6)}),
    (categorical_logits, {"logits": t(0.5, -1.0, 0.2)}),
    (D.Gamma, {"concentration": t(0.6, 3.0), "rate": t(2.0, 0.5)}),
    (D.Poisson, {"rate": t(2.0, 0.5)}),
    (lambda loc, scale: D.MultivariateNormal(loc, scale_tril=torch.diag_embed(scale)),
     {"loc": t(0.3, -0.5), "scale": t(0.7, 1.2)}),
]


def test_applicable_refuses_a_sampler_the_family_cannot_use():
    accepted_then_failed = []
    for builder, params in NO_INVERSE_CDF:
        dist = builder(**leaves(params))
        for spec in SPECS:
            if get_estimator(spec).applicable(dist) is None and sampler_gap(spec, builder, params):
                accepted_then_failed.append(f"{spec} on {type(dist).__name__}")
    assert not accepted_then_failed, f"applicable() accepted, the call raised '{SAMPLER_GAP}': " + ", ".join(
        accepted_then_failed)


# ── analytic scores ─────────────────────────────────────────────────────────────────────────

B = 3
_g = torch.Generator().manual_seed(0)


def _positive(*shape):
    return 0.5 + torch.rand(*shape, generator=_g, dtype=torch.float64)


def _unit(*shape):
    return 0.1 + 0.8 * torch.rand(*shape, generator=_g, dtype=torch.float64)


def _real(*shape):
    return torch.randn(*shape, generator=_g, dtype=torch.float64)


def _probs_with_logits_cached(probs):
    dist = D.Bernoulli(probs=probs)
    dist.logits  # noqa: B018  (a lazy property: now stored beside probs)
    return dist


SCORE_CASES = {
    D.Normal: [("loc-scale", D.Normal, {"loc": _real(B, 2), "scale": _positive(B, 2)}),
               ("shared-scale", D.Normal, {"loc": _real(B, 2), "scale": _positive(2)})],
    D.Bernoulli: [("probs", lambda probs: D.Bernoulli(probs=probs), {"probs": _unit(B, 2)}),
                  ("logits", lambda logits: D.Bernoulli(logits=logits), {"logits": _real(B, 2)}),
                  ("probs, logits cached", _probs_with_logits_cached, {"probs": _unit(B, 2)})],
    D.Categorical: [("probs", lambda probs: D.Categorical(probs=probs), {"probs": _positive(B, 4)}),
                    ("logits", categorical_logits, {"logits": _real(B, 4)})],
    D.Exponential: [("rate", D.Exponential, {"rate": _positive(B, 2)})],
    D.Poisson: [("rate", D.Poisson, {"rate": 3 * _positive(B, 2)})],
    D.Gamma: [("concentration-rate", D.Gamma, {"concentration": _positive(B, 2), "rate": _positive(B, 2)})],
}


def test_every_analytic_score_has_a_case():
    assert set(SCORES) <= set(SCORE_CASES), f"add a case for {set(SCORES) - set(SCORE_CASES)}"


@pytest.mark.parametrize(
    "family,label,builder,params",
    [(f, label, b, p) for f in SCORES for label, b, p in SCORE_CASES.get(f, [])],
    ids=[f"{f.__name__}-{label}" for f in SCORES for label, _, _ in SCORE_CASES.get(f, [])],
)
def test_analytic_score_equals_autograd_of_log_prob(family, label, builder, params):
    n = 64
    # one private copy of the parameters per sample, so autograd gives per-sample scores
    rank = max(v.dim() for v in params.values())  # a shared parameter of lower rank stays shared
    replicas = {k: v.reshape(*[1] * (rank - v.dim()), *v.shape).expand(n, *[1] * (rank - v.dim()), *v.shape)
                .clone().requires_grad_(True) for k, v in params.items()}
    dist = builder(**replicas)
    assert type(dist) is family
    x = rng.sample(dist, (), make_generator(1), reparameterized=False)
    scores = analytic_score(dist, x)
    assert scores is not None
    logp = dist.log_prob(x)
    for phi, s in scores:
        assert s.shape == phi.shape, (label, s.shape, phi.shape)
        (auto,) = torch.autograd.grad(logp.sum(), phi, retain_graph=True)
        assert torch.allclose(s, auto, rtol=1e-10, atol=1e-12), (label, (s - auto).abs().max())
    # complete: through the chain rule the rules give the whole gradient of log p in every parameter
    chained = sum(((phi - phi.detach()) * s).sum() for phi, s in scores)
    via_rules = torch.autograd.grad(chained, list(replicas.values()), retain_graph=True)
    via_log_prob = torch.autograd.grad(logp.sum(), list(replicas.values()))
    for name, a, b in zip(replicas, via_rules, via_log_prob, strict=True):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (label, name, (a - b).abs().max())
        assert b.abs().max() > 0.1  # a rule that returned zeros would fail above


NORMAL_CASES = SCORE_CASES[D.Normal]


@pytest.mark.parametrize("label,builder,params", NORMAL_CASES, ids=[c[0] for c in NORMAL_CASES])
def test_the_normal_score_from_the_drawn_noise_equals_autograd_of_log_prob(label, builder, params):
    # the score estimator reads (x − μ)/σ as the ε that made x (rng.normal_draw): the same scores
    n = 64
    rank = max(v.dim() for v in params.values())
    replicas = {k: v.reshape(*[1] * (rank - v.dim()), *v.shape).expand(n, *[1] * (rank - v.dim()), *v.shape)
                .clone().requires_grad_(True) for k, v in params.items()}
    dist = builder(**replicas)
    x, eps = rng.normal_draw(dist, (), make_generator(1))
    assert torch.equal(x, rng.sample(dist, (), make_generator(1), reparameterized=False))  # the same draw
    from_noise = analytic_score(dist, x.detach(), noise=eps)
    logp = dist.log_prob(x.detach())
    for phi, s in from_noise:
        (auto,) = torch.autograd.grad(logp.sum(), phi, retain_graph=True)
        assert torch.allclose(s, auto, rtol=1e-10, atol=1e-12), (label, (s - auto).abs().max())


def test_the_score_estimator_draws_what_the_others_draw():
    # draw_standardized's Normal path gives the sampler's draws bit for bit: score and pathwise see one x
    params = {"loc": torch.tensor([0.3, -1.0], dtype=torch.float64),
              "scale": torch.tensor([1.7, 0.2], dtype=torch.float64)}
    values = [get_estimator(name).per_sample(lambda x: x.sin().sum(-1), D.Normal, params, 100,
                                             make_generator(5)).values for name in ("score", "pathwise")]
    assert torch.equal(*values)


def test_a_sampler_registered_over_a_wrapper_is_used_by_the_score_function_too():
    # draw_standardized reads ε only where gradest's own samplers draw the whole chain (Independent → Normal)
    calls = []
    built_in = rng.SAMPLERS[D.Independent]

    def mine(dist, sample_shape, generator):
        calls.append(1)
        return built_in(dist, sample_shape, generator)

    params = {"loc": torch.zeros(3, dtype=torch.float64), "scale": torch.ones(3, dtype=torch.float64)}
    try:
        rng.register_sampler(D.Independent)(mine)
        for name in ("score", "pathwise"):
            get_estimator(name).per_sample(lambda x: x.sum(-1), lambda loc, scale: D.Independent(
                D.Normal(loc, scale), 1), params, 10, make_generator(0))
    finally:
        rng.SAMPLERS[D.Independent] = built_in
    assert len(calls) == 2
