"""The training loop: data, model, loss, optimizer, schedule, autocast, checkpoints, history.

Validation is injected as a callable (the pipeline passes deploy's evaluator wrapped around a
PyTorch predictor), so training-time mAP and deployed-model mAP come from the same code.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from train.assign import assign_anchors
from train.checkpoint import checkpoint_payload, save_atomic, write_text_atomic
from train.config import TrainConfig
from train.data.coco import CocoDetection
from train.data.layout import resolve_split
from train.data.synthetic import ensure_synthetic_dataset
from train.data.unreadable import SkipUnreadable, UnreadableImage, collate_skipping
from train.errors import InputError, NonFiniteLossError
from train.losses import LOSSES, build_loss, resolve_options
from train.model.anchors import default_anchor_scale
from train.model.detector import ModelConfig, RetinaDetector

log = logging.getLogger(__name__)
Validator = Callable[[RetinaDetector, int], dict[str, float]]
DEFAULT_GRAD_CLIP = 35.0


@dataclass
class TrainResult:
    out: Path
    best_path: Path
    last_path: Path
    history: list[dict] = field(default_factory=list)
    best_ap: float = float("nan")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available on this machine")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def data_root(config: TrainConfig) -> Path:
    return Path(config.data) if config.data is not None else ensure_synthetic_dataset()


def build_datasets(config: TrainConfig) -> tuple[CocoDetection, CocoDetection]:
    root = data_root(config)
    train_ann, train_dir = resolve_split(root, "train")
    val_ann, val_dir = resolve_split(root, "val")
    strict = config.strict
    train_set = CocoDetection(train_ann, train_dir, config.img_size, train=True, strict=strict)
    val_set = CocoDetection(
        val_ann, val_dir, config.img_size, category_ids=train_set.category_ids, strict=strict
    )
    return train_set, val_set


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """No weight decay on norms and biases (1-D parameters), as usual for detectors."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=0.9)
    raise InputError(f"--optimizer {config.optimizer!r}: expected adamw or sgd")


