"""A loss-neutral pretrained backbone: the backbone trained as a crop classifier, no detection loss.

The papers start every detector from an ImageNet-pretrained backbone; nothing may be downloaded
here, and a backbone pretrained *with* one of the compared detection losses would favour it. So
the backbone learns to classify crops of the training split: each ground-truth object (with a
little context) is labelled with its category, and random boxes that overlap no object are
labelled "background". Softmax cross-entropy over C + 1 classes; the classifier head is thrown
away and the backbone's weights are written in torchvision's key layout, which `--pretrained`
loads. Every compared loss then starts from the same weights.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from common.datasets.layout import resolve_split
from common.errors import InputError
from common.files import replace_atomically
from common.image import to_rgb
from train.data.coco import MIN_BOX_SIDE, load_coco_json
from train.model.backbone import Backbone
from train.model.retinanet import IMAGENET_MEAN, IMAGENET_STD
from train.pretrain_config import PretrainConfig

log = logging.getLogger(__name__)

CONTEXT = 0.1  # each side of an object crop grows by this fraction of the box's size
MAX_BACKGROUND_IOU = 0.1  # a background crop overlaps every object less than this


@dataclass(frozen=True)
class Crops:
    """uint8 crops (N, S, S, 3) and labels (N,): category index, or `num_categories` = background."""

    images: np.ndarray
    labels: np.ndarray
    num_categories: int


def iou_with_boxes(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xyxy box with each of (K, 4) xyxy boxes."""
    if len(boxes) == 0:
        return np.zeros(0)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2])
    areas = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / (area + areas - inter)


def context_box(bbox: list[float], width: int, height: int) -> tuple[int, int, int, int] | None:
    """COCO [x, y, w, h] grown by CONTEXT per side, clipped, in whole pixels; None if degenerate."""
    x, y, w, h = (float(v) for v in bbox)
    if not (w >= MIN_BOX_SIDE and h >= MIN_BOX_SIDE):
        return None
    x0 = max(0, math.floor(x - CONTEXT * w))
    y0 = max(0, math.floor(y - CONTEXT * h))
    x1 = min(width, math.ceil(x + w + CONTEXT * w))
    y1 = min(height, math.ceil(y + h + CONTEXT * h))
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def background_boxes(
    objects: np.ndarray, width: int, height: int, count: int, rng: np.random.Generator
) -> list[tuple[int, int, int, int]]:
    """Up to `count` random boxes, sized like the image's objects, overlapping none of them."""
    if len(objects):
        sides = np.sqrt(np.prod(objects[:, 2:] - objects[:, :2], axis=1))
        low, high = float(sides.min()), float(sides.max())
    else:
        low, high = 0.1 * min(width, height), 0.4 * min(width, height)
    found: list[tuple[int, int, int, int]] = []
    for _ in range(20 * count):
        if len(found) == count:
            break
        side = min(rng.uniform(low, high), width - 1, height - 1)
        if side < 4:
            break
        w = side * math.exp(rng.uniform(-0.4, 0.4))
        h = side * side / w
        w, h = min(w, width - 1), min(h, height - 1)
        x0, y0 = int(rng.uniform(0, width - w)), int(rng.uniform(0, height - h))
        box = (x0, y0, min(width, x0 + math.ceil(w)), min(height, y0 + math.ceil(h)))
        if (iou_with_boxes(np.array(box, dtype=np.float64), objects) < MAX_BACKGROUND_IOU).all():
            found.append(box)
    return found


def collect_crops(
    data: Path, split: str, crop_size: int, backgrounds_per_image: int, seed: int
) -> Crops:
    """Every non-crowd object of the split and random background boxes, resized to crop_size."""
    ann_file, img_dir = resolve_split(data, split)
    coco = load_coco_json(ann_file)
    category_ids = sorted(c["id"] for c in coco["categories"])
    index_of = {cid: i for i, cid in enumerate(category_ids)}
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    rng = np.random.default_rng(seed)
    images: list[np.ndarray] = []
    labels: list[int] = []
    for info in sorted(coco["images"], key=lambda i: i["id"]):
        path = img_dir / info["file_name"]
        try:
            with Image.open(path) as opened:
                image = to_rgb(opened)
                image.load()  # decoded before the file closes
        except (OSError, ValueError):
            log.warning("%s: unreadable image left out of the crops", path)
            continue
        width, height = image.size
        anns = by_image.get(info["id"], [])
        objects = np.array(
            [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
             for a in anns],
            dtype=np.float64,
        ).reshape(-1, 4)  # fmt: skip
        for ann in anns:
            box = None if ann.get("iscrowd") else context_box(ann["bbox"], width, height)
            if box is not None and ann["category_id"] in index_of:
                images.append(_resized(image, box, crop_size))
                labels.append(index_of[ann["category_id"]])
        for box in background_boxes(objects, width, height, backgrounds_per_image, rng):
            images.append(_resized(image, box, crop_size))
            labels.append(len(category_ids))
    if not any(label < len(category_ids) for label in labels):
        raise InputError(f"{ann_file}: no object could be cropped (no readable annotated image)")
    stacked = np.stack(images).astype(np.uint8)
    return Crops(stacked, np.asarray(labels, dtype=np.int64), len(category_ids))


