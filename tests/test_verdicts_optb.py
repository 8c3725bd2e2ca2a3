"""score-optb and the other control variates refuse a sample count where c = Cov/Var is undefined.

With N = 2 the leave-one-out coefficient of each sample is computed from ONE other sample, whose
variance is 0: the estimator used to set c = 0 silently (plain REINFORCE under a control-variate
name). It now refuses, naming the minimum.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal

from gradest.errors import GradestError
from gradest.estimators import get_estimator
from gradest.estimators.control_variates import MIN_INDEPENDENT, leave_group_out_coefficients
from gradest.rng import make_generator

PARAMS = {"loc": torch.tensor(1.0, dtype=torch.float64), "scale": torch.tensor(1.0, dtype=torch.float64)}


def square(x):
    return (x - 2.0) ** 2


@pytest.mark.parametrize("name", ["score-optb", "score-delta", "mvd-delta", "pathwise-delta"])
def test_two_samples_are_refused_with_the_minimum(name):
    est = get_estimator(name)
    assert est.min_samples == MIN_INDEPENDENT == 3
    with pytest.raises(GradestError, match="≥ 3"):
        est.per_sample(square, Normal, PARAMS, 2, make_generator(0))
    with pytest.raises(GradestError, match="≥ 3"):
        est.surrogate(square, Normal, PARAMS, 2, make_generator(0))
    est.per_sample(square, Normal, PARAMS, 3, make_generator(0))  # the minimum runs


def test_two_antithetic_pairs_are_refused_naming_the_fix():
    with pytest.raises(GradestError, match=r"at least 3 pairs or randomizations, e\.g\. 6"):
        get_estimator("score-optb+antithetic").per_sample(square, Normal, PARAMS, 4, make_generator(0))
    get_estimator("score-optb+antithetic").per_sample(square, Normal, PARAMS, 6, make_generator(0))


def test_three_samples_give_a_real_coefficient_not_zero():
    a = torch.tensor([[1.0], [2.0], [4.0]], dtype=torch.float64)
    b = torch.tensor([[1.0], [3.0], [2.0]], dtype=torch.float64)
    coeff = leave_group_out_coefficients(a, b)
    # sample 0's coefficient from samples 1 and 2: Cov/Var = (2−4)(3−2)/((3−2)²) ... = −2
    assert float(coeff[0, 0]) == pytest.approx((2.0 - 4.0) / (3.0 - 2.0))
    with pytest.raises(GradestError, match="at least 3"):
        leave_group_out_coefficients(a[:2], b[:2])
