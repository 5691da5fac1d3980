"""Boxes with labels drawn onto images, readable on a 64-pixel thumbnail and on a 4K photo.

Line width and font size grow with the image's longer side; each class keeps one colour (by its
index in the model's or dataset's category list); a label sits on a filled tag above its box
(inside the box when there is no room above), in black or white, whichever reads on the tag.
Crowd regions are drawn dashed, so they never pass for an ordinary box. A thin dark rail runs
along both sides of each band, so a red box still shows on a red object.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from deploy.detector import Detection

Colour = tuple[int, int, int]
RAIL: Colour = (16, 16, 16)  # the thin dark line on both sides of every box's coloured band

# Distinct, saturated colours (Kelly's and Tableau's), none grey, so boxes stand out on photos.
PALETTE: tuple[Colour, ...] = (
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (255, 255, 255),
)


def class_colour(class_index: int) -> Colour:
    """The colour of the class at `class_index` in a category list (the palette repeats)."""
    return PALETTE[class_index % len(PALETTE)]


@dataclass(frozen=True)
class DrawStyle:
    """Line width and label font size in pixels."""

    line_width: int
    font_size: int


def style_for(size: tuple[int, int]) -> DrawStyle:
    """A style that scales with the image's longer side: 2 px lines and 11 px text up to ~350 px,
    about 12 px and 60 px on a 1920-pixel photo."""
    longer = max(size)
    return DrawStyle(line_width=max(2, round(longer / 160)), font_size=max(11, round(longer / 32)))


@dataclass(frozen=True)
class LabelledBox:
    """A box to draw: xyxy in the target image's pixels, its tag text and colour."""

    xyxy: tuple[float, float, float, float]
    label: str
    colour: Colour
    dashed: bool = False


def draw_boxes(
    image: Image.Image, boxes: Sequence[LabelledBox], style: DrawStyle | None = None
) -> Image.Image:
    """An RGB copy of `image` with `boxes` drawn (outlines first, tags on top); the input is left
    untouched. `style` defaults to `style_for(image.size)`."""
    canvas = image.convert("RGB") if image.mode != "RGB" else image.copy()
    style = style or style_for(canvas.size)
    draw = ImageDraw.Draw(canvas)
    for box in boxes:
        _draw_outline(draw, _pixel_rect(box.xyxy, canvas.size), box.colour, style, box.dashed)
    font = label_font(style.font_size)
    for box in boxes:
        rect = _pixel_rect(box.xyxy, canvas.size)
        _draw_tag(draw, rect, canvas.width, box.label, box.colour, font, style)
    return canvas


def detection_boxes(
    detections: Sequence[Detection], category_ids: Sequence[int]
) -> list[LabelledBox]:
    """Detections as boxes labelled "name 0.87", coloured by their category's index."""
    index_of = {category_id: index for index, category_id in enumerate(category_ids)}
    boxes = []
    for det in detections:
        x, y, w, h = det.bbox
        colour = class_colour(index_of.get(det.category_id, len(index_of)))
        boxes.append(
            LabelledBox((x, y, x + w, y + h), f"{det.category_name} {det.score:.2f}", colour)
        )
    return boxes


def draw_detections(
    image: Image.Image, detections: Sequence[Detection], category_ids: Sequence[int]
) -> Image.Image:
    """A copy of `image` with `detections` drawn; `category_ids` fixes each class's colour.

    Drawn lowest score first, so where tags overlap the best detection's stays readable."""
    by_score = sorted(detections, key=lambda det: det.score)
    return draw_boxes(image, detection_boxes(by_score, category_ids))


def _pixel_rect(xyxy: Sequence[float], size: tuple[int, int]) -> tuple[int, int, int, int]:
    """Continuous xyxy -> the inclusive pixel rectangle on the box's border pixels, in the image."""
    width, height = size
    x1, y1, x2, y2 = xyxy
    left = min(max(round(x1), 0), width - 1)
    top = min(max(round(y1), 0), height - 1)
    right = min(max(round(x2) - 1, left), width - 1)
    bottom = min(max(round(y2) - 1, top), height - 1)
    return left, top, right, bottom


def _draw_outline(
    draw: ImageDraw.ImageDraw,
    rect: tuple[int, int, int, int],
    colour: Colour,
    style: DrawStyle,
    dashed: bool,
) -> None:
    """A band `line_width` wide on the box's border pixels, inward, between two 1-px dark rails
    (one outside, one inside), so a box stays visible on an object of its own colour."""
    left, top, right, bottom = rect
    width = style.line_width
    draw.rectangle((left - 1, top - 1, right + 1, bottom + 1), outline=RAIL)
    if right - left > 2 * width and bottom - top > 2 * width:
        draw.rectangle((left + width, top + width, right - width, bottom - width), outline=RAIL)
    if not dashed:
        draw.rectangle(rect, outline=colour, width=width)
        return
    inset = width - 1
    dash = max(4, 3 * width)
    for y in (top, bottom - inset):
        for x in range(left, right + 1, 2 * dash):
            draw.rectangle((x, y, min(x + dash - 1, right), y + inset), fill=colour)
    for x in (left, right - inset):
        for y in range(top, bottom + 1, 2 * dash):
            draw.rectangle((x, y, x + inset, min(y + dash - 1, bottom)), fill=colour)


def _draw_tag(
    draw: ImageDraw.ImageDraw,
    rect: tuple[int, int, int, int],
    image_width: int,
    label: str,
    colour: Colour,
    font: ImageFont.ImageFont | ImageFont.FreeTypeFont,
    style: DrawStyle,
) -> None:
    """The label on a filled tag: above the box if it fits, else just inside its top edge."""
    if not label:
        return
    text_left, text_top, text_right, text_bottom = draw.textbbox((0, 0), label, font=font)
    pad = max(1, style.font_size // 6)
    tag_w = text_right - text_left + 2 * pad
    tag_h = text_bottom - text_top + 2 * pad
    left, top = rect[0], rect[1]
    tag_top = top - tag_h if top - tag_h >= 0 else top
    tag_left = max(0, min(left, image_width - tag_w))
    draw.rectangle((tag_left, tag_top, tag_left + tag_w - 1, tag_top + tag_h - 1), fill=colour)
    ink = (0, 0, 0) if _luma(colour) > 140 else (255, 255, 255)
    draw.text((tag_left + pad - text_left, tag_top + pad - text_top), label, fill=ink, font=font)


def _luma(colour: Colour) -> float:
    red, green, blue = colour
    return 0.299 * red + 0.587 * green + 0.114 * blue


@lru_cache(maxsize=16)
def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font at `size` (its fixed-size bitmap font where FreeType is missing)."""
    return ImageFont.load_default(size=size)