def _resized(image: Image.Image, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    return np.asarray(image.crop(box).resize((size, size), Image.BILINEAR))


class CropClassifier(nn.Module):
    """The detector's backbone, its last feature map pooled, and a linear classifier."""

    def __init__(self, backbone: str, num_classes: int) -> None:
        super().__init__()
        self.backbone = Backbone(backbone)
        self.classifier = nn.Linear(self.backbone.out_channels[-1], num_classes)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) raw RGB 0..255, normalized as the detector does -> logits (B, classes)."""
        features = self.backbone((images - self.mean) / self.std)[-1]
        return self.classifier(features.mean(dim=(2, 3)))


def _as_batch(crops: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(crops).to(device).permute(0, 3, 1, 2).float()


def accuracy(model: CropClassifier, crops: Crops, device: torch.device, batch: int = 256) -> float:
    """Share of crops whose arg-max class is their label."""
    model.eval()
    right = 0
    with torch.no_grad():
        for start in range(0, len(crops.labels), batch):
            logits = model(_as_batch(crops.images[start : start + batch], device))
            truth = torch.from_numpy(crops.labels[start : start + batch]).to(device)
            right += int((logits.argmax(1) == truth).sum())
    return right / len(crops.labels)


def train_classifier(
    config: PretrainConfig,
    train: Crops,
    val: Crops | None,
    after_epoch: Callable[[CropClassifier, list[dict[str, float]]], None] | None = None,
) -> tuple[CropClassifier, list[dict[str, float]]]:
    """AdamW with a one-cycle schedule, horizontal flips; per epoch: loss and val accuracy,
    then `after_epoch(model, history)`."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    device = torch.device(config.device)
    model = CropClassifier(config.backbone, train.num_categories + 1).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train.labels) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.1
    )
    history = []
    for epoch in range(config.epochs):
        model.train()
        started, total, seen = time.perf_counter(), 0.0, 0
        order = rng.permutation(len(train.labels))
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            images = _as_batch(train.images[index], device)
            flip = torch.from_numpy(rng.random(len(index)) < 0.5).to(device)
            images = torch.where(flip.view(-1, 1, 1, 1), images.flip(3), images)
            labels = torch.from_numpy(train.labels[index]).to(device)
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
            seen += len(index)
        record = {
            "epoch": epoch + 1,
            "loss": total / seen,
            "seconds": time.perf_counter() - started,
        }
        if val is not None:
            record["val_accuracy"] = accuracy(model, val, device)
        log.info("pretrain epoch %d/%d: %s", epoch + 1, config.epochs, record)
        history.append(record)
        if after_epoch is not None:
            after_epoch(model, history)
    return model, history


def backbone_state_dict(model: CropClassifier) -> dict[str, torch.Tensor]:
    """The backbone's tensors under torchvision's own key names (what --pretrained reads)."""
    body = model.backbone.body
    prefix = "features." if all(k[:1].isdigit() for k in body.state_dict()) else ""
    return {prefix + k: v.detach().cpu().clone() for k, v in body.state_dict().items()}


def run_pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Crops, training, and the weights file; returns what was written and measured."""
    if config.out.exists():
        raise InputError(f"{config.out}: already exists; choose another --out or delete it")
    train = collect_crops(
        config.data, "train", config.crop_size, config.backgrounds_per_image, config.seed
    )
    try:
        val = collect_crops(
            config.data, "val", config.crop_size, config.backgrounds_per_image, config.seed + 1
        )
    except InputError as exc:
        log.warning("no validation crops (%s): accuracy is not measured", exc)
        val = None
    log.info(
        "pretrain: %d training crops (%d background), %d classes + background",
        len(train.labels),
        int((train.labels == train.num_categories).sum()),
        train.num_categories,
    )
    summary: dict[str, Any] = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()},
        "train_crops": len(train.labels),
        "val_crops": 0 if val is None else len(val.labels),
    }

    def write(model: CropClassifier, history: list[dict[str, float]]) -> None:
        """After every epoch: an interrupted pretraining keeps its last finished epoch."""
        summary["history"] = list(history)
        payload = {"state_dict": backbone_state_dict(model), "pretrain": summary}
        replace_atomically(config.out, lambda handle: torch.save(payload, handle))

    train_classifier(config, train, val, after_epoch=write)
    return summary
