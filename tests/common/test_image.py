"""common/image.py: mode conversion edge cases, the letterbox of degenerate shapes, the contract."""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image

from common.image import letterbox, to_rgb


def test_rgb_input_is_returned_as_is_without_a_copy() -> None:
    image = Image.new("RGB", (3, 2), (1, 2, 3))
    assert to_rgb(image) is image


def test_32_bit_integer_mode_is_scaled_by_256_and_clipped() -> None:
    """Mode "I" (how PIL may open 16-bit PNGs) takes the >> 8 path, not PIL's clip-at-255 convert;
    out-of-range values of a 32-bit image clip to [0, 255] instead of wrapping around."""
    values = np.array([[0, 257 * 100, 511, 65535, 70000, -300]], dtype=np.int32)
    image = Image.fromarray(values)
    assert image.mode == "I"
    rgb = to_rgb(image)
    assert rgb.mode == "RGB"
    # 25700 >> 8 = 100, 511 >> 8 = 1, 65535 >> 8 = 255, 70000 >> 8 = 273 -> 255, -300 -> 0
    assert np.asarray(rgb)[0, :, 0].tolist() == [0, 100, 1, 255, 255, 0]
    assert (np.asarray(rgb)[0] == np.asarray(rgb)[0, :, :1]).all()  # gray: R = G = B


def test_palette_with_alpha_bytes_converts_silently_to_palette_colours() -> None:
    """PIL warns when a "P" image whose transparency is per-entry alpha bytes goes straight to RGB;
    to_rgb goes via RGBA, so no warning, and the alpha is dropped (colours as in the palette)."""
    image = Image.new("P", (4, 2), 0)
    image.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    image.putpixel((3, 1), 1)
    image.info["transparency"] = bytes([0, 128])  # entry 0 fully transparent, entry 1 half
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rgb = to_rgb(image)
    pixels = np.asarray(rgb)
    assert rgb.mode == "RGB" and pixels.shape == (2, 4, 3)
    assert pixels[0, 0].tolist() == [10, 20, 30] and pixels[1, 3].tolist() == [200, 100, 50]


def test_one_pixel_wide_image_keeps_one_column() -> None:
    """1 x 1000 at size 64: scale 0.064, width 0.064 rounds to 0 but is kept at 1 column."""
    canvas, scale = letterbox(Image.new("RGB", (1, 1000), (9, 8, 7)), 64)
    assert scale == 0.064
    assert (canvas[:, 0] == [9, 8, 7]).all()
    assert (canvas[:, 1:] == 114).all()


def test_the_input_format_and_pad_value_are_those_model_files_carry() -> None:
    """Every exported model records these two values and eval refuses a model whose input format
    differs: changing either silently orphans every model already exported."""
    from common.image import INPUT_FORMAT, PAD_VALUE

    assert (INPUT_FORMAT, PAD_VALUE) == ("rgb-0-255-letterbox-topleft", 114)
