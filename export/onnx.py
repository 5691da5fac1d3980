"""Export a RetinaDetector to one ONNX file that maps raw images to padded detections.

The network is exported with PyTorch's TorchScript-based ("legacy", dynamo=False) exporter: for a
plain conv net it is stable, fast and gives a flat graph with constant-folded weights, which is
what TensorRT's parser wants. torch 2.14 still ships it (with a DeprecationWarning). The decode +
NMS graph from export/graph_postprocess.py is then appended, so every runtime runs the same
post-processing, and `check_parity` holds the file to the PyTorch predictor.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from common.contract import (
    INPUT_NAME,
    OUTPUT_NAMES,
    POSTPROCESS_PROP,
    RAW_OUTPUT_NAMES,
    Detections,
    PostprocessConfig,
    fixed_batch,
    in_batches_of,
)
from common.errors import InputError
from common.files import replace_atomically
from export.graph_postprocess import append_postprocess
from export.onnx_two_stage import export_two_stage_graph
from export.tracing import trace_to_onnx
from train.model.anchors import anchors_per_level
from train.model.detectors import is_two_stage
from train.predict import TorchPredictor

log = logging.getLogger(__name__)

# Where files exported before the one thresholds key kept the graph's thresholds.
LEGACY_POSTPROCESS_KEY = "postprocess"
BOX_RTOL, BOX_ATOL = 1e-3, 1e-2  # relative, pixels
SCORE_ATOL = 1e-3


def _export_raw(model: nn.Module, img_size: int, opset: int) -> onnx.ModelProto:
    """The network alone: `images` (B, 3, S, S) -> cls_logits (B, N, K), box_deltas (B, N, 4)."""
    dummy = torch.rand(2, 3, img_size, img_size) * 255.0
    dynamic = {name: {0: "batch"} for name in (INPUT_NAME, *RAW_OUTPUT_NAMES)}
    return trace_to_onnx(model, dummy, list(RAW_OUTPUT_NAMES), opset, dynamic)


def _check_metadata(metadata_props: dict[str, str]) -> None:
    bad = {k: type(v).__name__ for k, v in metadata_props.items() if not isinstance(v, str)}
    if bad or not all(isinstance(k, str) for k in metadata_props):
        raise TypeError(f"ONNX metadata keys and values must be str; non-str values: {bad}")


def _set_metadata(model: onnx.ModelProto, props: dict[str, str]) -> None:
    """Add or replace metadata_props entries, keeping the others."""
    merged = {p.key: p.value for p in model.metadata_props}
    merged.update(props)
    del model.metadata_props[:]
    for key, value in merged.items():
        model.metadata_props.add(key=key, value=value)


def _save_atomic(model: onnx.ModelProto, out_path: Path) -> None:
    """Write next to `out_path`, then rename, so an existing file is never half-overwritten."""
    data = model.SerializeToString()  # onnx.save on a handle would read its .name as a path
    replace_atomically(out_path, lambda handle: handle.write(data))


def export_onnx(
    model: nn.Module,
    out_path: str | Path,
    metadata_props: dict[str, str],
    opset: int = 17,
    postprocess: PostprocessConfig | None = None,
) -> Path:
    """Export `model` (a RetinaDetector) with decode + NMS in the graph; returns the path.

    The file has one input `images` (B, 3, S, S) float32 raw 0..255 letterboxed pixels and the
    outputs num_dets (B,) int64, boxes (B, D, 4) float32, scores (B, D) float32, labels (B, D)
    int64. `metadata_props` are stored as given, plus the post-processing thresholds under
    POSTPROCESS_PROP (the graph's own values win over a different value passed in). The caller's
    model is not modified: a float32 CPU copy is exported.
    """
    config = postprocess or PostprocessConfig()
    _check_metadata(metadata_props)
    out_path = Path(out_path)
    net = copy.deepcopy(model).float().cpu().eval()
    spec = net.anchor_spec
    if is_two_stage(net):  # its second stage is its post-processing: traced whole
        onnx_model = export_two_stage_graph(net, int(spec.img_size), opset, config)
    else:
        onnx_model = _export_raw(net, spec.img_size, opset)
        append_postprocess(
            onnx_model,
            net.anchors,
            anchors_per_level(spec),
            int(net.config.num_classes),
            int(spec.img_size),
            config,
            *RAW_OUTPUT_NAMES,
        )
    props = dict(metadata_props)
    if props.get(POSTPROCESS_PROP, config.to_json()) != config.to_json():
        log.warning("metadata %r replaced by the graph's own thresholds", POSTPROCESS_PROP)
    props[POSTPROCESS_PROP] = config.to_json()
    _set_metadata(onnx_model, props)
    onnx_model.producer_name = "softsample-pipeline export"
    onnx.checker.check_model(onnx_model, full_check=True)
    _save_atomic(onnx_model, out_path)
    log.info("exported %s (opset %d, %d nodes)", out_path, opset, len(onnx_model.graph.node))
    return out_path


def update_metadata(onnx_path: str | Path, props: dict[str, str]) -> None:
    """Add or replace metadata entries of an existing file (atomically), e.g. the parity result
    that can only be measured once the file exists."""
    _check_metadata(props)
    model = onnx.load(str(onnx_path))
    _set_metadata(model, props)
    _save_atomic(model, Path(onnx_path))


def read_metadata_props(onnx_path: str | Path) -> dict[str, str]:
    """An ONNX file's metadata_props as a dict (the weights are not read)."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def read_postprocess_config(onnx_path: str | Path) -> PostprocessConfig:
    """The thresholds baked into an exported file (an older file's own key, else defaults)."""
    props = read_metadata_props(onnx_path)
    for key in (POSTPROCESS_PROP, LEGACY_POSTPROCESS_KEY):
        if key in props:
            return PostprocessConfig.from_json(props[key])
    return PostprocessConfig()


def run_onnxruntime(onnx_path: str | Path, images: np.ndarray) -> Detections:
    """Plain ONNX Runtime on CPU, outputs packed like the PyTorch predictor's."""
    try:  # imported here: exporting alone needs no ONNX Runtime
        import onnxruntime as ort
    except ImportError as exc:
        raise InputError(
            "ONNX Runtime is not installed: pip install '.[cpu]' (or '.[gpu]' on an NVIDIA "
            "machine), needed for the parity check"
        ) from exc
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])

    def run(batch: np.ndarray) -> Detections:
        outputs = session.run(list(OUTPUT_NAMES), {INPUT_NAME: batch.astype(np.float32)})
        return Detections(**dict(zip(OUTPUT_NAMES, outputs, strict=True)))

    return in_batches_of(fixed_batch(session.get_inputs()[0].shape), run, images)


