"""Click options generated from option dataclasses, and the parsed values back into them.

One mechanism for every command: each field made with common.settings.setting() describes its
option (name, default, bounds, choices, help); `options_of` turns a dataclass's fields into click
options and `from_options` the parsed values back into the dataclass. Also the training options
shared by `train`, `run` and `compare` and their mapping to TrainConfig."""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from pipeline.errors import user_errors_exit_2
from train.config import TrainConfig


def parse_loss_options(pairs: tuple[str, ...]) -> dict[str, str]:
    """`key=value` strings -> dict; the loss registry parses and checks the values."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--loss-opt")
        options[key.strip()] = value.strip()
    return options


def format_loss_listing(described: list[dict[str, Any]]) -> str:
    """Plain-text listing of every loss and its `--loss-opt` keys with defaults."""
    lines = []
    for entry in described:
        clip = f" (grad clip {entry['grad_clip']:g})" if entry.get("grad_clip") else ""
        lines.append(f"{entry['name']}: {entry['summary']}{clip}")
        for option in entry["options"]:
            choices = f" [{'|'.join(option['choices'])}]" if option["choices"] else ""
            lines.append(f"    {option['name']}={option['default']}{choices}  {option['help']}")
    return "\n".join(lines)


# The option that sets a dict field: --loss-opt KEY=VALUE, repeatable.
OPTION_NAMES = {"loss_options": "loss_opt"}


def param_name(f: Field) -> str:
    """The click parameter (and keyword) name of a field's option."""
    return OPTION_NAMES.get(f.name, f.name)


def _click_type(f: Field, base: type) -> Any:
    """The click type of a field, from its type and metadata."""
    meta = f.metadata
    if meta["choices"]:
        return click.Choice(list(meta["choices"]))
    bounded = meta["min"] is not None or meta["max"] is not None
    if base is int:
        return click.IntRange(min=meta["min"], max=meta["max"]) if bounded else int
    if base is float:
        if not bounded:
            return float
        return click.FloatRange(
            min=meta["min"], max=meta["max"], min_open=meta["min_open"], max_open=meta["max_open"]
        )
    if base is Path:
        kind = meta["path_kind"]
        return click.Path(path_type=Path, file_okay=kind != "dir", dir_okay=kind != "file")
    return str


def _base_type(annotation: Any) -> type:
    """int for `int | None`, Path for `Path | None`, str for `tuple[str, ...]`, ..."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (tuple, dict):
        return typing.get_origin(annotation)
    return _base_type(args[0]) if args else annotation


def _required(f: Field) -> bool:
    return f.default is MISSING and f.default_factory is MISSING


def option_flags(f: Field) -> tuple[str, ...]:
    """The option names of a field: its `flags`, else --field-name."""
    return f.metadata["flags"] or ("--" + param_name(f).replace("_", "-"),)


def option_for(f: Field, annotation: Any) -> Callable:
    """The click option (or argument) of one field: everything from the field itself."""
    meta = f.metadata
    name = param_name(f)
    flags = option_flags(f)
    base = _base_type(annotation)
    if meta["argument"]:
        return click.argument(name, nargs=-1, required=_required(f))
    if base is dict:
        return click.option(*flags, name, multiple=True, metavar="KEY=VALUE", help=meta["help"])
    if base is bool:
        if meta["negatable"]:
            negated = f"{flags[0]}/--no-{flags[0][2:]}"
            return click.option(
                negated, name, default=f.default, show_default=True, help=meta["help"]
            )
        return click.option(*flags, name, is_flag=True, help=meta["help"])
    # a required option gets no default at all: click 8.3 takes an explicit None as a value
    default = {} if _required(f) else {"default": f.default, "show_default": f.default is not None}
    return click.option(
        *flags,
        name,
        type=_click_type(f, base),
        required=_required(f),
        metavar=meta["metavar"],
        help=meta["help"],
        **default,
    )


def cli_fields(cls: type) -> list[tuple[Field, Any]]:
    """(field, annotation) of every command-line setting of `cls`, those of its nested option
    dataclasses in their place, in field order."""
    hints = typing.get_type_hints(cls)
    found: list[tuple[Field, Any]] = []
    for f in fields(cls):
        if f.metadata.get("nested"):
            found += cli_fields(_base_type(hints[f.name]))
        elif f.metadata.get("cli"):
            found.append((f, hints[f.name]))
    return found


def options_of(cls: type) -> Callable:
    """Decorator adding the click options of every setting of `cls` to a command."""
    params = [param_name(f) for f, _ in cli_fields(cls)]
    assert len(params) == len(set(params)), f"{cls.__name__}: two options share a name"
    options = [option_for(f, annotation) for f, annotation in cli_fields(cls)]

    def apply(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


def from_options(cls: type, values: dict[str, Any], **extra: Any) -> Any:
    """`cls` filled from the parsed options (`values`, by parameter name), nested dataclasses
    included; settings that are not options keep their defaults unless given in `extra`."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get("nested"):
            kwargs[f.name] = from_options(_base_type(hints[f.name]), values)
        elif f.metadata.get("cli"):
            value = values[param_name(f)]
            base = _base_type(hints[f.name])
            kwargs[f.name] = parse_loss_options(value) if base is dict else value
    return cls(**kwargs, **extra)


def options_command(group: click.Group, name: str | None, cls: type, **attrs: Any) -> Callable:
    """Register `func(options: cls)` as a command of `group` whose options are generated from
    `cls`'s settings; the command remembers `cls` as `options_class`."""

    def register(func: Callable[[Any], None]) -> click.Command:
        @functools.wraps(func)
        def callback(**values: Any) -> None:
            func(from_options(cls, values))

        command = group.command(name, **attrs)(options_of(cls)(user_errors_exit_2(callback)))
        command.options_class = cls  # type: ignore[attr-defined]
        return command

    return register


def _cli_fields() -> list[tuple[Field, Any]]:
    return cli_fields(TrainConfig)


# The training options, by TrainConfig field name, in the field order.
TRAIN_OPTIONS_BY_FIELD: dict[str, Callable] = {
    f.name: option_for(f, annotation) for f, annotation in _cli_fields()
}
TRAIN_OPTIONS: list[Callable] = list(TRAIN_OPTIONS_BY_FIELD.values())
# Parameter names a plain --help only names (pipeline/help_format.py).
SECONDARY_TRAIN_PARAMS = {param_name(f) for f, _ in _cli_fields() if not f.metadata["essential"]}


def train_options(func: Callable) -> Callable:
    for option in reversed(TRAIN_OPTIONS):
        func = option(func)
    return func


def config_from_options(out: Path, options: dict[str, Any]) -> TrainConfig:
    """Every training option lands in the config (a test checks each one)."""
    return from_options(TrainConfig, options, out=out)


def config_from_command_line(out: Path, options: dict[str, Any]) -> TrainConfig:
    """config_from_options for `train` and `run`, refusing options a --resume would ignore."""
    config = config_from_options(out, options)
    if config.resume is not None:
        from train.resume import refuse_changed_options

        refuse_changed_options(config, fields_given(click.get_current_context()))
    return config


def fields_given(ctx: click.Context) -> set[str]:
    """The TrainConfig fields set on the command line (or through the environment)."""
    sources = (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)
    given = {p.name for p in ctx.command.params if ctx.get_parameter_source(p.name) in sources}
    return {"loss_options" if name == "loss_opt" else name for name in given if name}
