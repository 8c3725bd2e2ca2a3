"""The walkthrough record: conclusions are computed from its own numbers; same seed, same results."""

import json

import pytest

from gradest.errors import GradestError
from gradest.gaussian import Settings, default_dataset, run
from gradest.gaussian import closed_form as cf
from gradest.gaussian.data import validate

TINY = Settings(steps=30, samples_per_step=4, check_samples=2000, sweep_samples=100)


@pytest.fixture(scope="module")
def results():
    return run(default_dataset(), TINY)


def strip_times(d):
    d = dict(d)
    d.pop("seconds")
    d["fits"] = [{k: v for k, v in f.items() if k != "seconds"} for f in d["fits"]]
    return d


def test_conclusions_quote_the_computed_ratios(results):
    rows = [(pc.estimates["score"]["mu"].exact_variance / pc.estimates["pathwise"]["mu"].exact_variance, pc)
            for _, pc in results.checks]
    top = max(r for r, _ in rows)
    text = " ".join(results.conclusions)
    assert f"{top:.3g}×" in text
    sq = next(f for f in results.fits if f.objective == "squared" and f.estimator == "pathwise")
    assert f"{sq.sigma:.4g}" in text


def test_conclusions_change_with_the_data():
    other = validate(default_dataset().values * 3.0 + 100.0, "<scaled>")
    text = " ".join(run(other, TINY).conclusions)
    assert f"{other.var_mle:.4g}" in text
    assert f"{default_dataset().var_mle:.4g}" not in text


def test_same_seed_same_results(results):
    again = run(default_dataset(), TINY)
    assert strip_times(json.loads(json.dumps(results.to_dict()))) == strip_times(
        json.loads(json.dumps(again.to_dict())))


def test_exact_numbers_in_the_record_are_the_closed_forms(results):
    stats = cf.Stats(results.data.n, results.data.mean, results.data.var_mle)
    for row in results.to_dict()["variance"]:
        for name in cf.ESTIMATORS:
            exact = cf.single_sample_variance(name, stats, row["mu"], row["sigma"])
            assert row[name]["mu"]["exact"] == pytest.approx(exact.mu)
            assert row[name]["sigma"]["exact"] == pytest.approx(exact.sigma)


def test_settings_are_validated():
    with pytest.raises(GradestError, match="--steps"):
        Settings(steps=0).validate()
    with pytest.raises(GradestError, match="--samples-per-step"):
        Settings(samples_per_step=1).validate()
    with pytest.raises(GradestError, match="unknown objective"):
        Settings(extra_fits=(("cubic", "score"),)).validate()


def test_locations_are_printed_to_a_fraction_of_the_spread():
    from gradest.gaussian.conclusions import fmt_at

    assert fmt_at(1e9 + 1.5e-3, 1e-3) == "1000000000.0015"  # 4 significant digits would print 1e+09
    assert fmt_at(5.2577, 1.8) == "5.2577"
    assert fmt_at(0.0, 1.0) == "0"
    assert fmt_at(2.2253228678913042e20, 1.8) == "2.225e+20"  # a diverged fit: no false digits
