"""Shared test settings: float64 everywhere (as in Pyro's tests), fixed seeds, no global RNG."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings
from hypothesis.database import DirectoryBasedExampleDatabase

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


# Hypothesis profiles for tests/test_properties.py: "ci" (the default) is derandomized and bounded, so
# every run draws the same cases in the suite's time; "long" (HYPOTHESIS_PROFILE=long, `make fuzz`)
# draws new ones each run, many more, and shrinks a failure to a minimal case, kept for replay under
# .pytest_cache (ignored by git).
settings.register_profile(
    "ci", max_examples=200, derandomize=True, deadline=None, database=None, print_blob=True,
    phases=(Phase.explicit, Phase.generate), suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long", max_examples=1500, deadline=None, print_blob=True,
    database=DirectoryBasedExampleDatabase(Path(__file__).parent.parent / ".pytest_cache" / "hypothesis"),
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _draws_from_a_fixed_pool() -> bool:
    """Hypothesis also draws, now and then, the literals written in the source of every non-test module
    imported so far (its "local constants"). Which ones are imported depends on the tests collected and
    run before, so a derandomized profile drew other cases in the whole suite than in one file (a
    property took 265 s there instead of 15 s: a 240-coordinate ``mvd-delta`` case drawn 7 times), and
    a literal changed in src/ changed them too. Where the cases must be the same every run, only
    Hypothesis's own fixed pool of constants is drawn from."""
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:  # a Hypothesis without local constants: nothing to fix
        return False
    if not hasattr(providers, "_get_local_constants"):
        return False
    none = Constants()
    providers._get_local_constants = lambda: none
    providers.CONSTANTS_CACHE.cache.clear()
    return True


#: whether Hypothesis draws from its fixed pool of constants alone; the "long" runs (`make fuzz`,
#: `make fuzz-cli`) draw new cases each run, and keep the local constants
FIXED_POOL = "long" not in (os.environ.get("HYPOTHESIS_PROFILE"), os.environ.get("GRADEST_CLI_FUZZ")) \
    and _draws_from_a_fixed_pool()


@pytest.fixture(scope="session")
def docs_site(tmp_path_factory):
    """The documentation site, built once per run as CI builds it (``sphinx-build -W --keep-going``)."""
    import subprocess
    import sys

    pytest.importorskip("sphinx", reason="the docs tools are not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-E", "-b", "html",
                           str(Path(__file__).resolve().parents[1] / "docs"), str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return out