def warmup_cosine(
    total_steps: int, warmup: int, final_ratio: float = 0.02
) -> Callable[[int], float]:
    """LR multiplier: linear warm-up from 0.1, then cosine decay to `final_ratio`."""
    warmup = max(1, min(warmup, total_steps // 2))

    def factor(step: int) -> float:
        if step < warmup:
            return 0.1 + 0.9 * step / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def prepare_output(out: Path, overwrite: bool) -> None:
    """Refuse to clobber an earlier run unless asked; fail early if the folder is unwritable."""
    existing = [p for p in (out / "best.pt", out / "last.pt") if p.exists()]
    if existing and not overwrite:
        raise InputError(
            f"{out}: already holds a trained run ({existing[0].name}); pass --overwrite"
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


class Trainer:
    """One training run. Build with a config, call `fit()`."""

    def __init__(self, config: TrainConfig, validate: Validator | None = None) -> None:
        self.config = config
        self.validate = validate
        self.device = resolve_device(config.device)
        self.generator = seed_everything(config.seed)
        self.train_set, self.val_set = build_datasets(config)
        self.loss_options = resolve_options(config.loss, self._loss_option_overrides())
        self.loss_fn = build_loss(config.loss, self.loss_options)
        model_config = ModelConfig(
            num_classes=len(self.train_set.category_ids),
            img_size=config.img_size,
            backbone=config.backbone,
            fpn_channels=config.fpn_channels,
            head_convs=config.head_convs,
            anchor_scale=default_anchor_scale(config.img_size),
        )
        self.model = RetinaDetector(model_config, config.pretrained).to(self.device)
        self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, config)
        self.grad_clip = self._grad_clip()
        self._step, self._bad_in_a_row = 0, 0
        self._unreadable: set[int] = set()  # dataset indices already warned about

    def _loss_option_overrides(self) -> dict:
        options = dict(self.config.loss_options)
        if self.config.reg_loss is not None:
            options["reg_loss"] = self.config.reg_loss
        return options

    def _grad_clip(self) -> float | None:
        if self.config.grad_clip is not None:
            return self.config.grad_clip if self.config.grad_clip > 0 else None
        return getattr(LOSSES[self.config.loss], "grad_clip", None) or DEFAULT_GRAD_CLIP

    def _loader(self) -> DataLoader:
        return DataLoader(
            SkipUnreadable(self.train_set),
            batch_size=self.config.batch_size,
            shuffle=True,
            drop_last=len(self.train_set) > self.config.batch_size,
            num_workers=self.config.workers,
            collate_fn=collate_skipping,
            generator=self.generator,
            persistent_workers=self.config.workers > 0,
            pin_memory=self.device.type == "cuda",
        )

    def _autocast(self) -> torch.autocast:
        dtype = torch.bfloat16 if self.device.type == "cpu" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype, enabled=self.config.amp)

    def step(self, images: torch.Tensor, targets: list[dict]) -> dict[str, float] | None:
        """One optimizer step; returns the loss parts, or None when the step was skipped."""
        images = images.to(self.device, non_blocking=True).float()
        images = images.contiguous(memory_format=torch.channels_last)
        boxes = [t["boxes"].to(self.device) for t in targets]
        labels = [t["labels"].to(self.device) for t in targets]
        crowd = [t["crowd_boxes"].to(self.device) for t in targets]
        assignment = assign_anchors(self.model.anchors, boxes, labels, crowd)
        with self._autocast():
            cls_logits, box_deltas = self.model(images)
        parts = self.loss_fn(cls_logits.float(), box_deltas.float(), assignment)
        total = sum(parts.values())
        if not torch.isfinite(total):
            bad = [k for k, v in parts.items() if not torch.isfinite(v)]
            log.warning("non-finite loss in %s; step skipped", ", ".join(bad))
            self.optimizer.zero_grad(set_to_none=True)
            return None
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if self.grad_clip:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
            if not torch.isfinite(norm):
                log.warning("non-finite gradient norm; step skipped")
                self.optimizer.zero_grad(set_to_none=True)
                return None
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in parts.items()}

    def _save(self, path: Path, epoch: int, metrics: dict, history: list[dict]) -> None:
        extra = {
            "epoch": epoch,
            "metrics": metrics,
            "train_config": self.config.to_dict(),
            "history": history,
        }
        payload = checkpoint_payload(
            self.model,
            self.train_set.class_names,
            self.train_set.category_ids,
            self.config.loss,
            self.loss_options,
            extra,
        )
        save_atomic(payload, path)

    def fit(self) -> TrainResult:
        config = self.config
        out = Path(config.out)
        prepare_output(out, config.overwrite)
        loader = self._loader()
        total_steps = max(1, len(loader)) * config.epochs
        if config.max_steps is not None:
            total_steps = min(total_steps, config.max_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(total_steps, config.warmup_iters)
        )
        result = TrainResult(out, out / "best.pt", out / "last.pt")
        self._step, self._bad_in_a_row, best_ap = 0, 0, -1.0
        for epoch in range(1, config.epochs + 1):
            record = self._train_epoch(loader, scheduler, epoch, total_steps)
            last_epoch = epoch == config.epochs or self._step >= total_steps
            if self.validate is not None and (epoch % config.val_every == 0 or last_epoch):
                self.model.eval()
                record.update(self.validate(self.model, epoch))
            result.history.append(record)
            log.info("epoch %d: %s", epoch, json.dumps(record))
            ap = record.get("AP", -1.0)
            if ap > best_ap or not result.best_path.exists():
                best_ap = max(ap, best_ap)
                self._save(result.best_path, epoch, record, result.history)
            self._save(result.last_path, epoch, record, result.history)
            write_text_atomic(out / "history.json", json.dumps(result.history, indent=2))
            if last_epoch:
                break
        result.best_ap = best_ap
        return result

    def _train_epoch(
        self,
        loader: DataLoader,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        epoch: int,
        total_steps: int,
    ) -> dict:
        """Train until the loader ends or `total_steps` is reached; returns the history record."""
        config = self.config
        self.model.train()
        sums: dict[str, float] = {}
        loaded, seen, skipped, started = 0, 0, 0, time.perf_counter()
        bar = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=None)
        for images, targets, unreadable in bar:
            skipped += self._skip_unreadable(unreadable)
            if images is None:
                continue
            loaded += len(images)
            parts = self.step(images, targets)
            if parts is None:
                self._count_bad_step()
                continue
            self._bad_in_a_row = 0
            scheduler.step()
            self._step += 1
            seen += len(images)
            for key, value in parts.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.set_postfix(
                loss=f"{sum(parts.values()):.3f}", lr=f"{scheduler.get_last_lr()[0]:.1e}"
            )
            if self._step >= total_steps:
                break
        self._check_readable(loaded, skipped, epoch)
        elapsed = time.perf_counter() - started
        return {
            "epoch": epoch,
            "step": self._step,
            "seconds": round(elapsed, 2),
            "images_per_second": round(seen / max(elapsed, 1e-9), 2),
            "skipped_images": skipped,
            **{f"loss_{k}": v / max(1, seen // config.batch_size) for k, v in sums.items()},
        }

    def _skip_unreadable(self, unreadable: list[UnreadableImage]) -> int:
        """Warn once per bad image (or, with --strict, stop); returns how many were skipped."""
        for item in unreadable:
            if self.config.strict:
                raise InputError(f"{item.reason} (--strict)")
            if item.index not in self._unreadable:
                self._unreadable.add(item.index)
                log.warning("%s; image skipped", item.reason)
        return len(unreadable)

    def _check_readable(self, loaded: int, skipped: int, epoch: int) -> None:
        if skipped and not loaded:
            raise InputError(
                f"{self.train_set.ann_file}: none of the {skipped} training images of epoch "
                f"{epoch} could be read"
            )
        if skipped:
            log.warning("epoch %d: skipped %d unreadable training images", epoch, skipped)

    def _count_bad_step(self) -> None:
        """After `max_bad_steps` non-finite steps in a row, stop without touching checkpoints."""
        self._bad_in_a_row += 1
        if self._bad_in_a_row < self.config.max_bad_steps:
            return
        out = Path(self.config.out)
        kept = [name for name in ("best.pt", "last.pt") if (out / name).exists()]
        where = f"last good {' and '.join(kept)} kept" if kept else "no checkpoint written yet"
        raise NonFiniteLossError(
            f"{out}: training stopped after {self._bad_in_a_row} consecutive non-finite losses "
            f"(lower --lr or check the data); {where}"
        )
