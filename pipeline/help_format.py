"""Help of a readable length for the commands with many options (train, run, compare).

`--help` explains the options most runs set and names the rest on a few lines; `--help-all`
explains every option (and, for train, every loss's --loss-opt keys). Which training options
are the everyday ones is said once, in TrainConfig's field metadata (`essential`).
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from typing import Any

import click

HELP_ALL = "help_all"


def _show_all(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if not value or ctx.resilient_parsing:
        return
    ctx.meta[HELP_ALL] = True
    click.echo(ctx.get_help(), color=ctx.color)
    ctx.exit()


help_all_option = click.option(
    "--help-all",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_all,
    help="Show every option with its help, and exit.",
)


class ShortHelpCommand(click.Command):
    """A command whose --help explains only the options not listed in `secondary`."""

    secondary: frozenset[str] = frozenset()
    epilog_all: Callable[[], str] | None = None  # shown with --help-all only

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        show_all = ctx.meta.get(HELP_ALL, False)
        explained: list[tuple[str, str]] = []
        named: list[str] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if show_all or param.name not in self.secondary:
                explained.append(record)
            else:
                named.append(max(param.opts, key=len))
        with formatter.section("Options"):
            formatter.write_dl(explained)
        if named:
            with formatter.section("More options (--help-all explains each)"):
                width = max(20, formatter.width - formatter.current_indent)
                for line in textwrap.wrap(", ".join(named), width, break_on_hyphens=False):
                    formatter.write(f"{'':>{formatter.current_indent}}{line}\n")

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_epilog(ctx, formatter)
        if ctx.meta.get(HELP_ALL) and self.epilog_all is not None:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(self.epilog_all())


def short_help_command(secondary: set[str], epilog_all: Callable[[], str] | None = None) -> Any:
    """A ShortHelpCommand class for one command's set of secondary parameter names."""
    attributes = {"secondary": frozenset(secondary), "epilog_all": staticmethod(epilog_all)}
    return type("ShortHelp", (ShortHelpCommand,), attributes)
