"""Reduced precision on the ONNX side: static INT8 (QDQ) and mixed FP16, post-processing in float.

INT8 uses ONNX Runtime's static quantizer with calibration images from the dataset. The model is
split at the head's raw outputs (`cls_logits`, `box_deltas`): only the network before them is
quantized, and the decode + NMS tail (export/graph_postprocess.py) is re-attached untouched, so
box arithmetic, sigmoid scores and NMS stay float32. By default the head's last convolutions and
the reshapes/concats that lay their outputs out per anchor run in float too: the logits then keep
their float resolution, which is what the score ranking (and so AP) depends on.

Two targets: "cpu" (uint8 activations, int8 per-channel weights, int32 bias: what ONNX Runtime's
x86 kernels are fastest with) and "tensorrt" (symmetric int8 activations and weights, float bias:
the only Q/DQ form TensorRT's explicit quantization accepts; TensorRT 11 has no other INT8 path).

FP16 (for TensorRT 11's strongly typed networks, or ONNX Runtime on CUDA) converts the network to
float16 with float32 inputs/outputs and keeps the tail and the normalization layers in float32.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from common.contract import INPUT_NAME, fixed_batch
from common.errors import InputError
from common.image import PAD_VALUE
from export.compat import all_nodes
from export.entropy import entropy_threshold
from export.onnx import _save_atomic

log = logging.getLogger(__name__)

RAW_OUTPUTS = ("cls_logits", "box_deltas")
FPN_SCOPE = "/fpn/"  # the traced two-stage graph's FPN nodes (export/onnx_two_stage.py)
TARGETS = ("cpu", "tensorrt")
# Ops that only move data: the head's per-anchor layout chain between its last convs and outputs.
_LAYOUT_OPS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity"})
FP16_FLOAT_OPS = ("InstanceNormalization", "LayerNormalization", "BatchNormalization")


@dataclass(frozen=True)
class QuantizeOptions:
    """How to quantize. `op_types`: ONNX ops given Q/DQ (everything else stays float)."""

    target: str = "cpu"
    op_types: tuple[str, ...] = ("Conv", "Add", "MaxPool", "Resize")
    float_head_outputs: bool = True
    per_channel: bool = True
    method: str = "minmax"  # or "entropy", "percentile"
    batch_size: int = 8
    float_nodes: tuple[str, ...] = ()  # more nodes kept in float (by name after named_nodes)


def calibration_batch_size(options: QuantizeOptions) -> int:
    """The batch the calibration images are run in. ONNX Runtime's histogram calibrators
    (entropy, percentile) stack every batch's activations into one array, which fails when the
    last batch is shorter (6 images in batches of 4): they get batches of one."""
    return options.batch_size if options.method == "minmax" else 1


class BatchReader:
    """onnxruntime.quantization CalibrationDataReader over (3, S, S) float32 images.

    Images are grouped into batches of `batch_size` (the model's batch axis is dynamic).
    """

    def __init__(self, images: Iterable[np.ndarray], batch_size: int = 8) -> None:
        self._images = iter(images)
        self._batch_size = batch_size
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = [image for _, image in zip(range(self._batch_size), self._images, strict=False)]
        if not batch:
            return None
        self.count += len(batch)
        return {INPUT_NAME: np.ascontiguousarray(np.stack(batch), dtype=np.float32)}


def named_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Give every node a unique name: exclusion lists and the tail split work by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_n{i}"
        seen.add(node.name)
    return model


def network_outputs(model: onnx.ModelProto) -> list[str]:
    """Where the convolutional network ends: the one-stage head's cls_logits and box_deltas,
    or, in the two-stage graph, the FPN's levels (the tensors of the /fpn/ scope that the RPN
    and RoIAlign read); what follows (RPN, RoIAlign, R-CNN head, NMS) stays float."""
    produced = {out for node in model.graph.node for out in node.output}
    if all(name in produced for name in RAW_OUTPUTS):
        return list(RAW_OUTPUTS)
    inside = {
        out for node in model.graph.node if node.name.startswith(FPN_SCOPE) for out in node.output
    }
    read_outside = [
        name
        for node in model.graph.node
        if not node.name.startswith(FPN_SCOPE)
        for name in node.input
        if name in inside
    ]
    if not read_outside:
        missing = [name for name in RAW_OUTPUTS if name not in produced]
        raise ValueError(f"model has no tensors {missing}: not an export of this pipeline")
    return list(dict.fromkeys(read_outside))


def split_raw_and_tail(
    model: onnx.ModelProto,
) -> tuple[onnx.ModelProto, list[onnx.NodeProto], list[onnx.TensorProto]]:
    """(network up to `network_outputs` as its own model, tail nodes, tail initializers).

    The tail is every node the network's outputs do not depend on: the appended
    post-processing, or the two-stage graph's RPN, RoI stage and NMS.
    """
    outputs = network_outputs(model)
    inferred = onnx.shape_inference.infer_shapes(model)  # the extractor needs their value_info
    raw = onnx.utils.Extractor(inferred).extract_model([INPUT_NAME], outputs)
    raw_names = {node.name for node in raw.graph.node}
    tail = [node for node in model.graph.node if node.name not in raw_names]
    used = {name for node in all_nodes(tail) for name in node.input}  # If branches too
    tail_inits = [init for init in model.graph.initializer if init.name in used]
    raw.opset_import.extend(o for o in model.opset_import if o.domain not in ("", "ai.onnx"))
    return raw, tail, tail_inits


def head_output_nodes(raw: onnx.ModelProto) -> list[str]:
    """Nodes from the head's last convolutions to the raw outputs (the convs included).

    Walks back from the outputs through Concat (all inputs) and layout ops (data input only), so
    shape arithmetic feeding a Reshape is not followed into the towers.
    """
    producer = {out: node for node in raw.graph.node for out in node.output}
    found: list[str] = []
    stack = list(RAW_OUTPUTS)
    while stack:
        node = producer.get(stack.pop())
        if node is None or node.name in found:
            continue
        found.append(node.name)
        if node.op_type == "Concat":
            stack.extend(node.input)
        elif node.op_type in _LAYOUT_OPS:
            stack.append(node.input[0])
        elif node.op_type != "Conv":
            found.pop()  # something else (e.g. a norm or activation): not part of the chain
    return found


def _toposort(graph: onnx.GraphProto) -> None:
    """Reorder nodes so each comes after its inputs' producers (the fp16 converter appends the
    casts it adds for float32 graph inputs at the end, which ONNX's checker rejects)."""
    producer = {out: i for i, node in enumerate(graph.node) for out in node.output if out}
    done: set[int] = set()
    order: list[int] = []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            index, expanded = stack.pop()
            if index in done:
                continue
            if expanded:
                done.add(index)
                order.append(index)
                continue
            stack.append((index, True))
            deps = [producer[name] for name in graph.node[index].input if name in producer]
            stack.extend((d, False) for d in deps if d not in done)

    for i in range(len(graph.node)):
        visit(i)
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def _fold_constant_casts(graph: onnx.GraphProto) -> int:
    """Replace Cast(constant) by a constant of the cast type; returns how many were folded.

    The fp16 converter casts float16 constants back to float32 in front of the ops it keeps in
    float32; TensorRT needs some of those inputs (InstanceNormalization's scale and bias) to be
    constants, not Cast outputs.
    """
    constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    folded = [n for n in graph.node if n.op_type == "Cast" and n.input[0] in constants]
    for node in folded:
        to = next(helper.get_attribute_value(a) for a in node.attribute if a.name == "to")
        value = constants[node.input[0]].astype(helper.tensor_dtype_to_np_dtype(to))
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    folded_ids = {id(n) for n in folded}
    keep = [n for n in graph.node if id(n) not in folded_ids]
    used = {name for n in keep for name in n.input} | {o.name for o in graph.output}
    keep = [n for n in keep if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(keep)
    return len(folded)


def _attach_tail(
    raw: onnx.ModelProto,
    original: onnx.ModelProto,
    tail: list[onnx.NodeProto],
    tail_inits: list[onnx.TensorProto],
) -> onnx.ModelProto:
    """The converted network plus the original float tail, outputs and metadata."""
    model = onnx.ModelProto()
    model.CopyFrom(raw)
    model.graph.node.extend(tail)
    have = {init.name for init in model.graph.initializer}
    model.graph.initializer.extend(init for init in tail_inits if init.name not in have)
    del model.graph.output[:]
    model.graph.output.extend(original.graph.output)
    model.graph.name = original.graph.name
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    model.producer_name = original.producer_name
    return model


class _QuantizerChatter(logging.Filter):
    """Drop the quantizer's root-logger INFO lines (one per bias copy) and its advice to run
    pre-processing (the export is already constant-folded); real warnings still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in record.pathname or "quantization" not in record.pathname:
            return True
        return record.levelno >= logging.WARNING and "pre-processing" not in record.getMessage()


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    chatter = _QuantizerChatter()
    root = logging.getLogger()
    root.addFilter(chatter)
    try:
        yield
    finally:
        root.removeFilter(chatter)


# The entropy calibrator's histogram: TensorRT's setting (2048 bins, thresholds searched from 128
# quantized bins up). ONNX Runtime's quantize_static builds its own with 128 and 128, where the
# search has one candidate, the whole range: "entropy" there gives exactly minmax's ranges
# (measured: every scale equal, onnxruntime 1.32).
ENTROPY_BINS, ENTROPY_QUANTIZED_BINS = 2048, 128


def entropy_ranges(
    raw_path: Path, images: list[np.ndarray], options: QuantizeOptions, tmp: Path
) -> dict[str, tuple[float, float]]:
    """Each activation's (rmin, rmax) by ONNX Runtime's entropy calibrator at ENTROPY_BINS."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    calibrator = create_calibrator(
        raw_path, list(options.op_types), augmented_model_path=str(tmp / "augmented.onnx"),
        calibrate_method=CalibrationMethod.Entropy,
        extra_options={"num_bins": ENTROPY_BINS, "num_quantized_bins": ENTROPY_QUANTIZED_BINS,
                       "symmetric": options.target == "tensorrt"},
    )  # fmt: skip
    with _quiet_quantizer(), contextlib.redirect_stdout(io.StringIO()):  # it prints its settings
        calibrator.collect_data(BatchReader(images, calibration_batch_size(options)))
        # the same search, vectorized: minutes -> seconds at 2048 bins (export/entropy.py)
        calibrator.collector.get_entropy_threshold = entropy_threshold
        computed = calibrator.compute_data()
    return {
        name: (float(np.asarray(data.range_value[0])), float(np.asarray(data.range_value[1])))
        for name, data in computed.data.items()
    }


