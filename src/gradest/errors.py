"""The one exception type gradest raises for bad input.

`GradestError` subclasses `ValueError`, so callers that already catch `ValueError` keep working;
the command line turns it into a one-line message and exit code 2.
"""


class GradestError(ValueError):
    """Bad input: the message says what is wrong and how to fix it."""
