"""Every training option given on the command line reaches TrainConfig (no silently dropped flag)."""

from pathlib import Path

import click
from click.testing import CliRunner

import pipeline.training
import train.resume
from pipeline.cli import cli
from train.config import TrainConfig

# A non-default value for every training option, and the config field + value it must produce.
NON_DEFAULTS = {
    "--data": ("some/data", "data", Path("some/data")),
    "--loss": ("focal", "loss", "focal"),
    "--loss-opt": ("gamma=1.5", "loss_options", {"gamma": "1.5"}),
    "--reg-loss": ("giou", "reg_loss", "giou"),
    "--backbone": ("resnet34", "backbone", "resnet34"),
    "--pretrained": ("w.pth", "pretrained", Path("w.pth")),
    "--init-from": ("other/best.pt", "init_from", Path("other/best.pt")),
    "--train-ann": ("a/train.json", "train_ann", Path("a/train.json")),
    "--train-images": ("a/imgs", "train_images", Path("a/imgs")),
    "--val-ann": ("a/val.json", "val_ann", Path("a/val.json")),
    "--val-images": ("a/vimgs", "val_images", Path("a/vimgs")),
    "--val-fraction": ("0.2", "val_fraction", 0.2),
    "--epochs": ("3", "epochs", 3),
    "--batch-size": ("5", "batch_size", 5),
    "--img-size": ("320", "img_size", 320),
    "--recipe": ("paper", "recipe", "paper"),
    "--lr": ("0.5", "lr", 0.5),
    "--optimizer": ("sgd", "optimizer", "sgd"),
    "--weight-decay": ("0.125", "weight_decay", 0.125),
    "--warmup-iters": ("7", "warmup_iters", 7),
    "--grad-clip": ("2.5", "grad_clip", 2.5),
    "--device": ("cpu", "device", "cpu"),
    "--no-amp": (None, "amp", False),
    "--seed": ("11", "seed", 11),
    "--workers": ("0", "workers", 0),
    "--threads": ("1", "threads", 1),
    "--max-steps": ("9", "max_steps", 9),
    "--max-val-images": ("13", "max_val_images", 13),
    "--fpn-channels": ("48", "fpn_channels", 48),
    "--head-convs": ("3", "head_convs", 3),
    "--overwrite": (None, "overwrite", True),
    "--strict": (None, "strict", True),
    "--nproc-per-node": ("2", "nproc_per_node", 2),
    "--resume": ("runs/old", "resume", Path("runs/old")),
    "--freeze-bn": (None, "freeze_bn", True),
    "--ema-decay": ("0.75", "ema_decay", 0.75),
    "--cache-images": (None, "cache_images", True),
    "--compile": (None, "compile", True),
    "--keep-state": (None, "keep_state", True),
    "--detector": ("faster-rcnn", "detector", "faster-rcnn"),
}


def _train_option_flags() -> set[str]:
    command = cli.commands["train"]
    flags = set()
    for param in command.params:
        if isinstance(param, click.Option) and param.name not in ("out", "help_all"):
            flags.update(f for f in param.opts + param.secondary_opts if f.startswith("--"))
    return flags


def test_every_train_option_is_covered_here():
    covered = set(NON_DEFAULTS) | {"--amp"}
    assert _train_option_flags() == covered


def test_every_train_option_reaches_the_config(monkeypatch):
    captured: list[TrainConfig] = []

    class Result:
        best_ap, best_path, last_path = 0.0, Path("b.pt"), Path("l.pt")

    monkeypatch.setattr(pipeline.training, "run_training", lambda c: captured.append(c) or Result())
    given: list[set[str]] = []  # with --resume, the fields the user set are checked against the run
    monkeypatch.setattr(train.resume, "refuse_changed_options", lambda c, g: given.append(set(g)))
    args = ["train", "--out", "runs/x"]
    for flag, (value, _, _) in NON_DEFAULTS.items():
        args += [flag] if value is None else [flag, value]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = captured[0]
    assert config.out == Path("runs/x")
    for flag, (_, field, expected) in NON_DEFAULTS.items():
        assert getattr(config, field) == expected, flag
    assert given == [{"out"} | {field for _, field, _ in NON_DEFAULTS.values()}]


def test_bad_loss_option_syntax_is_a_usage_error():
    result = CliRunner().invoke(cli, ["train", "--loss-opt", "gamma"])
    assert result.exit_code == 2
    assert "key=value" in result.output
