"""The Typer application every command module attaches to."""

import typer

app = typer.Typer(
    name="gradest",
    help=(
        "Gradients of expectations, ∇θ E_p(x;θ)\\[f(x)]: compare Monte Carlo estimators "
        "(pathwise, score function, …) against exact gradients, with variance diagnostics."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)


@app.callback()
def _root() -> None:
    """Gradients of expectations ∇θ E_p(x;θ)\\[f(x)]: estimators, exact gradients, diagnostics."""
