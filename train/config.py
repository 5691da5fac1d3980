"""Typed training configuration, filled from CLI options and stored in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    out: Path
    data: Path | None = None  # None: the built-in synthetic dataset
    loss: str = "focal"
    loss_options: dict[str, Any] = field(default_factory=dict)
    reg_loss: str | None = None  # None: the loss's own default
    backbone: str = "resnet18"
    pretrained: Path | None = None
    init_from: Path | None = None  # a checkpoint whose whole detector the run starts from
    # Any COCO layout: explicit split files instead of (or beside) --data (train/data/splits.py).
    train_ann: Path | None = None
    train_images: Path | None = None
    val_ann: Path | None = None
    val_images: Path | None = None
    val_fraction: float = 0.0  # > 0: carve a val split out of train (same images every run)
    img_size: int = 192
    epochs: int = 12
    batch_size: int = 16
    lr: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    warmup_iters: int = 100
    grad_clip: float | None = None  # None: the loss's recommendation, else 35
    device: str = "auto"
    amp: bool = True
    seed: int = 0
    workers: int = 1
    max_steps: int | None = None  # stop early (tests, smoke runs)
    val_every: int = 1
    max_val_images: int | None = None
    fpn_channels: int = 128
    head_convs: int = 2
    overwrite: bool = False
    max_bad_steps: int = 20
    strict: bool = False  # unreadable images and dropped boxes are errors, not warnings
    # Scale-out and speed (train/distributed.py, train/resume.py, train/step.py).
    nproc_per_node: int = 1  # > 1: `pipeline train` launches that many DDP processes
    resume: Path | None = None  # a run folder whose last.pt to continue exactly
    freeze_bn: bool = False  # BatchNorm in eval mode, affine frozen
    ema_decay: float = 0.0  # 0: no EMA of the weights
    cache_images: bool = False  # decode the training images once, into memory
    compile: bool = False  # torch.compile the model's forward

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so the checkpoint stays loadable with weights_only=True."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}
