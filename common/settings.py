"""Option dataclass fields that describe themselves once, for every command.

A field made with `setting(...)` carries its help text, allowed choices or range, its command-line
name and whether it is a command-line option at all, in its metadata. pipeline/options.py turns
such fields into click options and the parsed values back into the dataclass, so an option's
name, default, bounds and help are written in one place: the field. Torch-free and click-free:
training configs, export/eval/predict options and the CLI all import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, field
from typing import Any

DEVICES = ("auto", "cpu", "cuda")


def setting(
    default: Any = MISSING,
    help: str = "",  # noqa: A002 - click's own word for it
    *,
    choices: tuple[str, ...] = (),
    min: float | None = None,  # noqa: A002
    max: float | None = None,  # noqa: A002
    min_open: bool = False,
    max_open: bool = False,
    runtime: bool = False,
    cli: bool = True,
    negatable: bool = False,
    path_kind: str = "",
    essential: bool = False,
    flags: tuple[str, ...] = (),
    metavar: str | None = None,
    argument: bool = False,
    nested: bool = False,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with what the command line (and a resumed run) needs to know about it.

    No default: a required option. runtime: may differ when a training run is resumed or
    compared (it changes how, not what, trains). cli: offered on the command line; flags: its
    option names (default: --field-name); argument: a positional argument taking one or more
    values (a tuple field) instead; negatable: a bool shown as --name/--no-name; path_kind:
    "file" or "dir" when a path must be one of those; essential: explained by a plain --help (the
    others are named there and explained by --help-all); nested: a dataclass whose own settings
    are options of the same command.
    """
    metadata = {
        "help": help,
        "choices": tuple(choices),
        "min": min,
        "max": max,
        "min_open": min_open,
        "max_open": max_open,
        "runtime": runtime,
        "cli": cli and not nested,
        "negatable": negatable,
        "path_kind": path_kind,
        "essential": essential,
        "flags": tuple(flags),
        "metavar": metavar,
        "argument": argument,
        "nested": nested,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def device_setting(help: str) -> Any:  # noqa: A002
    """--device auto|cpu|cuda, the same choices and default in every command that runs a model."""
    return setting("auto", help, choices=DEVICES)


# The post-processing thresholds, as export, eval and predict name them.
def conf_setting(help: str, default: float | None = None) -> Any:  # noqa: A002
    return setting(default, help, min=0, max=1, flags=("--conf",))


def iou_setting(help: str) -> Any:  # noqa: A002
    return setting(None, help, min=0, max=1, flags=("--iou",))


def max_dets_setting(help: str) -> Any:  # noqa: A002
    return setting(None, help, min=1, flags=("--max-dets",))
