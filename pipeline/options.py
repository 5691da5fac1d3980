"""Training options shared by `train`, `run` and `compare`, and their mapping to TrainConfig."""

from __future__ import annotations

import typing
from collections.abc import Callable
from dataclasses import Field
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from train.config import TrainConfig, config_fields


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


def _click_type(f: Field, base: type) -> Any:
    """The click type of a TrainConfig field, from its type and metadata."""
    meta = f.metadata
    if meta["choices"]:
        return click.Choice(list(meta["choices"]))
    bounded = meta["min"] is not None or meta["max"] is not None
    if base is int:
        return click.IntRange(min=meta["min"], max=meta["max"]) if bounded else int
    if base is float:
        if not bounded:
            return float
        return click.FloatRange(min=meta["min"], max=meta["max"], max_open=meta["max_open"])
    if base is Path:
        kind = meta["path_kind"]
        return click.Path(path_type=Path, file_okay=kind != "dir", dir_okay=kind != "file")
    return str


def _base_type(annotation: Any) -> type:
    """int for `int | None`, Path for `Path | None`, ..."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args else annotation


def option_for(f: Field, annotation: Any) -> Callable:
    """The click option of one TrainConfig field (everything from the field itself)."""
    meta = f.metadata
    name = OPTION_NAMES.get(f.name, f.name)
    flag = "--" + name.replace("_", "-")
    if f.name in OPTION_NAMES:
        return click.option(flag, name, multiple=True, metavar="KEY=VALUE", help=meta["help"])
    base = _base_type(annotation)
    if base is bool:
        if meta["negatable"]:
            negated = f"{flag}/--no-{flag[2:]}"
            return click.option(negated, default=f.default, show_default=True, help=meta["help"])
        return click.option(flag, is_flag=True, help=meta["help"])
    return click.option(
        flag,
        type=_click_type(f, base),
        default=f.default,
        show_default=f.default is not None,
        help=meta["help"],
    )


def _cli_fields() -> list[tuple[Field, Any]]:
    hints = typing.get_type_hints(TrainConfig)
    return [(f, hints[f.name]) for f in config_fields() if f.metadata["cli"]]


# The training options, by TrainConfig field name, in the field order.
TRAIN_OPTIONS_BY_FIELD: dict[str, Callable] = {
    f.name: option_for(f, annotation) for f, annotation in _cli_fields()
}
TRAIN_OPTIONS: list[Callable] = list(TRAIN_OPTIONS_BY_FIELD.values())
# Parameter names a plain --help only names (pipeline/help_format.py).
SECONDARY_TRAIN_PARAMS = {
    OPTION_NAMES.get(f.name, f.name) for f, _ in _cli_fields() if not f.metadata["essential"]
}


def train_options(func: Callable) -> Callable:
    for option in reversed(TRAIN_OPTIONS):
        func = option(func)
    return func


def config_from_options(out: Path, options: dict[str, Any]) -> TrainConfig:
    """Every training option lands in the config (a test checks each one)."""
    values: dict[str, Any] = {}
    for f, _ in _cli_fields():
        value = options[OPTION_NAMES.get(f.name, f.name)]
        values[f.name] = parse_loss_options(value) if f.name == "loss_options" else value
    return TrainConfig(out=out, **values)


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