def _ort_settings(options: QuantizeOptions) -> dict:
    """quantize_static keyword arguments for the target."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if options.method not in methods:
        raise ValueError(f"calibration method {options.method!r}; valid: {', '.join(methods)}")
    if options.target not in TARGETS:
        raise ValueError(f"quantization target {options.target!r}; valid: {', '.join(TARGETS)}")
    extra: dict = {}
    activation = QuantType.QUInt8
    if options.target == "tensorrt":
        activation = QuantType.QInt8
        extra |= {"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False}
    return {
        "quant_format": QuantFormat.QDQ,
        "activation_type": activation,
        "weight_type": QuantType.QInt8,
        "per_channel": options.per_channel,
        "calibrate_method": methods[options.method],
        "op_types_to_quantize": list(options.op_types),
        "extra_options": extra,
    }


def quantize_int8(
    onnx_path: str | Path,
    out_path: str | Path,
    calibration_images: Iterable[np.ndarray],
    options: QuantizeOptions | None = None,
) -> dict:
    """Write a static INT8 QDQ copy of an exported model; returns what was done (JSON-ready).

    `calibration_images` yields (3, S, S) float32 raw 0..255 letterboxed images (as deployed).
    Metadata and output names are kept; the post-processing tail stays float32.
    """
    from onnxruntime.quantization import quantize_static

    options = options or QuantizeOptions()
    settings = _ort_settings(options)
    original = named_nodes(onnx.load(str(onnx_path)))
    raw, tail, tail_inits = split_raw_and_tail(original)
    excluded = head_output_nodes(raw) if options.float_head_outputs else []
    excluded += [name for name in options.float_nodes if name not in excluded]
    if options.method == "entropy":  # two passes over the images: keep them
        calibration_images = list(calibration_images)
    fixed = fixed_batch(
        [d.dim_value or None for d in raw.graph.input[0].type.tensor_type.shape.dim]
    )
    reader = BatchReader(calibration_images, fixed or calibration_batch_size(options))
    with tempfile.TemporaryDirectory(prefix="quantize-") as tmp:
        raw_path, q_path = Path(tmp) / "raw.onnx", Path(tmp) / "raw.int8.onnx"
        onnx.save(raw, str(raw_path))
        if options.method == "entropy":
            ranges = entropy_ranges(raw_path, calibration_images, options, Path(tmp))
            overrides = {name: [{"rmin": np.float32(lo), "rmax": np.float32(hi)}]
                         for name, (lo, hi) in ranges.items()}  # fmt: skip
            settings["extra_options"]["TensorQuantOverrides"] = overrides
        try:
            with _quiet_quantizer():
                quantize_static(
                    str(raw_path), str(q_path), reader, nodes_to_exclude=excluded, **settings
                )
        except ValueError as exc:
            if reader.count == 0:
                raise InputError(f"{onnx_path}: no calibration images to quantize with") from exc
            raise
        quantized = onnx.load(str(q_path))
    model = _attach_tail(quantized, original, tail, tail_inits)
    onnx.checker.check_model(model)
    _save_atomic(model, Path(out_path))
    q_nodes = sum(node.op_type == "QuantizeLinear" for node in model.graph.node)
    log.info(
        "wrote %s: %d QuantizeLinear nodes, %d calibration images", out_path, q_nodes, reader.count
    )
    return {
        "target": options.target,
        "calibration_images": reader.count,
        "calibration_method": options.method,
        "op_types": list(options.op_types),
        "float_nodes": len(excluded) + len(tail),
        "quantize_nodes": q_nodes,
    }


def convert_fp16(onnx_path: str | Path, out_path: str | Path) -> dict:
    """Write a mixed FP16 copy: float16 network, float32 inputs/outputs, tail and norms."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    original = named_nodes(onnx.load(str(onnx_path)))
    raw, tail, tail_inits = split_raw_and_tail(original)
    converted = convert_float_to_float16(
        raw,
        keep_io_types=True,
        op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_FLOAT_OPS),
    )
    _toposort(converted.graph)
    _fold_constant_casts(converted.graph)
    model = _attach_tail(converted, original, tail, tail_inits)
    onnx.checker.check_model(model)
    _save_atomic(model, Path(out_path))
    casts = sum(node.op_type == "Cast" for node in converted.graph.node)
    log.info("wrote %s (fp16 network, %d casts, float32 tail)", out_path, casts)
    return {"float_ops": list(FP16_FLOAT_OPS), "float_nodes": len(tail), "casts": casts}


