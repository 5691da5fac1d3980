"""`pipeline export --precision int8 --max-ap-drop POINTS`: int8 within an accuracy budget.

The int8 model is scored against the fp32 one on a held-out slice of the val split (its first
half by image id; calibration uses train images). While the AP drop exceeds the budget, the
quantized layers (convolutions, residual adds, pooling, FPN resizes: every op the quantizer
gives Q/DQ) that add the most error themselves are kept in float, a tenth of them at a time, and
the model is quantized and scored again. A layer's own error is the SQNR (fp32 vs int8 graph,
on a few val images, deploy/agreement.py) its inputs arrive with minus the SQNR of its output:
ranking by the output's SQNR alone picks layers late in the graph, where the error of
everything before them has piled up (on the demo model that search kept 80 of 92 layers float
before a 0.2-point budget held, and reached the layer that lost most, the first convolution,
whose input is the exact image, only in its last round; this ranking needs 10 layers). The
SQNR is measured afresh each round, since one layer kept in float changes the error of every
layer after it. Ends within the budget (saying which layers stayed float, the AP and the
latency), or with one line when every such layer is float and the budget is still not met.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
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


@dataclass(frozen=True)
class Layer:
    """A quantizable node: its name (what quantize_int8 excludes by) and the tensors it reads
    that are not weights (a Resize's scales, a constant, are not compared)."""

    name: str
    inputs: tuple[str, ...]


def quantizable_layers(onnx_path: Path, op_types: tuple[str, ...]) -> dict[str, Layer]:
    """Output tensor -> Layer, for every network node of `op_types` (not the float tail)."""
    raw, _, _ = split_raw_and_tail(named_nodes(onnx.load(str(onnx_path))))
    weights = {init.name for init in raw.graph.initializer}
    constants = {
        out for node in raw.graph.node if node.op_type == "Constant" for out in node.output
    }
    data = {"Add": 2}  # how many leading inputs carry activations; one for the rest
    return {
        node.output[0]: Layer(
            node.name,
            tuple(
                name
                for name in node.input[: data.get(node.op_type, 1)]
                if name and name not in weights and name not in constants
            ),
        )
        for node in raw.graph.node
        if node.op_type in op_types
    }


def rank_by_added_error(layers: dict[str, Layer], sqnr_db: dict[str, float]) -> list[str]:
    """Names of the layers whose output differs from fp32 (finite SQNR), the most error added
    first: input SQNR (the worst of its inputs; exact, so infinite, when not measured, as for
    the image) minus output SQNR, ties broken by the lower output SQNR."""
    rows = []
    for output, layer in layers.items():
        out = sqnr_db.get(output, math.inf)
        if not math.isfinite(out):
            continue  # loses nothing (or is not in the int8 graph): never worth keeping float
        arriving = min((sqnr_db.get(name, math.inf) for name in layer.inputs), default=math.inf)
        rows.append((-(arriving - out), out, layer.name))
    return [name for _, _, name in sorted(rows)]


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
    layers = quantizable_layers(fp32_path, options.op_types)
    tensors = sorted({name for out, layer in layers.items() for name in (out, *layer.inputs)})
    step = max(1, math.ceil(len(layers) / 10))
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
        measured = layer_errors(fp32_path, int8_path, probe, worst=len(tensors), tensors=tensors)
        sqnr = {row["tensor"]: row["sqnr_db"] for row in measured}
        worst = [name for name in rank_by_added_error(layers, sqnr) if name not in kept]
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
