"""Estimator selection: ranking by efficiency, bias check of user estimators, inapplicable ones."""

import pytest
import torch
from torch.distributions import Independent, Normal

import gradest
from gradest.estimators import Pathwise, registry
from gradest.families import get_family
from gradest.lab.selection import select

PARAMS = {"loc": torch.tensor(1.0, dtype=torch.float64), "scale": torch.tensor(1.0, dtype=torch.float64)}


class Doubled(Pathwise):
    """A user's estimator with a bug: twice the pathwise gradient."""

    def terms(self, cost, node, generator):
        terms = super().terms(cost, node, generator)
        return terms._replace(carrier=2.0 * terms.carrier)


@pytest.fixture
def user_registry(monkeypatch):
    # A private copy of the registry: the test's estimators never leak into other tests.
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    gradest.register("user-doubled", "test: biased")(lambda _: Doubled())
    gradest.register("user-pathwise", "test: unbiased")(lambda _: Pathwise())


def test_ranking_is_by_efficiency_and_the_best_is_recommended(user_registry):
    f = gradest.named_cost("cos", 2.0)  # exact ∂/∂μ = −2 sin(2) e⁻² ≠ 0, so doubling it shows
    result = select(f, Normal, PARAMS, ["pathwise", "score", "score-loo", "user-doubled", "user-pathwise"],
                    num_samples=4000, seed=0)
    usable = [c for c in result.candidates if c.usable]
    assert [c.efficiency for c in usable] == sorted(c.efficiency for c in usable)
    assert result.recommendation == usable[0].estimator
    assert usable[0].estimator in result.reason and "better than the runner-up" in result.reason
    for c in usable:
        assert c.efficiency == pytest.approx(c.variance * c.seconds_per_sample)
    doubled = next(c for c in result.candidates if c.estimator == "user-doubled")
    assert doubled.biased and not doubled.usable and "BIASED" in doubled.note
    assert next(c for c in result.candidates if c.estimator == "user-pathwise").usable
    assert result.reference.startswith("exact")


def test_without_an_exact_gradient_pathwise_is_the_reference(user_registry):
    # Four coordinates and a cost with no closed form: no exact gradient exists.
    def f(x):
        return ((x - 1.0) ** 2 + x.abs()).sum(-1)

    params = {"loc": torch.full((4,), 0.3, dtype=torch.float64), "scale": torch.ones(4, dtype=torch.float64)}
    with pytest.raises(gradest.GradestError):
        gradest.exact_grad(f, Normal, params)
    result = select(f, Normal, params, ["pathwise", "user-doubled", "user-pathwise"], num_samples=4000)
    assert result.reference.startswith("pathwise")
    by_name = {c.estimator: c for c in result.candidates}
    assert by_name["user-doubled"].biased
    assert not by_name["user-pathwise"].biased


def test_inapplicable_estimators_are_listed_not_ranked():
    family = get_family("bernoulli")
    params = {"probs": torch.tensor([0.3, 0.6], dtype=torch.float64)}
    result = select(gradest.named_cost("square", 0.5), family.build, params, ["pathwise", "score"],
                    num_samples=2000)
    assert result.recommendation == "score"
    pathwise = next(c for c in result.candidates if c.estimator == "pathwise")
    assert not pathwise.applicable and "not applicable" in pathwise.note


def test_pilots_run_on_the_requested_threads_and_restore_the_setting(monkeypatch):
    seen = []
    original = Pathwise.terms

    def spy(self, *args):
        seen.append(torch.get_num_threads())
        return original(self, *args)

    monkeypatch.setattr(Pathwise, "terms", spy)
    before = torch.get_num_threads()
    select(gradest.named_cost("cos", 1.0), Normal, PARAMS, ["pathwise"], num_samples=100, threads=1)
    assert set(seen) == {1}
    assert torch.get_num_threads() == before
    with pytest.raises(gradest.GradestError, match="threads"):
        select(gradest.named_cost("cos", 1.0), Normal, PARAMS, ["pathwise"], num_samples=100, threads=0)


def test_a_zero_variance_estimate_off_the_reference_is_flagged_biased():
    # round(x) has derivative 0 wherever it has one: pathwise returns exactly 0 with zero variance,
    # while ∂/∂μ E round(x) = Σ_j φ(j + ½ − μ) ≈ 1. Its z is +inf, which must count as biased.
    def rounded(x):
        return torch.round(x).reshape(x.shape[0], -1).sum(1)

    params = {"loc": torch.tensor([0.2, 1.0], dtype=torch.float64),
              "scale": torch.tensor([1.0, 1.0], dtype=torch.float64)}
    result = select(rounded, Normal, params, ["pathwise", "mvd"], num_samples=2000)
    by_name = {c.estimator: c for c in result.candidates}
    assert by_name["pathwise"].biased and not by_name["pathwise"].usable
    assert result.recommendation == "mvd"


def test_zero_variance_ties_are_stated_as_ties():
    # For a separable f under Bernoulli, f(x with x_d = 1) − f(x with x_d = 0) does not depend on x:
    # both measure-valued estimators are exact, so neither is "inf× better" than the other.
    family = get_family("bernoulli")
    params = {"probs": torch.tensor([0.01], dtype=torch.float64)}  # one coordinate: no rounding
    result = select(gradest.named_cost("square", 0.3), family.build, params, ["mvd", "mvd-uncoupled"],
                    num_samples=200)
    assert all(c.variance == 0 for c in result.candidates)
    assert "tied in efficiency with" in result.reason and "inf" not in result.reason
    top, second = result.candidates[:2]
    assert top.seconds_per_sample <= second.seconds_per_sample  # a tie goes to the faster


def test_without_any_reference_the_reason_says_unbiasedness_was_not_checked():
    family = get_family("poisson")
    result = select(gradest.named_cost("cos", 1.0), family.build,
                    {"rate": torch.tensor(3.0, dtype=torch.float64)}, ["score", "mvd"], num_samples=500)
    assert result.reference == "none"
    assert "not checked" in result.reason


def test_a_shared_scalar_parameter_is_ranked_like_any_other():
    # loc [2] beside one scale shared by both coordinates: the gradient of scale is one number
    params = {"loc": torch.tensor([0.2, 1.0], dtype=torch.float64),
              "scale": torch.tensor(1.0, dtype=torch.float64)}
    f = gradest.named_cost("cos", 1.0)
    result = select(f, Normal, params, ["pathwise", "score-loo"], num_samples=2000, seed=0)
    assert result.recommendation in ("pathwise", "score-loo")
    assert all(c.usable and not c.biased for c in result.candidates)
    exact = gradest.exact_grad(f, Normal, params)
    assert exact.grads["scale"].shape == ()


def test_a_cost_of_the_wrong_shape_is_reported_per_candidate_not_raised():
    def per_coordinate(x):  # forgot to sum over the event dimension of the joint distribution
        return x

    def joint(loc, scale):
        return Independent(Normal(loc, scale), 1)

    params = {"loc": torch.zeros(2, dtype=torch.float64), "scale": torch.ones(2, dtype=torch.float64)}
    result = select(per_coordinate, joint, params, ["pathwise", "mvd"], num_samples=100)
    assert result.recommendation is None and "error" in result.reason
    assert all("one value per sample" in c.note for c in result.candidates)
