"""Image loading and the letterbox every deployed model expects ("rgb-0-255-letterbox-topleft").

train/data/transforms.py implements the same letterbox; a test compares the two, because a model
scored with a slightly different resize or pad than it was trained with loses AP for no reason
visible in the model.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from deploy.errors import DeployError

logger = logging.getLogger(__name__)

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB.

    16-bit modes ("I;16*", and "I", which is how PIL may open 16-bit PNGs) are scaled with >> 8
    (exact for values 257 * k); PIL's own convert would clip them to 255 instead. Alpha is
    dropped, not composited, matching the training transform.
    """
    if image.mode == "RGB":
        return image
    if image.mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(image).astype(np.int64)
        gray = np.clip(wide >> 8, 0, 255).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if image.mode in ("P", "PA"):
        # Via RGBA: same colours as a direct convert, without PIL's palette-transparency warning.
        image = image.convert("RGBA")
    return image.convert("RGB")


def letterbox(image: Image.Image, size: int, pad_value: int = 114) -> tuple[np.ndarray, float]:
    """Resize the longer side to `size` (bilinear), paste top-left on a size x size canvas.

    Returns (HWC uint8 (size, size, 3), scale) where letterboxed = original * scale, so boxes go
    back to original pixels by dividing by scale (top-left placement: no offset).
    """
    rgb = to_rgb(image)
    width, height = rgb.size
    scale = size / max(width, height)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = rgb.resize(new_size, Image.Resampling.BILINEAR)
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    canvas[: new_size[1], : new_size[0]] = np.asarray(resized, dtype=np.uint8)
    return canvas, scale


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
