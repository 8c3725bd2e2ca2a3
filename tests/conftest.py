"""Shared test settings: float64 everywhere (as in Pyro's tests), fixed seeds, no global RNG."""

import pytest
import torch

#: A test flags an estimate whose error exceeds this many standard errors. Under an unbiased
#: estimator the false-alarm rate per check is P(|Z| > 5) ≈ 5.7e-7.
Z_TOL = 5.0


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # The tests run many small tensor operations: intra-op threads gain nothing there and, on a
    # busy 2-core machine, their waits for each other dominate (50× slowdowns seen).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def t(*values):
    """A float64 tensor (scalar for one number)."""
    return torch.tensor(values[0] if len(values) == 1 else list(values), dtype=torch.float64)
