"""What a training run is built from: datasets, model, optimizer, schedule, output folder."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from common.errors import InputError
from train.config import TrainConfig
from train.data.cache import CachedCocoDetection
from train.data.coco import CocoDetection
from train.data.splits import training_splits
from train.fine_tune import init_from_checkpoint
from train.losses.registry import loss_spec, resolve_options
from train.model.anchors import default_anchor_scale
from train.model.detectors import detector_class
from train.model.retinanet import ModelConfig
from train.recipe import RECIPES, lr_factor, recipe_lr

log = logging.getLogger(__name__)
DEFAULT_GRAD_CLIP = 35.0


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def build_datasets(config: TrainConfig) -> tuple[CocoDetection, CocoDetection | None]:
    """Train (flip-augmented; decoded once into memory with --cache-images) and val sets (None:
    no val split, validation off)."""
    train, val = training_splits(config)
    strict = config.strict
    train_type = CachedCocoDetection if config.cache_images else CocoDetection
    train_set = train_type(train.ann, train.images, config.img_size, train=True, strict=strict)
    if isinstance(train_set, CachedCocoDetection):
        train_set.fill_cache(threads=max(1, config.workers))
    if val is None:
        return train_set, None
    val_set = CocoDetection(
        val.ann, val.images, config.img_size, category_ids=train_set.category_ids, strict=strict
    )
    return train_set, val_set


def build_model(
    config: TrainConfig,
    num_classes: int,
    device: torch.device,
    class_names: list[str] | None = None,
) -> nn.Module:
    """The detector on `device`, channels-last (faster convolutions on CPU and tensor cores);
    started from --init-from's detector when given (class_names: this run's, for its warnings)."""
    model_config = ModelConfig(
        detector=config.detector,
        num_classes=num_classes,
        img_size=config.img_size,
        backbone=config.backbone,
        fpn_channels=config.fpn_channels,
        head_convs=config.head_convs,
        anchor_scale=default_anchor_scale(config.img_size),
    )
    if config.init_from is not None and config.pretrained is not None:
        raise InputError(
            "--init-from loads the whole detector, backbone included: drop --pretrained"
        )
    model = detector_class(model_config)(model_config, config.pretrained)
    if config.init_from is not None:
        init_from_checkpoint(model, Path(config.init_from), class_names or [])
    return model.to(device).to(memory_format=torch.channels_last)


def build_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on norms and biases (1-D parameters), as usual for detectors.

    The fused implementations update all parameters in one kernel; on CPU AdamW's per-tensor
    loop took a third of a small model's step.
    """
    hyper = hyperparameters(config)
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": hyper.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if hyper.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=hyper.lr, fused=True)
    if hyper.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=hyper.lr, momentum=0.9, fused=True)
    raise InputError(f"--optimizer {hyper.optimizer!r}: expected adamw or sgd")


@dataclass(frozen=True)
class Hyperparameters:
    """The values a run trains with: the option where given, else its recipe's."""

    optimizer: str
    lr: float
    weight_decay: float
    warmup_iters: int


def hyperparameters(config: TrainConfig) -> Hyperparameters:
    recipe = RECIPES[config.recipe]
    return Hyperparameters(
        optimizer=config.optimizer if config.optimizer is not None else recipe.optimizer,
        lr=config.lr if config.lr is not None else recipe_lr(recipe, config.batch_size),
        weight_decay=(
            config.weight_decay if config.weight_decay is not None else recipe.weight_decay
        ),
        warmup_iters=(
            config.warmup_iters if config.warmup_iters is not None else recipe.warmup_iters
        ),
    )


def lr_schedule(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The run's LR multiplier per step: its recipe's warm-up and decay."""
    return lr_factor(RECIPES[config.recipe], total_steps, hyperparameters(config).warmup_iters)


def warmup_cosine(
    total_steps: int, warmup: int, final_ratio: float = 0.02
) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from 0.1 (none when `warmup` is 0), then cosine decay to
    `final_ratio` (recipe ours)."""
    return lr_factor(RECIPES["ours"], total_steps, warmup, final_ratio)


def resolved_loss_options(config: TrainConfig) -> dict[str, Any]:
    """Every option of the run's loss: defaults, then --loss-opt, then --reg-loss (parsed)."""
    options = dict(config.loss_options)
    if config.reg_loss is not None:
        options["reg_loss"] = config.reg_loss
        # GHM-R harmonizes ASL1 only: another --reg-loss under ghm runs unweighted.
        if config.loss == "ghm" and config.reg_loss != "asl1":
            options.setdefault("ghm_r", "false")
    return resolve_options(config.loss, options, config.detector)


def grad_clip_for(config: TrainConfig) -> float | None:
    """--grad-clip (0: off), else the loss's recommendation, else DEFAULT_GRAD_CLIP under a
    recipe that clips every loss (ours) and none under one that does not (paper)."""
    if config.grad_clip is not None:
        return config.grad_clip if config.grad_clip > 0 else None
    own = loss_spec(config.loss, config.detector).grad_clip
    if own:
        return own
    return DEFAULT_GRAD_CLIP if RECIPES[config.recipe].clip_every_loss else None


def per_rank_batch(batch_size: int, world_size: int) -> int:
    """--batch-size is the global batch; each of `world_size` ranks takes an equal share."""
    if batch_size % world_size:
        raise InputError(
            f"--batch-size {batch_size} is the global batch and must divide evenly over "
            f"{world_size} processes"
        )
    return batch_size // world_size


def prepare_output(out: Path, overwrite: bool, resuming: bool = False) -> None:
    """Refuse to clobber an earlier run unless asked; fail early if the folder is unwritable."""
    existing = [p for p in (out / "best.pt", out / "last.pt") if p.exists()]
    if existing and not (overwrite or resuming):
        raise InputError(
            f"{out}: already holds a trained run ({existing[0].name}); pass --overwrite "
            f"(or --resume {out} to continue it)"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise InputError(f"{out}: output folder is not writable ({exc.strerror})") from exc
    for name in ("best.pt", "last.pt"):  # temporaries of a save that was killed mid-write
        for stale in out.glob(f".{name}.*.tmp"):
            stale.unlink(missing_ok=True)
