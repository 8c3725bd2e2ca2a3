"""The exception types gradest raises for bad input.

`GradestError` subclasses `ValueError`, so callers that already catch `ValueError` keep working;
the command line turns it into a one-line message and exit code 2. `NonFiniteError` is the
GradestError for NaN or inf in parameters or costs: a training loop tells a diverged run from a
misuse by its type.
"""


class GradestError(ValueError):
    """Bad input: the message says what is wrong and how to fix it."""


class NonFiniteError(GradestError):
    """NaN or inf where a finite number is needed (a parameter, a cost): often a diverged run."""


class SampleHealthError(GradestError):
    """Draws that stopped being samples of the distribution (underflowed onto the support's edge,
    collapsed onto a point): an estimate from them would be silently wrong."""
