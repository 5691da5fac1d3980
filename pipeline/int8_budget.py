"""`pipeline export --precision int8 --max-ap-drop POINTS`: int8 within an accuracy budget.

The int8 model is scored against the fp32 one on a held-out slice of the val split (its first
half by image id; calibration uses train images). While the AP drop exceeds the budget, the
quantized layers (convolutions, residual adds, pooling, FPN resizes: every op the quantizer
gives Q/DQ) whose outputs have the lowest SQNR between the fp32 and int8 graphs (measured on a
few val images, deploy/agreement.py) are kept in float, a tenth of them at a time, and the
model is quantized and scored again; the SQNR is measured afresh each round, since one layer
kept in float changes the error of every layer after it. Ends within the budget (saying which
layers stayed float, the AP and the latency), or with one line when every such layer is float
and the budget is still not met.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from deploy.agreement import layer_errors
from deploy.backends.onnxruntime import OnnxRuntimePredictor
from deploy.evaluate import evaluate
from export.quantize import QuantizeOptions, named_nodes, quantize_int8, split_raw_and_tail
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


def quantizable_nodes_by_output(onnx_path: Path, op_types: tuple[str, ...]) -> dict[str, str]:
    """Output tensor -> node name of every network node of `op_types` (the names quantize_int8
    excludes by)."""
    raw, _, _ = split_raw_and_tail(named_nodes(onnx.load(str(onnx_path))))  # not the float tail
    return {node.output[0]: node.name for node in raw.graph.node if node.op_type in op_types}


def slice_score(model_path: Path, val: tuple[Path, Path], images: int) -> dict[str, Any]:
    """AP (points) and p50 latency of a model on the first `images` val images, batch 1."""
    report = evaluate(OnnxRuntimePredictor(model_path), *val, warmup=1, max_images=images)
    return {"AP": 100 * report["metrics"]["AP"], "p50_ms": report["latency"]["total_ms"]["p50"]}


def quantize_within_budget(
    fp32_path: Path,
    int8_path: Path,
    calibration: Callable[[], Iterable[np.ndarray]],
    val: tuple[Path, Path],
    probe: np.ndarray,
    budget: float,
    options: QuantizeOptions,
) -> dict[str, Any]:
    """Write int8_path within `budget` AP points of fp32 on the val slice; what it took."""
    total = len(_image_ids(val[0]))
    held_out = max(1, math.ceil(total / 2))
    convs = quantizable_nodes_by_output(fp32_path, options.op_types)
    step = max(1, math.ceil(len(convs) / 10))
    fp32 = slice_score(fp32_path, val, held_out)
    kept: list[str] = []
    rounds = 0
    while True:
        rounds += 1
        detail = quantize_int8(fp32_path, int8_path, calibration(),
                               replace(options, float_nodes=tuple(kept)))  # fmt: skip
        int8 = slice_score(int8_path, val, held_out)
        drop = fp32["AP"] - int8["AP"]
        log.info("round %d: %d layers kept float, AP %.2f (fp32 %.2f, drop %.2f)",
                 rounds, len(kept), int8["AP"], fp32["AP"], drop)  # fmt: skip
        if drop <= budget:
            return {**detail, "budget": {
                "max_ap_drop": budget, "ap_fp32": fp32["AP"], "ap_int8": int8["AP"],
                "p50_ms_fp32": fp32["p50_ms"], "p50_ms_int8": int8["p50_ms"],
                "slice": f"first {held_out} of {total} images of {Path(val[0]).name}",
                "float_layers": kept, "rounds": rounds,
            }}  # fmt: skip
        ranked = layer_errors(fp32_path, int8_path, probe, worst=len(convs), tensors=list(convs))
        worst = [convs[row["tensor"]] for row in ranked
                 if row["tensor"] in convs and convs[row["tensor"]] not in kept
                 and math.isfinite(row["sqnr_db"])]  # fmt: skip
        if not worst:
            raise PipelineError(
                f"--max-ap-drop {budget:g}: with every quantizable layer in float the int8 model still "
                f"loses {drop:.2f} AP points on the first {held_out} val images "
                f"({int8['AP']:.2f} vs fp32 {fp32['AP']:.2f}); raise the budget or ship fp32"
            )
        kept += worst[:step]


def _image_ids(ann_file: Path) -> list[int]:
    import json

    return [image["id"] for image in json.loads(Path(ann_file).read_text())["images"]]
