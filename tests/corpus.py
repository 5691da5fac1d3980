"""Builders for the bad-input corpus: tiny COCO datasets, images in every mode, broken files.

Everything is generated at test time (no binaries in the repository).
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from click.testing import CliRunner, Result
from onnx import TensorProto, helper
from PIL import Image

from pipeline.cli import cli

CATEGORIES = [{"id": 1, "name": "a"}, {"id": 5, "name": "b"}]
TINY = [
    "--epochs", "1", "--batch-size", "2", "--img-size", "64", "--max-steps", "1",
    "--fpn-channels", "16", "--head-convs", "1", "--workers", "0", "--warmup-iters", "1",
    "--no-amp", "--device", "cpu",
]  # fmt: skip
# Image modes that must load (train and eval); CMYK is stored as JPEG, the rest as PNG.
LOADABLE_MODES = ("RGB", "L", "LA", "RGBA", "P", "I;16", "1", "CMYK")


def write_image(path: Path, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> None:
    """A random image of `size` (w, h) in PIL `mode`, saved in a format that keeps the mode."""
    rng = np.random.default_rng(len(path.name))
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)).save(path)
        return
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if mode == "P":
        image = rgb.quantize(16)
    elif mode == "LA":
        image = rgb.convert("L").convert("LA")
    else:
        image = rgb.convert(mode)
    image.save(path, format="JPEG" if mode == "CMYK" else "PNG")


def image_name(mode: str) -> str:
    return f"img_{mode.replace(';', '_')}.{'jpg' if mode == 'CMYK' else 'png'}"


def coco_json(images: list[tuple[str, int, int]]) -> dict[str, Any]:
    """A COCO dict with one box per image (classes alternate) over (file_name, w, h) entries."""
    entries, anns = [], []
    for i, (name, w, h) in enumerate(images, start=1):
        entries.append({"id": i, "file_name": name, "width": w, "height": h})
        cat = CATEGORIES[i % 2]["id"]
        anns.append({"id": i, "image_id": i, "category_id": cat, "bbox": [4, 4, w / 2, h / 2]})
    return {"images": entries, "annotations": anns, "categories": [dict(c) for c in CATEGORIES]}


def make_split(
    root: Path, split: str, images: list[tuple[str, int, int]], mode: str = "RGB"
) -> Path:
    """Write split's json and (RGB unless `mode`) images; returns the json path."""
    for name, w, h in images:
        write_image(root / split / name, (w, h), mode)
    ann = root / "annotations" / f"instances_{split}.json"
    ann.parent.mkdir(parents=True, exist_ok=True)
    ann.write_text(json.dumps(coco_json(images)))
    return ann


def make_dataset(root: Path) -> Path:
    """A valid 2-class dataset in the built-in layout: 2 train images, 2 val images."""
    make_split(root, "train", [("a.png", 48, 40), ("b.png", 40, 48)])
    make_split(root, "val", [("c.png", 48, 40), ("d.png", 40, 48)])
    return root


def edit_json(ann: Path, change: Any) -> None:
    """Apply `change(data)` to a json file in place (NaN/Infinity allowed, as Python writes)."""
    data = json.loads(ann.read_text())
    change(data)
    ann.write_text(json.dumps(data))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


class Evil:
    """Unpickling this would run a shell command; weights_only loading must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


def write_malicious_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps({"format": "softsample-pipeline/1", "x": Evil(marker)}))


def invoke(*args: Any) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args])


class LogRecorder(logging.Handler):
    """Collects log messages (WARNING and up) while attached to the root logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> LogRecorder:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)


def assert_one_line_error(result: Result, names: str) -> str:
    """Exit code 2, exactly one output line naming `names`, no traceback; returns the line."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    assert lines[0].startswith("Error: "), lines[0]
    assert names in lines[0], (names, lines[0])
    return lines[0]


@dataclass
class Trained:
    data: Path  # the mixed-mode dataset the model was trained on
    weights: Path
    onnx: Path
    log: str  # what training and export logged


MIXED_SIZE = 100  # not a multiple of 8, let alone of the largest stride (128)


def make_mixed_dataset(root: Path) -> int:
    """Train: one image per loadable mode, a corrupt and a missing file, a zero-width and a NaN
    box. Val: grayscale, 16-bit and a truncated file. Returns the number of train entries."""
    names = [(image_name(m), 40 + 4 * i, 36 + 2 * i) for i, m in enumerate(LOADABLE_MODES)]
    for (name, w, h), mode in zip(names, LOADABLE_MODES, strict=True):
        write_image(root / "train" / name, (w, h), mode)
    entries = names + [("corrupt.png", 48, 40), ("missing.png", 48, 40)]
    data = coco_json(entries)
    data["annotations"] += [
        {"id": 100, "image_id": 1, "category_id": 1, "bbox": [5, 5, 0, 10]},
        {"id": 101, "image_id": 2, "category_id": 5, "bbox": [5, 5, math.nan, 10]},
    ]
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(data))
    (root / "train" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    make_split(root, "val", [("v1.png", 48, 40), ("v2.png", 40, 48), ("v3.png", 44, 44)])
    write_image(root / "val" / "v1.png", (48, 40), "L")
    write_image(root / "val" / "v2.png", (40, 48), "I;16")
    truncate(root / "val" / "v3.png")
    return len(entries)


def foreign_onnx(path: Path, _: Trained) -> None:
    """A valid ONNX model that this pipeline did not write (no metadata)."""
    node = helper.make_node("Identity", ["images"], ["boxes"])
    tensor = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "foreign", [tensor("images", TensorProto.FLOAT, [1, 3, 64, 64])],
        [tensor("boxes", TensorProto.FLOAT, [1, 3, 64, 64])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), path)


def onnx_with_code_in_metadata(path: Path, t: Trained) -> None:
    """Our model whose class_names metadata is a Python expression instead of JSON."""
    model = onnx.load(str(t.onnx))
    for prop in model.metadata_props:
        if prop.key == "softsample.class_names":
            prop.value = f"__import__('os').system('touch {path.parent / 'pwned'}')"
    onnx.save(model, path)


def cut_copy(source: str) -> Callable[[Path, Trained], None]:
    """Writer of the first half of the trained `weights` or `onnx` file."""

    def write(path: Path, t: Trained) -> None:
        shutil.copy(getattr(t, source), path)
        truncate(path)

    return write


def edited_checkpoint(change: Callable[[dict], None]) -> Callable[[Path, Trained], None]:
    """Writer of the trained checkpoint with `change` applied to its dict."""

    def write(path: Path, t: Trained) -> None:
        payload = torch.load(t.weights, weights_only=True)
        change(payload)
        torch.save(payload, path)

    return write


def three_classes(payload: dict) -> None:
    payload.update(class_names=["x", "y", "z"], category_ids=[1, 5, 9])


def built_for_three_classes(payload: dict) -> None:
    three_classes(payload)
    payload["model_config"]["num_classes"] = 3


def engine_from_other_tensorrt(path: Path, t: Trained) -> None:
    """An engine file with a sidecar saying TensorRT 8.6 built it (on a GPU machine the version
    check refuses it; without TensorRT the loader says what is missing; both name the file)."""
    path.write_bytes(b"ftrt" + bytes(252))
    props = {p.key: p.value for p in onnx.load(str(t.onnx)).metadata_props}
    engine = {"tensorrt_version": "8.6.1", "gpu_name": "NVIDIA A100", "precision": "fp16"}
    sidecar = {"format": "softsample-engine/1", "onnx_props": props}
    sidecar["engine"] = engine | {"compute_capability": "8.0"}
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar))
