"""Where two deployments of one model disagree: detection by detection, then layer by layer.

`pipeline eval --model A --compare-to B` scores both on the same images and asks three things:
1. Do their files say different things? Thresholds, input size, padding, classes and precision
   are compared from the metadata: a model exported at another score threshold is named here.
2. Do their detections differ, and how? Detections are paired within an image and class at
   IoU > 0.99 (the same box, up to engine rounding); the rest are unmatched. Score differences of
   the pairs are summarized overall, per class and per object size (COCO's areas on the
   reference box), and unmatched detections are checked against the other side's lowest score:
   when all of one side's extras score below anything the other returns, the gap is a score
   threshold, not the engine.
3. When both are ONNX graphs, which layers drift? Every convolution output present in both
   graphs is read on a few images and its SQNR (signal to quantization noise, dB) reported,
   worst first: where int8 loses precision.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from deploy.metadata import ModelMetadata

MATCH_IOU = 0.99
NEAR_IOU = 0.5  # a second, loose pairing: the same object, its box moved
# COCO's object sizes by box area in original pixels: small < 32^2 <= medium < 96^2 <= large.
SIZE_LIMITS = ((32**2, "small"), (96**2, "medium"), (float("inf"), "large"))
COMPARED_FIELDS = ("img_size", "pad_value", "input_format", "class_names", "category_ids")


def _compared(metadata: ModelMetadata) -> dict[str, Any]:
    """The values two files must share to be compared, the thresholds one by one."""
    values = {name: getattr(metadata, name) for name in COMPARED_FIELDS}
    return values | asdict(metadata.postprocess)


def metadata_differences(a: ModelMetadata, b: ModelMetadata) -> dict[str, list[Any]]:
    """{field: [A's value, B's value]} for what the two files say differently."""
    values_a, values_b = _compared(a), _compared(b)
    found = {k: [values_a[k], values_b[k]] for k in values_a if values_a[k] != values_b[k]}
    precisions = [m.extra.get("precision", "fp32") for m in (a, b)]
    if precisions[0] != precisions[1]:
        found["precision"] = precisions
    return found


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one xywh box with (N, 4) xywh boxes."""
    x1 = np.maximum(box[0], boxes[:, 0])
    y1 = np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
    # a box clipped flat at the image edge has no area: it is the same box only if identical
    same = np.all(boxes == box, axis=1).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1e-12), same)


def size_name(area: float) -> str:
    return next(name for limit, name in SIZE_LIMITS if area < limit)


@dataclass
class Pairing:
    """Detections of A and B paired (same image, class, IoU > MATCH_IOU) or left unmatched."""

    pairs: list[tuple[dict, dict]] = field(default_factory=list)
    only_a: list[dict] = field(default_factory=list)
    only_b: list[dict] = field(default_factory=list)


def pair_detections(a: list[dict], b: list[dict], min_iou: float = MATCH_IOU) -> Pairing:
    """Greedy, highest score first: each detection of A takes its best unclaimed twin in B."""
    groups: dict[tuple[int, int], tuple[list[dict], list[dict]]] = defaultdict(lambda: ([], []))
    for side, detections in enumerate((a, b)):
        for det in detections:
            groups[(det["image_id"], det["category_id"])][side].append(det)
    pairing = Pairing()
    for group_a, group_b in groups.values():
        group_a.sort(key=lambda d: -d["score"])
        boxes = np.array([d["bbox"] for d in group_b], dtype=np.float64).reshape(-1, 4)
        free = np.ones(len(group_b), dtype=bool)
        for det in group_a:
            overlap = np.where(free, _iou(np.asarray(det["bbox"], float), boxes), -1.0)
            best = int(np.argmax(overlap)) if len(group_b) else -1
            if best >= 0 and overlap[best] > min_iou:
                free[best] = False
                pairing.pairs.append((det, group_b[best]))
            else:
                pairing.only_a.append(det)
        pairing.only_b.extend(d for d, left in zip(group_b, free, strict=True) if left)
    return pairing


def _score_stats(differences: Iterable[float]) -> dict[str, float | int]:
    values = np.abs(np.fromiter(differences, dtype=np.float64))
    if values.size == 0:
        return {"pairs": 0}
    return {
        "pairs": int(values.size),
        "mean_abs": float(values.mean()),
        "max_abs": float(values.max()),
    }


