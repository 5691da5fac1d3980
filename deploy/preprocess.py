"""Image loading and batching for deployed models (the letterbox itself: common/image.py, the
one implementation training uses too)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deploy.errors import DeployError

logger = logging.getLogger(__name__)


def load_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, so a truncated file fails here with its name.

    EXIF orientation is deliberately not applied: COCO boxes refer to the stored pixel grid.
    """
    path = Path(path)
    if not path.is_file():
        raise DeployError(f"{path}: image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DeployError(f"{path}: cannot read image ({exc})") from exc


def to_batch(images_hwc: list[np.ndarray]) -> np.ndarray:
    """List of letterboxed HWC uint8 images -> float32 (B, 3, S, S), raw 0..255, C-contiguous."""
    if not images_hwc:
        raise ValueError("to_batch needs at least one image")
    shapes = {image.shape for image in images_hwc}
    if len(shapes) != 1:
        raise ValueError(f"to_batch needs images of one shape, got {sorted(shapes)}")
    stacked = np.stack(images_hwc).transpose(0, 3, 1, 2)
    return np.ascontiguousarray(stacked, dtype=np.float32)
