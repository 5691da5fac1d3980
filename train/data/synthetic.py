"""A built-in COCO-format shapes dataset, so the pipeline runs end to end without downloading COCO.

Five filled shape classes with deliberately non-contiguous category ids (so the class index <->
category id mapping is exercised), varied image sizes (so letterboxing matters), textured
backgrounds, clutter and unlabelled distractor shapes (hard negatives), a few empty images and, in
train only, rare crowd regions. `label_noise` flips a fraction of train labels to show GHM's claim
that it down-weights outliers. Every image draws from its own RNG seeded by (seed, split, index),
so generation is deterministic and parallel-safe.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from common.datasets.converted import cache_root
from common.errors import InputError
from common.files import write_json_atomic

logger = logging.getLogger(__name__)

CATEGORIES: tuple[dict, ...] = (
    {"id": 1, "name": "circle", "supercategory": "shape"},
    {"id": 3, "name": "square", "supercategory": "shape"},
    {"id": 7, "name": "triangle", "supercategory": "shape"},
    {"id": 10, "name": "star", "supercategory": "shape"},
    {"id": 12, "name": "cross", "supercategory": "shape"},
)
CATEGORY_IDS: tuple[int, ...] = tuple(c["id"] for c in CATEGORIES)
DATASET_NAME = "synthetic-v1"
SPLIT_CODES = {"train": 0, "val": 1}
SIZE_RANGE = (192, 320)
P_EMPTY = 0.03
P_SMALL = 0.12
P_CROWD = 0.02
MAX_OVERLAP = 0.35  # of the smaller box, so no object hides under a later one


def _unit_polygon(kind: str) -> np.ndarray:
    """(P, 2) outline of a shape centred at the origin with radius ~1."""
    if kind in ("circle", "hexagon", "triangle"):
        n = {"circle": 40, "hexagon": 6, "triangle": 3}[kind]
        ang = -np.pi / 2 + np.arange(n) * 2 * np.pi / n
        return np.stack([np.cos(ang), np.sin(ang)], axis=1)
    if kind == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], dtype=np.float64)
    if kind == "star":
        ang = -np.pi / 2 + np.arange(10) * np.pi / 5
        rad = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)
    if kind == "cross":
        a = 0.32
        return np.array(
            [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a]]
            + [[a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]],
            dtype=np.float64,
        )
    raise ValueError(f"unknown shape kind {kind!r}")


SHAPES = {kind: _unit_polygon(kind) for kind in ("circle", "square", "triangle", "star", "cross")}
HEXAGON = _unit_polygon("hexagon")


def _luma(rgb: np.ndarray) -> float:
    return float(rgb[0] * 0.299 + rgb[1] * 0.587 + rgb[2] * 0.114)


def _background(rng: np.random.Generator, w: int, h: int) -> tuple[np.ndarray, float]:
    """(H, W, 3) uint8 gradient + low-frequency texture + optional stripes, and its mean luma."""
    dark = rng.random() < 0.5
    lo, hi = (10, 110) if dark else (145, 245)
    c0, c1 = rng.uniform(lo, hi, 3), rng.uniform(lo, hi, 3)
    theta = rng.uniform(0, 2 * np.pi)
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    t = xs * np.cos(theta) + ys * np.sin(theta)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0[None, None, :] + (c1 - c0)[None, None, :] * t[..., None]
    if rng.random() < 0.7:
        gx, gy = rng.integers(3, 12, 2)
        grid = rng.uniform(-1, 1, (int(gy), int(gx), 3)).astype(np.float32)
        tex = np.stack(
            [np.asarray(Image.fromarray(grid[..., c], "F").resize((w, h))) for c in range(3)], -1
        )
        img = img + tex * rng.uniform(8, 28)
    if rng.random() < 0.25:
        axis = xs if rng.random() < 0.5 else ys
        wave = np.sin(axis * (2 * np.pi / rng.uniform(6, 30)) + rng.uniform(0, 2 * np.pi))
        img = img + wave[..., None] * rng.uniform(4, 12)
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img, _luma(img.reshape(-1, 3).mean(axis=0))


def _contrasting_colour(rng: np.random.Generator, bg_luma: float, min_gap: float = 80.0) -> tuple:
    """A random colour whose luma differs from the background's by at least `min_gap`."""
    for _ in range(50):
        rgb = rng.integers(0, 256, 3)
        if abs(_luma(rgb) - bg_luma) >= min_gap:
            return tuple(int(v) for v in rgb)
    return (255, 255, 255) if bg_luma < 128 else (0, 0, 0)


