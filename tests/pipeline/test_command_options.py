"""Every option of export, eval, predict, pretrain, data synth/show/convert and analyze is a field
of its command's option dataclass, every command-line field of that dataclass is an option, and a
value given on the command line reaches its field in what the command runs with.

(train, run and compare: tests/pipeline/test_train_options_reach_config.py and tests/pipeline/test_train_options_help.py.)
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import MISSING, dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import cli

Leaf = tuple[tuple[str, ...], dataclasses.Field, Any]  # (path from the root, field, annotation)


@dataclass(frozen=True)
class Case:
    """One way to run a command: the function it ends in, and how that function's arguments
    name the fields of the command's option dataclass (its root)."""

    command: tuple[str, ...]
    target: str  # module:function, replaced by a recorder
    root: Callable[[dict[str, Any]], dict[str, Any]] = lambda args: args
    left_out: frozenset[str] = frozenset()  # options this case does not give


class Called(Exception):
    """Raised by the recorder in place of the command's function: nothing runs past it."""


def _renamed(**names: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda args: {names.get(k, k): v for k, v in args.items()}


def _fields_of(config: Any) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


CASES = [
    Case(("export",), "pipeline.exporting:run_export"),
    Case(("eval",), "pipeline.evaluation:run_eval", lambda args: {**args, "compare_to": None},
         frozenset({"compare_to"})),
    Case(("eval",), "pipeline.evaluation:run_compare_to",
         _renamed(model_a="model_path", model_b="compare_to"), frozenset({"results"})),
    Case(("predict",), "pipeline.predicting:run_predict",
         lambda args: {**_renamed(out_dir="out")(args), "sources": tuple(args["sources"])}),
    Case(("pretrain",), "train.pretrain:run_pretrain", lambda args: _fields_of(args["config"])),
    Case(("data", "synth"), "pipeline.data_synth:run_data_synth"),
    Case(("data", "show"), "pipeline.data_show:run_data_show"),
    Case(("data", "convert"), "pipeline.data_convert:run_data_convert"),
    Case(("analyze",), "pipeline.analysis.analyze:run_analyze"),
]  # fmt: skip
COMMANDS = sorted({case.command for case in CASES})


def _command(path: tuple[str, ...]) -> click.Command:
    command: Any = cli
    for name in path:
        command = command.commands[name]
    return command


def _leaves(cls: type, path: tuple[str, ...] = ()) -> list[Leaf]:
    """Every field of the dataclass tree under `cls` (nested option dataclasses opened)."""
    hints = typing.get_type_hints(cls)
    found: list[Leaf] = []
    for f in dataclasses.fields(cls):
        assert "cli" in f.metadata, f"{cls.__name__}.{f.name}: not made with setting()"
        if f.metadata["nested"]:
            found += _leaves(_base(hints[f.name]), (*path, f.name))
        else:
            found.append(((*path, f.name), f, hints[f.name]))
    return found


def _cli_leaves(path: tuple[str, ...]) -> list[Leaf]:
    """The command-line fields of a command's option dataclass (every field is checked to be a
    setting on the way)."""
    return [leaf for leaf in _leaves(_command(path).options_class) if leaf[1].metadata["cli"]]


def _base(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if args and typing.get_origin(annotation) is not tuple else annotation


def _given(f: dataclasses.Field, annotation: Any, tmp_path: Path) -> tuple[list[str], Any]:
    """Command-line words giving `f` a value other than its default, and the value it must be."""
    meta, base = f.metadata, _base(annotation)
    flag = (meta["flags"] or ("--" + f.name.replace("_", "-"),))[0]
    if meta["argument"]:
        return ["a.png", "b/*.jpg"], ("a.png", "b/*.jpg")
    if base is bool:
        return ([f"--no-{flag[2:]}"], False) if meta["negatable"] else ([flag], True)
    if meta["choices"]:
        value = next(c for c in meta["choices"] if c != f.default)
    elif base is Path:
        value = tmp_path / f"given-{f.name}"
        return [flag, str(value)], value
    elif base is int:
        value = (meta["min"] or 0) + 2
        value += value == f.default
    elif base is float:
        low = meta["min"] or 0
        value = (low + meta["max"]) / 2 if meta["max"] is not None else low + 2.5
        value = value / 2 if value == f.default else value
    else:
        value = "given"
    return [flag, str(value)], value


def _at(root: dict[str, Any], path: tuple[str, ...]) -> Any:
    value = root[path[0]]
    for name in path[1:]:
        value = getattr(value, name)
    return value


def _run(case: Case, words: list[str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Invoke the command with `words`; the root values its function was called with."""
    module_name, name = case.target.split(":")
    module = importlib.import_module(module_name)
    signature = inspect.signature(getattr(module, name))
    calls: list[dict[str, Any]] = []

    def record(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        calls.append(dict(bound.arguments))
        raise Called

    monkeypatch.setattr(module, name, record)
    result = CliRunner().invoke(cli, [*case.command, *words])
    assert isinstance(result.exception, Called), result.output
    assert len(calls) == 1, case.target
    return case.root(calls[0])


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_is_a_field_and_every_cli_field_an_option(path: tuple[str, ...]) -> None:
    command = _command(path)
    params = {param.name for param in command.params}
    cli_fields = {leaf[0][-1] for leaf in _cli_leaves(path)}
    assert params == cli_fields
    for param in command.params:  # the help a user reads is the field's
        if isinstance(param, click.Option):
            f = next(f for p, f, _ in _cli_leaves(path) if p[-1] == param.name)
            assert param.help == f.metadata["help"] and param.help, param.name


# The only settings of these commands that are not options (the CLI has no use for them).
NOT_OPTIONS = {("eval", "options", "split_files"), ("pretrain", "weight_decay")}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_no_setting_is_left_off_the_command_line(path: tuple[str, ...]) -> None:
    leaves = _leaves(_command(path).options_class)
    off = {(*path, *leaf_path) for leaf_path, f, _ in leaves if not f.metadata["cli"]}
    assert off == {name for name in NOT_OPTIONS if name[: len(path)] == path}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_every_option_given_reaches_its_field(
    path: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: set[tuple[str, ...]] = set()
    for case in (case for case in CASES if case.command == path):
        leaves = [leaf for leaf in _cli_leaves(path) if leaf[0][-1] not in case.left_out]
        words, expected = [], {}
        for leaf_path, f, annotation in leaves:
            given, value = _given(f, annotation, tmp_path)
            words += given
            expected[leaf_path] = value
        root = _run(case, words, monkeypatch)
        for leaf_path, value in expected.items():
            assert _at(root, leaf_path) == value, (case.target, leaf_path)
        checked |= set(expected)
        monkeypatch.undo()
    assert checked == {leaf[0] for leaf in _cli_leaves(path)}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_omitted_options_take_the_field_defaults(
    path: tuple[str, ...], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default a user gets is the one the dataclass states (written once)."""
    import train.distributed

    monkeypatch.setattr(train.distributed, "resolve_device", lambda name: name)  # pretrain's auto
    case = next(case for case in CASES if case.command == path)
    words, given = [], set()
    for leaf_path, f, annotation in _cli_leaves(path):
        if f.default is MISSING or (path == ("pretrain",) and f.name == "data"):  # no generation
            words += _given(f, annotation, tmp_path)[0]
            given.add(leaf_path)
    root = _run(case, words, monkeypatch)
    for leaf_path, f, _ in _cli_leaves(path):
        if leaf_path not in given:
            assert _at(root, leaf_path) == f.default, leaf_path


def test_export_precisions_come_from_the_engine_table() -> None:
    from common.engines import EXPORT_PRECISIONS

    precision = next(p for p in _command(("export",)).params if p.name == "precision")
    assert tuple(precision.type.choices) == EXPORT_PRECISIONS


# Written out by hand: what each command cannot run without.
REQUIRED = {
    ("export",): {"--model"},
    ("eval",): {"--model"},
    ("predict",): {"--model", "--out"},
    ("data", "convert"): {"--from", "--data", "--out"},
    ("data", "synth"): {"--out"},
    ("analyze",): {"--model"},
}


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_exactly_the_settings_without_a_default_are_required(path: tuple[str, ...]) -> None:
    command = _command(path)
    required = {p.opts[0] for p in command.params if isinstance(p, click.Option) and p.required}
    assert required == REQUIRED.get(path, set())
    if required:  # left out: a usage error naming one of them, before anything runs
        result = CliRunner().invoke(cli, [*path, *(["a.png"] if path == ("predict",) else [])])
        assert result.exit_code == 2 and "Missing option" in result.output
