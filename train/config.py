"""Typed training configuration, filled from CLI options and stored in every checkpoint.

Each field describes itself once, in its metadata (`setting(...)`): the help text, the allowed
choices or range, whether it is a command-line option at all, and whether it may change when a
run is resumed (`runtime`: how to run, not what to train). pipeline/options.py builds the click
options from this, and resume and compare read `runtime` from here.
"""

from __future__ import annotations

from dataclasses import Field, asdict, dataclass, fields
from pathlib import Path
from typing import Any

from common.settings import DEVICES, setting
from train.losses.names import DETECTORS, LOSS_NAMES, REG_LOSS_NAMES
from train.recipe import RECIPE_NAMES

# The backbones train/model/backbone.py builds (a test keeps the two equal), named here so the
# command line can list them without importing torch.
BACKBONE_NAMES = ("resnet18", "resnet34", "resnet50", "mobilenet_v3_large")
OPTIMIZERS = ("adamw", "sgd")


@dataclass
class TrainConfig:
    out: Path = setting(help="The run's folder.", cli=False)
    data: Path | None = setting(
        None,
        "Dataset folder: COCO (2017 or built-in layout), Pascal VOC or YOLO. Default: the "
        "built-in synthetic set.",
        essential=True,
    )
    loss: str = setting(
        "focal", "Classification/sampling loss; options and defaults: `pipeline losses`.",
        choices=LOSS_NAMES, essential=True,
    )  # fmt: skip
    detector: str = setting(
        "retinanet",
        "One or two stages (faster-rcnn: --loss random, ohem or pisa).",
        choices=DETECTORS,
        essential=True,
    )
    loss_options: dict[str, Any] = setting(
        help="Set a loss option, repeatable (e.g. --loss-opt gamma=1.5).",
        factory=dict,
        essential=True,
    )
    reg_loss: str | None = setting(
        None, "Box regression loss (default: the loss's own).", choices=REG_LOSS_NAMES
    )
    backbone: str = setting("resnet18", "Backbone network.", choices=BACKBONE_NAMES, essential=True)
    pretrained: Path | None = setting(
        None,
        "Backbone weights: a local file (`pipeline pretrain`'s), or imagenet (torchvision's, "
        "from the torch hub cache; downloaded once if missing).",
        path_kind="file",
        essential=True,
    )
    init_from: Path | None = setting(
        None,
        "Fine-tune: start the whole detector from this run's checkpoint (another class "
        "count starts the classifier's last layer fresh).",
        path_kind="file",
        essential=True,
    )
    # Any COCO layout: explicit split files instead of (or beside) --data (train/data/splits.py).
    train_ann: Path | None = setting(
        None,
        "COCO annotation json of the training split (any layout; with --train-images).",
        path_kind="file",
    )
    train_images: Path | None = setting(
        None, "Folder the training json's file_names are relative to.", path_kind="dir"
    )
    val_ann: Path | None = setting(
        None,
        "COCO annotation json of the validation split (with --val-images).",
        path_kind="file",
    )
    val_images: Path | None = setting(
        None, "Folder the validation json's file_names are relative to.", path_kind="dir"
    )
    val_fraction: float = setting(
        0.0,
        "Carve this fraction of the training images out as the val split (the same images "
        "whatever --seed; written to RUN/splits/). Without a val split and without this, "
        "validation is off.",
        min=0.0,
        max=1.0,
        max_open=True,
    )
    img_size: int = setting(
        192, "Square input size in pixels (letterboxed).", min=32, essential=True
    )
    epochs: int = setting(12, "Passes over the training set.", min=1, essential=True)
    batch_size: int = setting(
        16, "Images per optimizer step, over all processes.", min=1, essential=True
    )
    recipe: str = setting(
        "ours",
        "Default optimizer, lr, schedule and clipping: ours (AdamW 2e-3, cosine) or paper (the "
        "papers' SGD 0.01 per 16 images, steps at 8/12 and 11/12; docs/losses-and-formulas.md).",
        choices=RECIPE_NAMES,
    )
    lr: float | None = setting(
        None,
        "Peak learning rate (default: the recipe's: ours 0.002, paper 0.01 x batch / 16).",
        essential=True,
    )
    optimizer: str | None = setting(
        None, "Optimizer (default: the recipe's: ours adamw, paper sgd).", choices=OPTIMIZERS
    )
    weight_decay: float | None = setting(
        None,
        "Weight decay, not on norms and biases (default: the recipe's: ours 0.05, paper 1e-4).",
        min=0.0,
    )
    warmup_iters: int | None = setting(
        None,
        "Linear learning-rate warm-up, in optimizer steps (default: the recipe's: ours 100 "
        "from 0.1 x lr, paper 500 from 0.001 x lr).",
        min=0,
    )
    grad_clip: float | None = setting(
        None,
        "Max gradient norm; 0 disables (default: the loss's own (ghm, pisa: 35), else 35 under "
        "recipe ours and none under paper).",
        min=0.0,
    )
    device: str = setting(
        "auto",
        "auto: CUDA when available, else CPU.",
        choices=DEVICES,
        runtime=True,
        essential=True,
    )
    amp: bool = setting(True, "bf16 autocast on CPU, fp16 AMP on CUDA.", negatable=True)
    seed: int = setting(0, "Seed of weights, data order and augmentation.", essential=True)
    workers: int = setting(1, "Data-loading processes per training process.", min=0, runtime=True)
    threads: int | None = setting(
        None,
        "CPU threads each training process computes with (default: torch's choice, every core; "
        "two jobs sharing a machine run many times faster with half each).",
        min=1,
        runtime=True,
    )
    max_steps: int | None = setting(None, "Stop after this many optimizer steps.", min=1)
    val_every: int = setting(1, "Validate every N epochs (and after the last).", cli=False)
    max_val_images: int | None = setting(
        None, "Validate on the first N images of the val split only.", min=1
    )
    fpn_channels: int = setting(128, "Channels of the FPN and the heads.", min=8)
    head_convs: int = setting(2, "3x3 convolutions in each head tower.", min=0)
    overwrite: bool = setting(False, "Replace an existing run in --out.", essential=True)
    max_bad_steps: int = setting(20, "Stop after this many non-finite steps in a row.", cli=False)
    strict: bool = setting(
        False, "Unreadable or missing images and dropped boxes are errors instead of warnings."
    )
    # Scale-out and speed (train/distributed.py, train/resume.py, train/step.py).
    nproc_per_node: int = setting(
        1,
        "DDP processes (one per GPU; gloo on CPU); --batch-size is global. Several "
        "machines: torchrun (README).",
        min=1,
        runtime=True,
        essential=True,
    )
    resume: Path | None = setting(
        None,
        "Continue the run in this folder from its last.pt, exactly (its stored options are "
        "used; --device, --workers, --threads, --nproc-per-node, --cache-images, --compile may "
        "change; any other option given with a different value is an error).",
        path_kind="dir",
        essential=True,
    )
    freeze_bn: bool = setting(
        False,
        "Keep BatchNorm in eval mode with frozen affine (usual with --pretrained; makes N "
        "processes equal one on CPU, where SyncBatchNorm is unavailable).",
    )
    ema_decay: float = setting(
        0.0,
        "Validate and ship an EMA of the weights with this decay (0: off; e.g. 0.9998).",
        min=0.0,
        max=1.0,
        max_open=True,
    )
    keep_state: bool = setting(
        False,
        "Keep the training state (optimizer moments, schedule, RNG) in last.pt after the last "
        "epoch; without it a finished run's last.pt holds its weights only (a third of the "
        "size with AdamW). While a run trains, last.pt always holds it, for --resume.",
        runtime=True,
    )
    cache_images: bool = setting(
        False, "Decode the training images once into memory (small datasets).", runtime=True
    )
    compile: bool = setting(False, "torch.compile the model (slow first steps).", runtime=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the checkpoint stays loadable with weights_only=True."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


def config_fields() -> list[Field]:
    return list(fields(TrainConfig))


# How to run, not what to train: on resume (and between a comparison's runs) these may differ.
RUNTIME_FIELDS = tuple(f.name for f in config_fields() if f.metadata["runtime"])