def _place(unit: np.ndarray, rng: np.random.Generator, size: float, w: int, h: int) -> np.ndarray:
    """Scale (with a random stretch), rotate and translate a unit outline so it fits the image."""
    stretch = float(np.exp(rng.uniform(-0.45, 0.45)))
    rx, ry = size / 2 * stretch**0.5, size / 2 / stretch**0.5
    ang = rng.uniform(0, 2 * np.pi)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    pts = (unit * [rx, ry]) @ rot.T
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    span = hi - lo
    if span[0] > w - 4 or span[1] > h - 4:
        pts = pts * min((w - 4) / span[0], (h - 4) / span[1])
        lo, hi = pts.min(axis=0), pts.max(axis=0)
    cx = rng.uniform(1 - lo[0], w - 1 - hi[0])
    cy = rng.uniform(1 - lo[1], h - 1 - hi[1])
    return pts + [cx, cy]


def _fill_polygon(img: Image.Image, pts: np.ndarray, colour: tuple) -> list[float] | None:
    """Draw a filled polygon; return the tight [x, y, w, h] box of its drawn pixels."""
    x0, y0 = (int(v) for v in np.floor(pts.min(axis=0)))
    x1, y1 = (int(v) + 2 for v in np.ceil(pts.max(axis=0)))
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    local = [(float(x - x0), float(y - y0)) for x, y in pts]
    ImageDraw.Draw(mask).polygon(local, fill=255)
    tight = mask.getbbox()
    if tight is None:
        return None
    img.paste(colour, (x0, y0), mask)
    left, top, right, bottom = tight
    return [float(x0 + left), float(y0 + top), float(right - left), float(bottom - top)]


def _overlap(a: list[float], b: list[float]) -> float:
    """Intersection over the smaller of two [x, y, w, h] boxes."""
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return ix * iy / (min(a[2] * a[3], b[2] * b[3]) + 1e-9)


def _draw_clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, w: int, h: int) -> None:
    """Specks and thin short strokes: texture that is neither an object nor a distractor."""
    for _ in range(int(rng.integers(4, 25))):
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.6:
            r = rng.uniform(0.8, 2.2)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        else:
            dx, dy = rng.uniform(-12, 12, 2)
            draw.line([x, y, x + dx, y + dy], fill=colour, width=1)


def _draw_distractor(img: Image.Image, rng: np.random.Generator, bg_luma: float) -> None:
    """An unlabelled shape of another kind (ring, line, hexagon, arc): a hard negative."""
    w, h = img.size
    draw = ImageDraw.Draw(img)
    colour = _contrasting_colour(rng, bg_luma)
    size = rng.uniform(18, min(80, 0.5 * min(w, h)))
    x, y = rng.uniform(2, w - size - 2), rng.uniform(2, h - size - 2)
    box = [x, y, x + size * rng.uniform(0.7, 1.0), y + size * rng.uniform(0.7, 1.0)]
    kind = ("ring", "line", "hexagon", "arc")[int(rng.integers(0, 4))]
    width = int(rng.integers(2, 5))
    if kind == "ring":
        draw.ellipse(box, outline=colour, width=width)
    elif kind == "line":
        draw.line(box if rng.random() < 0.5 else [box[0], box[3], box[2], box[1]], colour, width)
    elif kind == "hexagon":
        _fill_polygon(img, _place(HEXAGON, rng, size, w, h), colour)
    else:
        start = rng.uniform(0, 360)
        draw.arc(box, start, start + rng.uniform(90, 240), fill=colour, width=width)


def _object_size(rng: np.random.Generator, w: int, h: int, small: bool) -> float:
    if rng.random() < P_SMALL and small:
        return rng.uniform(10, 16)
    return float(np.exp(rng.uniform(np.log(20), np.log(min(100, 0.55 * min(w, h))))))


