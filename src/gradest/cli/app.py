"""The Typer application every command module attaches to, and how its --help reads.

Typer's help labels a flag ``<bool>`` and a parameter without a metavar with its Python annotation
(``<list[str]>``, ``<Path>``), and prints an option's names joined by commas with no space, which a
narrow terminal cuts (``--monitor-repeats,--va…``). :class:`HelpCommand` and :class:`HelpGroup`
render the help from what a user types instead: no type label where the option takes no value, the
first name of an option in the names column and its other names in its help text.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import typer
from typer.core import TyperCommand, TyperGroup


@contextlib.contextmanager
def _as_typed(params, ctx) -> Iterator[None]:
    """Within: the parameters as --help shows them; after: as they were (the parser reads them)."""
    saved = [(p, p.opts, p.secondary_opts, p.help, p.__dict__.get("display_type_rich")) for p in params]
    try:
        for p in params:
            label = p.display_type_rich(ctx)
            if getattr(p, "is_flag", False) or p.param_type_name == "argument":
                label = None  # a flag takes no value; an argument's name (its metavar) says what it is
            elif label is not None and label.startswith("<"):  # a Python annotation: the value's kind
                label = p.type.name.upper()
            p.display_type_rich = lambda ctx, label=label: label
            longs = [o for o in p.opts if o.startswith("--")]
            if len(longs) > 1:  # one name in the names column, the others where there is room to wrap
                p.opts = [longs[0]] + [o for o in p.opts if not o.startswith("--")]
                p.help = f"{p.help or ''} Also spelt {', '.join(longs[1:])}.".strip()
            if p.secondary_opts:  # --resume/--no-resume in one column: the help keeps the width
                p.opts = [f"{p.opts[0]}/{p.secondary_opts[0]}", *p.opts[1:]]
                p.secondary_opts = []
        yield
    finally:
        for p, opts, secondary, text, shown in saved:
            p.opts, p.secondary_opts, p.help = opts, secondary, text
            del p.display_type_rich
            if shown is not None:
                p.display_type_rich = shown


class HelpCommand(TyperCommand):
    """A command whose --help shows no Python type labels and no option name cut at the margin."""

    def format_help(self, ctx, formatter) -> None:
        with _as_typed(self.get_params(ctx), ctx):
            super().format_help(ctx, formatter)


class HelpGroup(TyperGroup):
    """A command group with :class:`HelpCommand`'s help."""

    def format_help(self, ctx, formatter) -> None:
        with _as_typed(self.get_params(ctx), ctx):
            super().format_help(ctx, formatter)


class Typer(typer.Typer):
    """``typer.Typer`` whose groups and commands render their help as :class:`HelpCommand` does."""

    def __init__(self, **kwargs) -> None:
        super().__init__(cls=HelpGroup, **kwargs)

    def command(self, *args, **kwargs):
        kwargs.setdefault("cls", HelpCommand)
        return super().command(*args, **kwargs)


app = Typer(
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
