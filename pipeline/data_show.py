"""`pipeline data show`: a grid of dataset images with their ground truth, to check a dataset by
eye before training on it (wrong boxes, swapped categories, missing crowd flags show at once).

Each image is scaled to fit a square tile (small images are enlarged) and drawn with its boxes,
one colour per category (by its position in the dataset's category list, sorted by id), labelled
with the category name; crowd regions are dashed and labelled "crowd <name>". A caption under
each tile names the file and counts its boxes. Torch-free: deploy's COCO loader reads the json.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from common.datasets.layout import resolve_split
from deploy.draw import DrawStyle, LabelledBox, class_colour, draw_boxes, label_font
from deploy.errors import DeployError
from deploy.evaluate import image_path, load_coco
from deploy.preprocess import load_image
from pipeline.errors import PipelineError
from pipeline.outputs import check_output_file

logger = logging.getLogger(__name__)

TILE = 320  # px, the longer side of every image in the grid
GAP = 8  # px between tiles
CAPTION = 20  # px under each tile
TILE_STYLE = DrawStyle(line_width=3, font_size=13)
BACKGROUND = (32, 32, 32)
CAPTION_INK = (230, 230, 230)


@dataclass(frozen=True)
class Tile:
    """Where one image went (its top-left in the grid, grid pixels per original pixel) and the
    labels drawn on it, one per annotation in the json's order."""

    file_name: str
    origin: tuple[int, int]
    scale: float
    labels: tuple[str, ...]
    crowd_boxes: int

    @property
    def boxes(self) -> int:
        return len(self.labels)


@dataclass
class DataGrid:
    """The grid written to `path`, tile by tile, and the images that could not be read."""

    path: Path
    tiles: list[Tile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def line(self) -> str:
        boxes = sum(tile.boxes for tile in self.tiles)
        crowd = sum(tile.crowd_boxes for tile in self.tiles)
        skipped = f", {len(self.skipped)} unreadable skipped" if self.skipped else ""
        return (
            f"wrote {self.path}: {len(self.tiles)} images, {boxes} boxes ({crowd} crowd){skipped}"
        )


def run_data_show(
    data: Path | None,
    split: str = "train",
    num: int = 16,
    seed: int | None = None,
    out: Path | None = None,
    overwrite: bool = False,
) -> DataGrid:
    """Draw `num` images of `split` (the first by id, or a sample drawn with `seed`) into a grid
    PNG at `out` (default: data_<split>.png here); `data` None means the built-in dataset."""
    out = Path(out) if out is not None else Path(f"data_{split}.png")
    check_output_file(out, overwrite)
    if data is None:
        from train.data.synthetic import ensure_synthetic_dataset

        data = ensure_synthetic_dataset()
    ann_file, img_dir = resolve_split(Path(data), split)
    coco = load_coco(ann_file)
    infos = _pick_images(coco.dataset["images"], num, seed)
    if not infos:
        raise PipelineError(f"{ann_file}: lists no images")
    category_ids = sorted(coco.cats)
    grid = DataGrid(out)
    drawn = []
    for info in infos:
        try:
            image = load_image(image_path(img_dir, info.get("file_name"), ann_file))
        except DeployError as exc:
            logger.warning("%s; image skipped", exc)
            grid.skipped.append(str(exc))
            continue
        anns = coco.imgToAnns.get(info["id"], [])
        boxes, scale = _annotation_boxes(image, anns, coco.cats, category_ids)
        drawn.append((info["file_name"], boxes, _tile_image(image, boxes, scale), scale))
    if not drawn:
        raise PipelineError(f"none of the {len(infos)} images could be read ({grid.skipped[0]})")
    canvas = _compose(drawn, grid)
    try:
        canvas.save(out)
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{out}: cannot write the grid ({exc})") from exc
    return grid


def _pick_images(infos: list[dict[str, Any]], num: int, seed: int | None) -> list[dict[str, Any]]:
    ordered = sorted(infos, key=lambda info: info["id"])
    if seed is None:
        return ordered[:num]
    sample = random.Random(seed).sample(ordered, min(num, len(ordered)))
    return sorted(sample, key=lambda info: info["id"])


def _annotation_boxes(
    image: Image.Image, anns: list[dict[str, Any]], cats: dict[int, Any], category_ids: list[int]
) -> tuple[list[LabelledBox], float]:
    """The image's annotations as boxes in tile pixels, and the scale that makes its longer
    side TILE."""
    scale = TILE / max(image.size)
    return [_annotation_box(ann, scale, cats, category_ids) for ann in anns], scale


def _tile_image(image: Image.Image, boxes: list[LabelledBox], scale: float) -> Image.Image:
    """The image scaled by `scale` (small images are enlarged), with `boxes` drawn."""
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    resized = image.convert("RGB").resize(size, Image.Resampling.BILINEAR)
    return draw_boxes(resized, boxes, TILE_STYLE)


def _annotation_box(
    ann: dict[str, Any], scale: float, cats: dict[int, Any], category_ids: list[int]
) -> LabelledBox:
    x, y, w, h = (float(v) * scale for v in ann["bbox"])
    category_id = ann["category_id"]
    known = category_id in cats
    name = cats[category_id]["name"] if known else f"unknown id {category_id}"
    colour = class_colour(category_ids.index(category_id) if known else len(category_ids))
    crowd = bool(ann.get("iscrowd", 0))
    return LabelledBox((x, y, x + w, y + h), f"crowd {name}" if crowd else name, colour, crowd)


def _compose(
    drawn: list[tuple[str, list[LabelledBox], Image.Image, float]], grid: DataGrid
) -> Image.Image:
    """Tiles in rows of ceil(sqrt(n)), each with its caption; fills `grid.tiles`."""
    columns = math.ceil(math.sqrt(len(drawn)))
    rows = math.ceil(len(drawn) / columns)
    cell_w, cell_h = TILE + GAP, TILE + CAPTION + GAP
    canvas = Image.new("RGB", (columns * cell_w + GAP, rows * cell_h + GAP), BACKGROUND)
    caption = ImageDraw.Draw(canvas)
    font = label_font(TILE_STYLE.font_size)
    for index, (file_name, boxes, tile, scale) in enumerate(drawn):
        origin = (GAP + (index % columns) * cell_w, GAP + (index // columns) * cell_h)
        canvas.paste(tile, origin)
        crowd = sum(1 for box in boxes if box.dashed)
        name = file_name if len(file_name) <= 32 else "..." + file_name[-29:]
        count = f"{len(boxes)} box" + ("" if len(boxes) == 1 else "es")
        text = f"{name}: {count}" + (f" ({crowd} crowd)" if crowd else "")
        caption.text((origin[0], origin[1] + TILE + 3), text, fill=CAPTION_INK, font=font)
        labels = tuple(box.label for box in boxes)
        grid.tiles.append(Tile(file_name, origin, scale, labels, crowd))
    return canvas