def _draw_objects(
    img: Image.Image,
    rng: np.random.Generator,
    bg_luma: float,
    count: int,
    crowd: list | None,
    small: bool,
) -> list[dict]:
    """Draw up to `count` labelled shapes: overlap <= MAX_OVERLAP, clear of the crowd."""
    w, h = img.size
    anns = []
    taken: list[list[float]] = []
    for _ in range(count):
        cat = int(rng.integers(0, len(CATEGORIES)))
        unit = SHAPES[CATEGORIES[cat]["name"]]
        for _try in range(15):
            pts = _place(unit, rng, _object_size(rng, w, h, small), w, h)
            lo, hi = pts.min(axis=0), pts.max(axis=0)
            rough = [float(lo[0]), float(lo[1]), float(hi[0] - lo[0]), float(hi[1] - lo[1])]
            clear = crowd is None or _overlap(rough, crowd) == 0
            if clear and all(_overlap(rough, t) <= MAX_OVERLAP for t in taken):
                break
        else:
            continue
        box = _fill_polygon(img, pts, _contrasting_colour(rng, bg_luma))
        if box is None or box[2] < 2 or box[3] < 2:
            continue
        taken.append(box)
        seg = [round(float(v), 2) for v in pts.reshape(-1)]
        anns.append(_annotation(CATEGORY_IDS[cat], box, 0, seg))
    return anns


def _draw_crowd(img: Image.Image, rng: np.random.Generator, bg_luma: float) -> dict:
    """A cluster of small same-class shapes, annotated as one iscrowd=1 region."""
    w, h = img.size
    cat = int(rng.integers(0, len(CATEGORIES)))
    unit = SHAPES[CATEGORIES[cat]["name"]]
    cell, rows, cols = 17, int(rng.integers(2, 5)), int(rng.integers(2, 6))
    x0, y0 = rng.uniform(2, w - cols * cell - 2), rng.uniform(2, h - rows * cell - 2)
    colour = _contrasting_colour(rng, bg_luma)
    boxes = []
    for k in range(rows * cols):
        if rng.random() < 0.2 and (boxes or k < rows * cols - 1):
            continue
        pts = _place(unit, rng, rng.uniform(9, 14), cell, cell)
        box = _fill_polygon(img, pts + [x0 + k % cols * cell, y0 + k // cols * cell], colour)
        if box is not None:
            boxes.append(box)
    arr = np.array(boxes)
    x1, y1 = arr[:, 0].min(), arr[:, 1].min()
    x2, y2 = (arr[:, 0] + arr[:, 2]).max(), (arr[:, 1] + arr[:, 3]).max()
    box = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
    seg = [box[0], box[1], x2, box[1], x2, y2, box[0], y2]
    return _annotation(CATEGORY_IDS[cat], box, 1, [float(v) for v in seg])


def _annotation(category_id: int, box: list[float], iscrowd: int, seg: list[float]) -> dict:
    return {
        "category_id": category_id,
        "bbox": box,
        "area": box[2] * box[3],
        "iscrowd": iscrowd,
        "segmentation": [seg],
    }


def render_image(task: tuple[int, str, int, Path, bool]) -> tuple[dict, list[dict]]:
    """Draw and save image `index` of `split`; return its image record and annotations (no ids)."""
    seed, split, index, img_dir, small = task
    rng = np.random.default_rng([seed, SPLIT_CODES[split], index])
    w, h = (int(v) for v in rng.integers(SIZE_RANGE[0], SIZE_RANGE[1] + 1, 2))
    bg, bg_luma = _background(rng, w, h)
    img = Image.fromarray(bg, "RGB")
    _draw_clutter(ImageDraw.Draw(img), rng, w, h)
    for _ in range(int(rng.integers(0, 4))):
        _draw_distractor(img, rng, bg_luma)
    anns: list[dict] = []
    if split == "train" and rng.random() < P_CROWD:
        anns.append(_draw_crowd(img, rng, bg_luma))
    crowd = anns[0]["bbox"] if anns else None
    count = 0 if rng.random() < P_EMPTY else int(rng.integers(1, 7))
    anns += _draw_objects(img, rng, bg_luma, count, crowd, small)
    if rng.random() < 0.5:
        noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, rng.uniform(1, 5), (h, w, 3))
        img = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    file_name = f"{index:06d}.png"
    img.save(img_dir / file_name, compress_level=1)
    return {"file_name": file_name, "width": w, "height": h}, anns


def _apply_label_noise(anns: list[dict], fraction: float, seed: int) -> int:
    """Give `fraction` of the non-crowd annotations a different class, deterministically."""
    rng = np.random.default_rng([seed, 1000])
    candidates = [i for i, a in enumerate(anns) if not a["iscrowd"]]
    count = int(round(fraction * len(candidates)))
    for i in rng.choice(len(candidates), size=count, replace=False):
        ann = anns[candidates[int(i)]]
        others = [c for c in CATEGORY_IDS if c != ann["category_id"]]
        ann["category_id"] = others[int(rng.integers(0, len(others)))]
    return count


def _render_split(
    out_dir: Path, split: str, count: int, seed: int, small: bool, pool: Executor | None
) -> tuple[list[dict], list[dict]]:
    """Render `count` images of a split; return COCO `images` and `annotations` lists."""
    img_dir = out_dir / split
    img_dir.mkdir(parents=True, exist_ok=True)
    tasks = [(seed, split, i, img_dir, small) for i in range(count)]
    results = pool.map(render_image, tasks, chunksize=16) if pool else map(render_image, tasks)
    images, annotations = [], []
    for image_id, (record, anns) in enumerate(results, start=1):
        images.append({"id": image_id, **record})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    return images, annotations


def _default_workers() -> int:
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, cpus or 1))