def agreement(
    a: list[dict], b: list[dict], class_names: dict[int, str], min_iou: float = MATCH_IOU
) -> dict[str, Any]:
    """The pairing summarized (JSON-ready): counts, score differences overall, per class and
    per object size, and the score ranges of what only one side found."""
    pairing = pair_detections(a, b, min_iou)
    # the same objects found, boxes moved: what int8 usually does
    near = len(pair_detections(a, b, NEAR_IOU).pairs)
    per_class: dict[str, list[float]] = defaultdict(list)
    per_size: dict[str, dict[str, Any]] = {name: {"pairs": 0, "only_a": 0, "only_b": 0, "diffs": []}
                                           for _, name in SIZE_LIMITS}  # fmt: skip
    for det_a, det_b in pairing.pairs:
        diff = det_b["score"] - det_a["score"]
        per_class[class_names.get(det_a["category_id"], str(det_a["category_id"]))].append(diff)
        bucket = per_size[size_name(det_a["bbox"][2] * det_a["bbox"][3])]
        bucket["pairs"] += 1
        bucket["diffs"].append(diff)
    for side, extras in (("only_a", pairing.only_a), ("only_b", pairing.only_b)):
        for det in extras:
            per_size[size_name(det["bbox"][2] * det["bbox"][3])][side] += 1
    return {
        "match_iou": min_iou,
        "detections": {"a": len(a), "b": len(b)},
        "paired": len(pairing.pairs),
        "paired_near": {"iou": NEAR_IOU, "pairs": near},
        "only_a": _extras(pairing.only_a),
        "only_b": _extras(pairing.only_b),
        "lowest_score": {
            "a": min((d["score"] for d in a), default=None),
            "b": min((d["score"] for d in b), default=None),
        },  # fmt: skip
        "score_difference": _score_stats(b["score"] - a["score"] for a, b in pairing.pairs),
        "per_class": {name: _score_stats(diffs) for name, diffs in sorted(per_class.items())},
        "per_size": {
            name: {
                "pairs": v["pairs"],
                "only_a": v["only_a"],
                "only_b": v["only_b"],
                **_score_stats(v["diffs"]),
            }
            for name, v in per_size.items()
        },  # fmt: skip
    }


def _extras(detections: list[dict]) -> dict[str, Any]:
    scores = [d["score"] for d in detections]
    return {"count": len(scores), "max_score": max(scores, default=None)}


def diagnosis(found: dict[str, Any], differences: dict[str, list[Any]]) -> list[str]:
    """What the evidence says, in words: the first lines a user reads."""
    lines = []
    names = {"score_threshold": "score threshold", "nms_iou": "NMS IoU", "img_size": "input size",
             "max_detections": "detections per image", "topk_per_level": "top-k per level",
             "pad_value": "letterbox pad value",
             "input_format": "input format", "class_names": "class names",
             "category_ids": "category ids", "precision": "precision"}  # fmt: skip
    for key, (value_a, value_b) in differences.items():
        lines.append(f"the files differ in {names[key]}: {value_a} (A) vs {value_b} (B)")
    lowest = found["lowest_score"]
    for side, other in (("a", "b"), ("b", "a")):
        extra = found[f"only_{side}"]
        if extra["count"] and lowest[other] is not None and extra["max_score"] < lowest[other]:
            lines.append(
                f"all {extra['count']} detections only {side.upper()} returns score below "
                f"{lowest[other]:.3f}, the lowest score {other.upper()} returns: a score "
                "threshold difference, not the engine"
            )
    if list(differences) == ["precision"]:
        lines.append(
            f"only the precision differs: {found['paired_near']['pairs']} detections pair at IoU > "
            f"{NEAR_IOU} against {found['paired']} at IoU > {found['match_iou']}; the drift is the "
            "quantization (between two ONNX graphs, the lowest-SQNR layers say where it is lost)"
        )
    elif not lines:
        stats = found["score_difference"]
        total = found["detections"]["a"] + found["detections"]["b"]
        unmatched = found["only_a"]["count"] + found["only_b"]["count"]
        lines.append(
            f"same settings; {unmatched} of {total} detections unmatched and scores of the "
            f"pairs differ by {stats.get('mean_abs', 0.0):.4f} on average "
            f"(max {stats.get('max_abs', 0.0):.4f}): the engines compute differently"
        )
    return lines


def conv_outputs(model: Any) -> list[str]:
    """Names of the convolution outputs of an ONNX graph (the layers whose drift matters)."""
    return [node.output[0] for node in model.graph.node if node.op_type == "Conv"]


def layer_errors(
    path_a: Path,
    path_b: Path,
    images: np.ndarray,
    worst: int = 8,
    tensors: list[str] | None = None,
) -> list[dict]:
    """SQNR in dB of `tensors` (default: every convolution output of A) where B has them too,
    on `images`, worst first."""
    import onnx

    from deploy.backends.onnxruntime import session_with_outputs

    model_a, model_b = onnx.load(str(path_a)), onnx.load(str(path_b))
    in_b = {o for n in model_b.graph.node for o in n.output}
    shared = [name for name in (tensors or conv_outputs(model_a)) if name in in_b]
    if not shared:
        return []
    outputs_a = session_with_outputs(model_a, shared)(images)
    outputs_b = session_with_outputs(model_b, shared)(images)
    rows = []
    for name, ref, other in zip(shared, outputs_a, outputs_b, strict=True):
        noise = float(np.sum((ref.astype(np.float64) - other) ** 2))
        signal = float(np.sum(ref.astype(np.float64) ** 2))
        sqnr = float("inf") if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)
        rows.append({"tensor": name, "sqnr_db": sqnr})
    rows.sort(key=lambda row: row["sqnr_db"])
    return rows[:worst]