def _match_image(ref: Detections, other: Detections, b: int) -> tuple[int, float, float]:
    """Pair image b's valid detections greedily (same label, nearest box, in score order);
    returns (number left unpaired or out of tolerance, max box diff, max score diff)."""
    n_ref, n_other = int(ref.num_dets[b]), int(other.num_dets[b])
    free = np.ones(n_other, dtype=bool)
    bad, max_box, max_score = abs(n_ref - n_other), 0.0, 0.0
    for i in range(n_ref):
        same = free & (other.labels[b, :n_other] == ref.labels[b, i])
        if not same.any():
            bad += 1
            continue
        diffs = np.abs(other.boxes[b, :n_other] - ref.boxes[b, i]).max(axis=1)
        j = int(np.argmin(np.where(same, diffs, np.inf)))
        free[j] = False
        box_diff = np.abs(other.boxes[b, j] - ref.boxes[b, i])
        score_diff = abs(float(other.scores[b, j]) - float(ref.scores[b, i]))
        max_box, max_score = max(max_box, float(box_diff.max())), max(max_score, score_diff)
        box_ok = bool(np.all(box_diff <= BOX_ATOL + BOX_RTOL * np.abs(ref.boxes[b, i])))
        bad += int(not (box_ok and score_diff <= SCORE_ATOL))
    return bad, max_box, max_score


def compare_detections(ref: Detections, other: Detections) -> dict[str, Any]:
    """Agreement of two runtimes' detections on the same images (JSON-ready dict).

    `match` requires, per image, the same num_dets, and every reference detection paired with one
    of the same label whose box is within 1e-3 relative + 1e-2 px and score within 1e-3. Pairing
    by label and box, not row, keeps near-equal scores that swap rows from counting as errors.
    """
    bad, max_box, max_score = 0, 0.0, 0.0
    for b in range(ref.num_dets.shape[0]):
        b_bad, b_box, b_score = _match_image(ref, other, b)
        bad, max_box, max_score = bad + b_bad, max(max_box, b_box), max(max_score, b_score)
    return {
        "match": bad == 0 and bool(np.array_equal(ref.num_dets, other.num_dets)),
        "num_images": int(ref.num_dets.shape[0]),
        "num_dets_reference": int(ref.num_dets.sum()),
        "num_dets_other": int(other.num_dets.sum()),
        "mismatched": int(bad),
        "max_box_diff": max_box,
        "max_score_diff": max_score,
    }


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    images: np.ndarray,
    config: PostprocessConfig | None = None,
) -> dict[str, Any]:
    """PyTorch (TorchPredictor, float32 CPU copy) vs ONNX Runtime (CPU) on the same images.

    `images` is (B, 3, S, S) float32 raw 0..255. Thresholds are read from the file's metadata
    unless `config` is given. Returns `compare_detections`'s dict (torch is the reference).
    """
    config = config or read_postprocess_config(onnx_path)
    net = copy.deepcopy(model).float().cpu()
    torch_dets = TorchPredictor(net, metadata=None, device="cpu", config=config)(images)
    onnx_dets = run_onnxruntime(onnx_path, images)
    result = compare_detections(torch_dets, onnx_dets)
    log.info("parity torch vs onnxruntime: %s", result)
    return result
