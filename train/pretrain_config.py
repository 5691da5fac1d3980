"""The options of `pipeline pretrain` (train/pretrain.py runs them), each described once: the CLI
generates its options from these fields. Torch-free, so the CLI can import it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from common.settings import device_setting, setting
from train.config import BACKBONE_NAMES


@dataclass(frozen=True, kw_only=True)
class PretrainConfig:
    """None `data` is the built-in synthetic dataset (the CLI generates it when missing); `device`
    auto or cuda is resolved to this machine's device when the config is made."""

    data: Path | None = setting(
        None,
        "Dataset (COCO, Pascal VOC or YOLO folder) whose train split is cropped (default: the "
        "built-in one).",
    )
    out: Path = setting(
        Path("runs/pretrain/backbone.pth"),
        "Weights file to write (never overwritten); give it to --pretrained.",
    )
    backbone: str = setting(
        "resnet18",
        "The backbone to pretrain (train with the same --backbone).",
        choices=BACKBONE_NAMES,
    )
    crop_size: int = setting(
        64, "Side in pixels each object or background crop is resized to.", min=32
    )
    backgrounds_per_image: int = setting(
        2, "Background crops (overlapping no object) taken from each image.", min=0
    )
    epochs: int = setting(10, "Passes over the crops.", min=1)
    batch_size: int = setting(64, "Crops per optimizer step.", min=1)
    lr: float = setting(2e-3, "AdamW learning rate (cosine decay).", min=0, min_open=True)
    weight_decay: float = setting(1e-4, "AdamW weight decay.", cli=False)
    seed: int = setting(0, "Seed of the classifier's head, crop order and background boxes.")
    device: str = device_setting("Where the backbone trains (auto: CUDA when available, else CPU).")

    def __post_init__(self) -> None:
        if self.device in ("auto", "cuda"):  # "cuda" -> "cuda:0", or an error without a GPU
            from train.distributed import resolve_device  # torch: about to train anyway

            object.__setattr__(self, "device", str(resolve_device(self.device)))
