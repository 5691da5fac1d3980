"""Letterboxing and flips shared by training and (re-implemented without torch) deployment.

`letterbox` is the one preprocessing contract: deploy/preprocess.py re-implements the same steps
for the torch-free runtime, so training, export parity and deployed mAP see identical pixels.
Content is pasted at the TOP-LEFT, so a box maps to the canvas by multiplying with `scale` alone.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; 16-bit and 32-bit integer values are clipped to 0..65535 >> 8.

    Alpha is dropped (not composited); palette images go through their palette.
    """
    if image.mode == "RGB":
        return image
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64)
        gray = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if image.mode == "F":
        gray = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    return image.convert("RGB")


def letterbox_size(width: int, height: int, size: int) -> tuple[int, int, float]:
    """(content width, content height, scale) of a width x height image letterboxed to `size`."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def letterbox(image: Image.Image, size: int, pad_value: int = 114) -> tuple[np.ndarray, float]:
    """Resize the longer side to `size` (PIL bilinear) and pad right/bottom with `pad_value`.

    Returns the (size, size, 3) uint8 HWC canvas and the scale (canvas px per original px).
    """
    rgb = to_rgb(image)
    new_w, new_h, scale = letterbox_size(rgb.width, rgb.height, size)
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    resized = rgb.resize((new_w, new_h), Image.BILINEAR)
    canvas[:new_h, :new_w] = np.asarray(resized)
    return canvas, scale


def hflip_boxes(boxes: torch.Tensor, width: float) -> torch.Tensor:
    """Mirror (K, 4) xyxy boxes inside a region [0, width): x -> width - x."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def hflip_content(image: torch.Tensor, content_width: int) -> torch.Tensor:
    """Mirror the letterboxed content (columns [0, content_width)) of a (C, S, S) image.

    Flipping the whole canvas would move the right-hand padding to the left and break the
    top-left convention, so only the content region is mirrored.
    """
    flipped = image.clone()
    flipped[:, :, :content_width] = image[:, :, :content_width].flip(-1)
    return flipped