def generate_synthetic_dataset(
    out_dir: Path,
    num_train: int = 1200,
    num_val: int = 200,
    seed: int = 0,
    label_noise: float = 0.0,
    small_objects: bool = True,
    workers: int | None = None,
) -> Path:
    """Write the shapes dataset in the built-in layout under `out_dir`; return `out_dir`.

    Layout: `annotations/instances_{train,val}.json`, PNGs in `train/` and `val/`. The same
    arguments give byte-identical files. `label_noise` relabels that fraction of train
    annotations (val stays clean); images do not depend on it. `small_objects=False` keeps every
    object at 20 px or more.
    """
    if not 0.0 <= label_noise <= 1.0:
        raise InputError(f"label_noise: must be in [0, 1], got {label_noise}")
    if num_train < 0 or num_val < 0:
        raise InputError(f"num_train/num_val: must be >= 0, got {num_train}/{num_val}")
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    workers = _default_workers() if workers is None else workers
    parallel = workers > 1 and num_train + num_val >= 64
    start = time.perf_counter()
    # spawn, not fork: callers may already run torch threads, which fork would copy mid-state
    spawn = multiprocessing.get_context("spawn")
    pool_cm = ProcessPoolExecutor(workers, mp_context=spawn) if parallel else None
    with pool_cm or contextlib.nullcontext() as pool:
        for split, count in (("train", num_train), ("val", num_val)):
            images, anns = _render_split(out_dir, split, count, seed, small_objects, pool)
            noise = label_noise if split == "train" else 0.0
            info = {"description": f"softsample-pipeline shapes, {split}", "version": DATASET_NAME}
            info |= {"seed": seed, "small_objects": small_objects, "label_noise": noise}
            info["relabelled_annotations"] = _apply_label_noise(anns, noise, seed)
            data = {"info": info, "licenses": [], "images": images, "annotations": anns}
            data["categories"] = [dict(c) for c in CATEGORIES]
            write_json_atomic(
                out_dir / "annotations" / f"instances_{split}.json", data, compact=True
            )
    elapsed = time.perf_counter() - start
    logger.info("generated %d+%d images in %s in %.1fs", num_train, num_val, out_dir, elapsed)
    return out_dir


def default_dataset_dir() -> Path:
    """Where the built-in dataset is cached: $PIPELINE_CACHE or ~/.cache/softsample-pipeline."""
    return cache_root() / DATASET_NAME


def _is_complete(root: Path) -> bool:
    return all((root / "annotations" / f"instances_{s}.json").is_file() for s in SPLIT_CODES)


def ensure_synthetic_dataset(root: Path | None = None) -> Path:
    """Generate the default dataset at `root` once and return `root`.

    It is written into a temporary sibling that is renamed into place, so a killed generation
    never leaves a half dataset behind and concurrent callers both end with a complete one.
    """
    root = Path(root) if root is not None else default_dataset_dir()
    if _is_complete(root):
        return root
    if root.exists():
        raise InputError(f"{root}: exists but is not a complete synthetic dataset; remove it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("generating the built-in synthetic dataset in %s", root)
    try:
        generate_synthetic_dataset(tmp)
        os.rename(tmp, root)
    except OSError:
        if not _is_complete(root):  # not a lost race with another generator
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root
