"""The model file's input contract: how an image becomes the pixels every model sees.

Training, export's parity and calibration images, and every deployed runtime letterbox through
these functions (torch-free), so a model is never scored on pixels prepared differently from
those it trained on. Content is pasted at the TOP-LEFT, so a box maps onto the canvas by
multiplying with `scale` alone.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

# What the model's input tensor holds, recorded in every model file ("input_format").
INPUT_FORMAT = "rgb-0-255-letterbox-topleft"
PAD_VALUE = 114  # grey of the letterbox padding, recorded in every model file ("pad_value")
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB.

    16-bit modes ("I;16*", and "I", which is how PIL may open 16-bit PNGs) are clipped to
    0..65535 and scaled with >> 8 (exact for values 257 * k; PIL's own convert would clip them to
    255); float "F" images are clipped to 0..255. Palette images go through RGBA (the same colours
    as a direct convert, without PIL's palette-transparency warning). Alpha is dropped, not
    composited.
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
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    return image.convert("RGB")


def letterbox_size(width: int, height: int, size: int) -> tuple[int, int, float]:
    """(content width, content height, scale) of a width x height image letterboxed to `size`."""
    scale = size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale)), scale


def letterbox(
    image: Image.Image, size: int, pad_value: int = PAD_VALUE
) -> tuple[np.ndarray, float]:
    """Resize the longer side to `size` (PIL bilinear), paste top-left on a size x size canvas
    filled with `pad_value`.

    Returns (HWC uint8 (size, size, 3), scale) where letterboxed = original * scale, so boxes go
    back to original pixels by dividing by scale (no offset).
    """
    rgb = to_rgb(image)
    new_w, new_h, scale = letterbox_size(rgb.width, rgb.height, size)
    canvas = np.full((size, size, 3), pad_value, dtype=np.uint8)
    resized = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas[:new_h, :new_w] = np.asarray(resized, dtype=np.uint8)
    return canvas, scale
