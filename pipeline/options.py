"""Training options shared by `train`, `run` and `compare`, and their mapping to TrainConfig."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from train.config import TrainConfig
from train.loss_names import LOSS_NAMES, REG_LOSS_NAMES

DEFAULTS = TrainConfig(out=Path("runs/exp"))


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


def _loss_help() -> str:
    names = ", ".join(LOSS_NAMES)
    return f"Classification/sampling loss: {names}. Options and defaults: `pipeline losses`."


TRAIN_OPTIONS: list[Callable] = [
    click.option(
        "--data",
        type=click.Path(path_type=Path),
        default=None,
        help="COCO dataset folder (COCO 2017 or built-in layout). Default: built-in synthetic.",
    ),
    click.option(
        "--loss",
        type=click.Choice(list(LOSS_NAMES)),
        default=DEFAULTS.loss,
        show_default=True,
        help=_loss_help(),
    ),
    click.option(
        "--loss-opt",
        "loss_opt",
        multiple=True,
        metavar="KEY=VALUE",
        help="Set a loss option, repeatable (e.g. --loss-opt gamma=1.5).",
    ),
    click.option(
        "--reg-loss",
        type=click.Choice(list(REG_LOSS_NAMES)),
        default=None,
        help="Box regression loss (default: the loss's own).",
    ),
    click.option("--backbone", default=DEFAULTS.backbone, show_default=True),
    click.option(
        "--pretrained",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Backbone weights: a local file (e.g. from `pipeline pretrain`), or imagenet for "
        "torchvision's weights from the torch hub cache (downloaded once if missing).",
    ),
    click.option(
        "--train-ann",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="COCO annotation json of the training split (any layout; with --train-images).",
    ),
    click.option(
        "--train-images",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Folder the training json's file_names are relative to.",
    ),
    click.option(
        "--val-ann",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="COCO annotation json of the validation split (with --val-images).",
    ),
    click.option(
        "--val-images",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Folder the validation json's file_names are relative to.",
    ),
    click.option(
        "--val-fraction",
        type=click.FloatRange(min=0, max=1, max_open=True),
        default=0.0,
        help="Carve this fraction of the training images out as the val split (the same "
        "images whatever --seed; written to RUN/splits/). Without a val split and without this, "
        "validation is off.",
    ),
    click.option(
        "--init-from",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Fine-tune: start the whole detector from this checkpoint (best.pt or last.pt of "
        "another run; a different class count starts the classifier's last layer fresh).",
    ),
    click.option(
        "--epochs", type=click.IntRange(min=1), default=DEFAULTS.epochs, show_default=True
    ),
    click.option(
        "--batch-size", type=click.IntRange(min=1), default=DEFAULTS.batch_size, show_default=True
    ),
    click.option(
        "--img-size", type=click.IntRange(min=32), default=DEFAULTS.img_size, show_default=True
    ),
    click.option("--lr", type=float, default=DEFAULTS.lr, show_default=True),
    click.option(
        "--optimizer",
        type=click.Choice(["adamw", "sgd"]),
        default=DEFAULTS.optimizer,
        show_default=True,
    ),
    click.option("--weight-decay", type=float, default=DEFAULTS.weight_decay, show_default=True),
    click.option(
        "--warmup-iters",
        type=click.IntRange(min=0),
        default=DEFAULTS.warmup_iters,
        show_default=True,
    ),
    click.option(
        "--grad-clip",
        type=float,
        default=None,
        help="Max gradient norm; 0 disables (default: 35, or the loss's own).",
    ),
    click.option(
        "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True
    ),
    click.option(
        "--amp/--no-amp",
        default=True,
        show_default=True,
        help="bf16 autocast on CPU, fp16 AMP on CUDA.",
    ),
    click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True),
    click.option(
        "--workers", type=click.IntRange(min=0), default=DEFAULTS.workers, show_default=True
    ),
    click.option(
        "--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many steps."
    ),
    click.option("--max-val-images", type=click.IntRange(min=1), default=None),
    click.option(
        "--fpn-channels",
        type=click.IntRange(min=8),
        default=DEFAULTS.fpn_channels,
        show_default=True,
    ),
    click.option(
        "--head-convs", type=click.IntRange(min=0), default=DEFAULTS.head_convs, show_default=True
    ),
    click.option("--overwrite", is_flag=True, help="Replace an existing run in --out."),
    click.option(
        "--strict",
        is_flag=True,
        help="Unreadable or missing images and dropped boxes are errors instead of warnings.",
    ),
    click.option(
        "--nproc-per-node",
        type=click.IntRange(min=1),
        default=DEFAULTS.nproc_per_node,
        show_default=True,
        help="Train with this many DDP processes (one per GPU; gloo on CPU). --batch-size is "
        "the global batch. Several machines: torchrun (see README).",
    ),
    click.option(
        "--resume",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="Continue the run in this folder from its last.pt, exactly (its stored options "
        "are used; --device, --workers, --nproc-per-node, --cache-images, --compile may change; "
        "any other option given with a different value is an error).",
    ),
    click.option(
        "--freeze-bn",
        is_flag=True,
        help="Keep BatchNorm in eval mode with frozen affine (usual with --pretrained; makes N "
        "processes equal one on CPU, where SyncBatchNorm is unavailable).",
    ),
    click.option(
        "--ema-decay",
        type=click.FloatRange(0.0, 1.0, max_open=True),
        default=DEFAULTS.ema_decay,
        show_default=True,
        help="Validate and ship an EMA of the weights with this decay (0: off; e.g. 0.9998).",
    ),
    click.option(
        "--cache-images",
        is_flag=True,
        help="Decode the training images once into memory (small datasets).",
    ),
    click.option("--compile", is_flag=True, help="torch.compile the model (slow first steps)."),
]


def train_options(func: Callable) -> Callable:
    for option in reversed(TRAIN_OPTIONS):
        func = option(func)
    return func


def config_from_options(out: Path, options: dict[str, Any]) -> TrainConfig:
    """Every training option lands in the config (a test checks each one)."""
    return TrainConfig(
        out=out,
        data=options["data"],
        loss=options["loss"],
        loss_options=parse_loss_options(options["loss_opt"]),
        reg_loss=options["reg_loss"],
        backbone=options["backbone"],
        pretrained=options["pretrained"],
        init_from=options["init_from"],
        train_ann=options["train_ann"],
        train_images=options["train_images"],
        val_ann=options["val_ann"],
        val_images=options["val_images"],
        val_fraction=options["val_fraction"],
        img_size=options["img_size"],
        epochs=options["epochs"],
        batch_size=options["batch_size"],
        lr=options["lr"],
        optimizer=options["optimizer"],
        weight_decay=options["weight_decay"],
        warmup_iters=options["warmup_iters"],
        grad_clip=options["grad_clip"],
        device=options["device"],
        amp=options["amp"],
        seed=options["seed"],
        workers=options["workers"],
        max_steps=options["max_steps"],
        max_val_images=options["max_val_images"],
        fpn_channels=options["fpn_channels"],
        head_convs=options["head_convs"],
        overwrite=options["overwrite"],
        strict=options["strict"],
        nproc_per_node=options["nproc_per_node"],
        resume=options["resume"],
        freeze_bn=options["freeze_bn"],
        ema_decay=options["ema_decay"],
        cache_images=options["cache_images"],
        compile=options["compile"],
    )


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