def spread_indices(total: int, count: int) -> list[int]:
    """`count` indices spread evenly over range(total) (all of them if count >= total)."""
    if count >= total:
        return list(range(total))
    return [int(i) for i in np.linspace(0, total - 1, count).round()]


def calibration_images(
    data: Path, img_size: int, count: int, pad_value: int = PAD_VALUE, split: str = "train"
) -> Iterator[np.ndarray]:
    """Up to `count` letterboxed (3, S, S) float32 images spread over a dataset split.

    The training split by default, so the images the model is scored on never set its ranges.
    """
    from common.datasets.layout import resolve_split

    ann_file, img_dir = resolve_split(Path(data), split)
    return split_images(ann_file, img_dir, img_size, count, pad_value)


def split_image_names(ann_file: Path, count: int) -> list[str]:
    """The file names of the `count` images spread over one COCO file (by image id)."""
    import json

    entries = sorted(json.loads(Path(ann_file).read_text())["images"], key=lambda e: e["id"])
    return [entries[index]["file_name"] for index in spread_indices(len(entries), count)]


def calibration_fingerprint(ann_file: Path, count: int) -> dict[str, str]:
    """What identifies a calibration set: its split file and a hash of its image list."""
    import hashlib

    listed = "\n".join(split_image_names(ann_file, count)).encode()
    return {"calibration_split": Path(ann_file).name,
            "calibration_list_sha256": hashlib.sha256(listed).hexdigest()}  # fmt: skip


def split_images(
    ann_file: Path, img_dir: Path, img_size: int, count: int, pad_value: int = PAD_VALUE
) -> Iterator[np.ndarray]:
    """Up to `count` letterboxed (3, S, S) float32 images spread over one COCO file's images."""
    from PIL import Image

    from common.image import letterbox

    for name in split_image_names(ann_file, count):
        with Image.open(Path(img_dir) / name) as image:
            canvas, _ = letterbox(image, img_size, pad_value)
        yield np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32)
