"""What a user sees of the training options: --help shows each default and range, out-of-range
values are usage errors, boundary values are accepted, and omitted options take the documented
defaults. Numbers are the ones the README/--help promise, written here by hand."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

import pipeline.training
from pipeline.cli import cli
from pipeline.options import format_loss_listing, parse_loss_options
from train.config import TrainConfig

# option -> the bracket `pipeline train --help` ends its help with.
HELP_BRACKETS = {
    "--loss": "[default: focal]",
    "--backbone": "[default: resnet18]",
    "--epochs": "[default: 12; x>=1]",
    "--batch-size": "[default: 16; x>=1]",
    "--img-size": "[default: 192; x>=32]",
    "--recipe": "[default: ours]",
    "--lr": "(default: the recipe's: ours 0.002, paper 0.01 x batch / 16).",
    "--optimizer": "(default: the recipe's: ours adamw, paper sgd).",
    "--weight-decay": "[x>=0.0]",
    "--grad-clip": "[x>=0.0]",
    "--warmup-iters": "[x>=0]",
    "--device": "[default: auto]",
    "--amp": "[default: amp]",
    "--seed": "[default: 0]",
    "--workers": "[default: 1; x>=0]",
    "--max-steps": "[x>=1]",
    "--max-val-images": "[x>=1]",
    "--fpn-channels": "[default: 128; x>=8]",
    "--head-convs": "[default: 2; x>=0]",
    "--nproc-per-node": "[default: 1; x>=1]",
    "--ema-decay": "[default: 0.0; 0.0<=x<1.0]",
}


def _help_by_option(output: str) -> dict[str, str]:
    """`--help` text -> {first long flag: its help text}, continuation lines joined."""
    entries: dict[str, str] = {}
    current = None
    for line in output.splitlines():
        match = re.match(r"^  (--[\w-]+)", line)
        if match:
            current = match.group(1)
            entries[current] = line
        elif current is not None and line.startswith("    "):
            entries[current] += " " + line.strip()
    return {flag: " ".join(text.split()) for flag, text in entries.items()}


def test_train_help_all_shows_every_default_and_range() -> None:
    result = CliRunner().invoke(
        cli, ["train", "--help-all"], terminal_width=1000, max_content_width=1000
    )
    assert result.exit_code == 0, result.output
    helps = _help_by_option(result.output)
    for flag, bracket in HELP_BRACKETS.items():
        assert helps[flag].endswith(bracket), (flag, helps[flag])
    loss_help = helps["--loss"]
    names = "ce|balanced-ce|focal|focal-star|ghm|pisa|pisa-center|random|ohem"
    assert loss_help.startswith(f"--loss [{names}] ")
    assert "`pipeline losses`" in loss_help
    assert helps["--backbone"].startswith(
        "--backbone [resnet18|resnet34|resnet50|mobilenet_v3_large]"
    )


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[TrainConfig]:
    """Configs `pipeline train` would train with (training itself replaced)."""
    configs: list[TrainConfig] = []

    class Finished:
        best_ap, best_path, last_path = 0.0, Path("b.pt"), Path("l.pt")

    def fake_run_training(config: TrainConfig) -> Finished:
        configs.append(config)
        return Finished()

    monkeypatch.setattr(pipeline.training, "run_training", fake_run_training)
    return configs


def _train(*args: str) -> Result:
    return CliRunner().invoke(cli, ["train", "--out", "runs/x", *args])


def test_omitted_options_take_the_documented_defaults(captured: list[TrainConfig]) -> None:
    result = _train()
    assert result.exit_code == 0, result.output
    (config,) = captured
    expected = {
        "out": Path("runs/x"),
        "data": None,
        "loss": "focal",
        "loss_options": {},
        "reg_loss": None,
        "backbone": "resnet18",
        "pretrained": None,
        "img_size": 192,
        "epochs": 12,
        "batch_size": 16,
        "recipe": "ours",
        "lr": None,  # the recipe's (test_recipe.py)
        "optimizer": None,
        "weight_decay": None,
        "warmup_iters": None,
        "grad_clip": None,
        "device": "auto",
        "amp": True,
        "seed": 0,
        "workers": 1,
        "max_steps": None,
        "max_val_images": None,
        "fpn_channels": 128,
        "head_convs": 2,
        "overwrite": False,
        "strict": False,
        "nproc_per_node": 1,
        "resume": None,
        "freeze_bn": False,
        "ema_decay": 0.0,
        "cache_images": False,
        "compile": False,
    }
    assert {field: getattr(config, field) for field in expected} == expected


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--epochs", "0"),
        ("--batch-size", "0"),
        ("--img-size", "31"),
        ("--warmup-iters", "-1"),
        ("--workers", "-1"),
        ("--max-steps", "0"),
        ("--max-val-images", "0"),
        ("--fpn-channels", "7"),
        ("--head-convs", "-1"),
        ("--nproc-per-node", "0"),
        ("--ema-decay", "1.0"),
        ("--ema-decay", "-0.1"),
    ],
)
def test_value_just_outside_the_range_is_a_usage_error(
    flag: str, value: str, captured: list[TrainConfig]
) -> None:
    result = _train(flag, value)
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{flag}'" in result.output
    assert captured == []


def test_values_on_the_range_edges_are_accepted(captured: list[TrainConfig]) -> None:
    edges = {
        "--epochs": ("1", "epochs", 1),
        "--batch-size": ("1", "batch_size", 1),
        "--img-size": ("32", "img_size", 32),
        "--warmup-iters": ("0", "warmup_iters", 0),
        "--max-steps": ("1", "max_steps", 1),
        "--max-val-images": ("1", "max_val_images", 1),
        "--fpn-channels": ("8", "fpn_channels", 8),
        "--head-convs": ("0", "head_convs", 0),
        "--ema-decay": ("0", "ema_decay", 0.0),
    }
    args = [part for flag, (value, _, _) in edges.items() for part in (flag, value)]
    result = _train(*args)
    assert result.exit_code == 0, result.output
    (config,) = captured
    for flag, (_, field, expected) in edges.items():
        assert getattr(config, field) == expected, flag


def test_pretrained_must_be_a_file_and_resume_a_folder(
    tmp_path: Path, captured: list[TrainConfig]
) -> None:
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"")
    result = _train("--pretrained", str(tmp_path))
    assert result.exit_code == 2
    assert "Invalid value for '--pretrained'" in result.output
    assert "is a directory" in result.output
    result = _train("--resume", str(weights))
    assert result.exit_code == 2
    assert "Invalid value for '--resume'" in result.output
    assert "is a file" in result.output
    assert captured == []


def test_repeated_loss_opt_keeps_every_pair(captured: list[TrainConfig]) -> None:
    result = _train("--loss-opt", "gamma=1.5", "--loss-opt", "alpha=0.5")
    assert result.exit_code == 0, result.output
    assert captured[0].loss_options == {"gamma": "1.5", "alpha": "0.5"}


def test_loss_opt_pairs_are_trimmed_and_split_at_the_first_equals() -> None:
    parsed = parse_loss_options((" gamma = 1.5 ", "expr=a=b", "empty="))
    assert parsed == {"gamma": "1.5", "expr": "a=b", "empty": ""}


@pytest.mark.parametrize("pair", ["gamma", "=1.5", "  =1.5"])
def test_loss_opt_without_a_key_is_refused(pair: str) -> None:
    with pytest.raises(click.BadParameter, match="expected key=value") as raised:
        parse_loss_options(("gamma=2", pair))
    assert raised.value.param_hint == "--loss-opt"


def test_loss_listing_shows_summary_clip_options_defaults_and_choices() -> None:
    described = [
        {
            "name": "focal",
            "summary": "Focal loss",
            "grad_clip": None,
            "options": [
                {"name": "gamma", "default": 2.0, "choices": None, "help": "focusing"},
                {"name": "mode", "default": "a", "choices": ["a", "b"], "help": "which"},
            ],
        },
        {"name": "ghm", "summary": "GHM-C", "grad_clip": 35.0, "options": []},
    ]
    assert format_loss_listing(described) == (
        "focal: Focal loss\n"
        "    gamma=2.0  focusing\n"
        "    mode=a [a|b]  which\n"
        "ghm: GHM-C (grad clip 35)"
    )


def test_the_listed_backbones_are_the_ones_the_model_builds() -> None:
    from train.config import BACKBONE_NAMES
    from train.model.backbone import BACKBONES

    assert tuple(BACKBONES) == BACKBONE_NAMES


def test_runtime_fields_are_the_ones_resume_and_compare_let_differ() -> None:
    """Described once (the field's metadata): how to run, not what to train."""
    from pipeline.study.compare import NOT_COMPARED
    from train.config import RUNTIME_FIELDS
    from train.resume import _runtime_flags as runtime_flags

    assert set(RUNTIME_FIELDS) == {
        "device", "workers", "threads", "nproc_per_node", "keep_state", "cache_images", "compile"
    }  # fmt: skip
    assert set(RUNTIME_FIELDS) <= set(NOT_COMPARED)
    assert runtime_flags() == ["--device", "--workers", "--threads", "--nproc-per-node",
                               "--keep-state", "--cache-images", "--compile"]  # fmt: skip


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    found = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found += _commands(command, f"{prefix}{name} ")
        else:
            found.append((prefix + name, command))
    return found


def test_every_option_of_every_command_says_what_it_does() -> None:
    missing = [
        f"{name} {param.opts[0]}"
        for name, command in _commands(cli)
        for param in command.params
        if isinstance(param, click.Option) and not (param.help or "").strip()
    ]
    assert missing == []


def test_the_same_thing_has_the_same_name_in_every_command() -> None:
    """The model file is --model everywhere (--weights still accepted); a batch is
    --batch-size everywhere (export's --batch still accepted)."""
    flags = {name: {o for p in cmd.params for o in p.opts} for name, cmd in _commands(cli)}
    for name in ("export", "eval", "predict", "analyze"):
        assert {"--model", "--weights"} <= flags[name], name
    for name, found in flags.items():
        if "--batch" in found:
            assert "--batch-size" in found, name


@pytest.mark.parametrize("command", ["train", "run", "compare"])
def test_help_explains_the_everyday_options_and_names_every_other(command: str) -> None:
    """A plain --help fits a screen or two; --help-all explains every option."""
    from pipeline.options import SECONDARY_TRAIN_PARAMS

    short = CliRunner().invoke(cli, [command, "--help"]).output
    full = CliRunner().invoke(cli, [command, "--help-all"]).output
    assert len(short.splitlines()) < 80 < len(full.splitlines())
    options, more = short.split("More options (--help-all explains each):")
    explained_short, explained_full = _help_by_option(options), _help_by_option(full)
    for flag in ("--data", "--loss-opt", "--epochs", "--seed"):
        assert flag in explained_short, flag
    named = [word.rstrip(",") for word in more.split()]
    for name in SECONDARY_TRAIN_PARAMS:
        flag = "--" + name.replace("_", "-")
        assert flag not in explained_short and flag in named, flag
        assert flag in explained_full, flag
    if command == "train":  # each loss's --loss-opt keys, with --help-all only
        assert "Loss options (--loss-opt KEY=VALUE)" in full
        assert "Loss options" not in short
