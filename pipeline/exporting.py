"""`pipeline export`: checkpoint -> ONNX (decode + NMS in the graph) -> parity check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from deploy.preprocess import letterbox, load_image, to_batch
from export.compat import check_tensorrt_compat
from export.onnx import check_parity, export_onnx
from pipeline.errors import PipelineError
from pipeline.models import metadata_from_checkpoint
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.data.layout import resolve_split
from train.data.synthetic import ensure_synthetic_dataset


def parity_images(data: Path | None, img_size: int, count: int = 4) -> np.ndarray:
    """A few real validation images, letterboxed exactly as deployment will."""
    root = data if data is not None else ensure_synthetic_dataset()
    ann_file, img_dir = resolve_split(root, "val")
    entries = json.loads(ann_file.read_text())["images"][:count]
    arrays = [letterbox(load_image(img_dir / e["file_name"]), img_size)[0] for e in entries]
    return to_batch(arrays)


def run_export(
    weights: Path, out: Path | None, opset: int, data: Path | None, overwrite: bool
) -> str:
    payload = load_checkpoint(weights)
    model = model_from_checkpoint(payload, weights)
    out = out or weights.parent / "model.onnx"
    if out.exists() and not overwrite:
        raise PipelineError(f"{out}: already exists; pass --overwrite to replace it")
    metadata = metadata_from_checkpoint(payload)
    export_onnx(model, out, metadata.to_props(), opset=opset)
    images = parity_images(data, metadata.img_size)
    parity = check_parity(model, out, images)
    problems = check_tensorrt_compat(out)
    lines = [
        f"wrote {out}",
        f"parity on {len(images)} images: max box diff {parity['max_box_diff']:.2e} px, "
        f"max score diff {parity['max_score_diff']:.2e}, detections match: {parity['match']}",
        "TensorRT compatibility: " + ("ok" if not problems else "; ".join(problems)),
    ]
    return "\n".join(lines)
