"""train/postprocess.py rebuilt as ONNX nodes, so the exported file outputs final detections.

The graph is written for TensorRT 10's ONNX parser as well as ONNX Runtime: opset >= 17, static
shapes except the batch, every TopK K an initializer, the ONNX NonMaxSuppression op, and fixed-size
padded outputs. Steps (B = batch, K = classes, M = sum over levels of K_l, D = max detections):

    per level: Slice logits (B, N_l, K) -> Reshape (B, N_l*K) -> TopK(K_l) on logits
    Concat levels -> Sigmoid -> scores (B, M); anchor = flat // K, label = flat - anchor * K
    GatherND deltas, Gather anchor centres/sizes -> decode (dw/dh clamped) -> Clip [0, S]
    scores <= threshold -> 0; per-class score matrix (B, K, M) (a box scores only for its label)
    NonMaxSuppression(max D per class) -> (num_selected, 3) [batch, class, box]
    ScatterND the selected scores into a (B, M) matrix of -1 -> TopK(D) -> valid = score > thr
    num_dets = sum(valid); padded boxes / scores / labels with Where (0 / 0 / -1)

Class-aware NMS uses per-class scores rather than batched_nms's coordinate offset: it is exact for
any image size, and each box has one non-zero class score, so TensorRT's NMS layer (which ranks at
most its TopK box limit, 5000, of the scored boxes per image) sees at most M of them. D boxes per
class suffice: the final top D over all classes never takes more than D from one class.
Thresholds: ORT's and TensorRT's NMS keep scores strictly above score_threshold and suppress IoU
strictly above iou_threshold, as torchvision does; scores at or below the threshold are zeroed
before NMS anyway, so the NMS score_threshold only skips work.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from common.contract import OUTPUT_NAMES, PostprocessConfig
from train.model.box_coder import DELTA_CLAMP
from train.postprocess import candidates_per_level

MIN_OPSET = 17


class _NodeBuilder:
    """Collects nodes and initializers under one name prefix; returns output names."""

    def __init__(self, prefix: str = "post/") -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{self.prefix}{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], num_outputs: int = 1, **attrs) -> list[str]:
        name = self._name(op_type.lower())
        outputs = [f"{name}_out{i}" for i in range(num_outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=name, **attrs))
        return outputs

    def op1(self, op_type: str, inputs: list[str], **attrs) -> str:
        return self.op(op_type, inputs, **attrs)[0]

    def rename_output(self, old: str, new: str) -> None:
        """Give the last node that produced `old` the graph-output name `new`."""
        for node in reversed(self.nodes):
            if old in node.output:
                node.output[list(node.output).index(old)] = new
                return
        raise KeyError(old)


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def _select_topk_per_level(
    g: _NodeBuilder,
    cls_logits: str,
    anchors_per_level: list[int],
    num_classes: int,
    config: PostprocessConfig,
) -> tuple[str, str]:
    """Per-level TopK on logits; returns logits (B, M) and flat (anchor*K + class) ids (B, M)."""
    sizes = candidates_per_level(anchors_per_level, num_classes, config)
    values, flat_ids = [], []
    start = 0
    for level, (count, k) in enumerate(zip(anchors_per_level, sizes, strict=True)):
        sliced = g.op1(
            "Slice",
            [cls_logits, g.const("start", _i64(start)), g.const("end", _i64(start + count))]
            + [g.const("axes", _i64(1))],
        )
        flat = g.op1("Reshape", [sliced, g.const("shape", _i64(0, count * num_classes))])
        top_vals, top_idx = g.op(
            "TopK", [flat, g.const(f"k_level{level}", _i64(k))], 2, axis=1, largest=1, sorted=1
        )
        values.append(top_vals)
        flat_ids.append(g.op1("Add", [top_idx, g.const("offset", _i64(start * num_classes))]))
        start += count
    return g.op1("Concat", values, axis=1), g.op1("Concat", flat_ids, axis=1)


def _decode_and_clip(
    g: _NodeBuilder, box_deltas: str, anchor_idx: str, anchors: torch.Tensor, img_size: int
) -> str:
    """Boxes (B, M, 4): box_coder.decode_boxes on the selected anchors, clipped to [0, S].

    Anchor widths and centres are computed with the same float32 torch ops as decode_boxes, so
    both implementations start from bit-identical numbers.
    """
    anchors = anchors.detach().float().cpu()
    aw = anchors[:, 2] - anchors[:, 0]
    ah = anchors[:, 3] - anchors[:, 1]
    anchor_xy = torch.stack([anchors[:, 0] + 0.5 * aw, anchors[:, 1] + 0.5 * ah], dim=1)
    anchor_wh = torch.stack([aw, ah], dim=1)
    sel_xy = g.op1("Gather", [g.const("anchor_xy", anchor_xy.numpy()), anchor_idx], axis=0)
    sel_wh = g.op1("Gather", [g.const("anchor_wh", anchor_wh.numpy()), anchor_idx], axis=0)
    idx3 = g.op1("Unsqueeze", [anchor_idx, g.const("axes", _i64(2))])
    deltas = g.op1("GatherND", [box_deltas, idx3], batch_dims=1)  # (B, M, 4)
    axes2 = g.const("axes", _i64(2))
    d_xy = g.op1("Slice", [deltas, g.const("s", _i64(0)), g.const("e", _i64(2)), axes2])
    d_wh = g.op1("Slice", [deltas, g.const("s", _i64(2)), g.const("e", _i64(4)), axes2])
    centre = g.op1("Add", [g.op1("Mul", [d_xy, sel_wh]), sel_xy])
    clamped = g.op1("Min", [d_wh, g.const("delta_clamp", _f32(DELTA_CLAMP))])
    half = g.op1(
        "Mul", [g.op1("Mul", [g.const("half", _f32(0.5)), g.op1("Exp", [clamped])]), sel_wh]
    )
    boxes = g.op1("Concat", [g.op1("Sub", [centre, half]), g.op1("Add", [centre, half])], axis=2)
    lo, hi = g.const("clip_min", np.float32(0.0)), g.const("clip_max", np.float32(img_size))
    return g.op1("Clip", [boxes, lo, hi])


def _nms_keep_scores(
    g: _NodeBuilder,
    boxes: str,
    scores: str,
    labels: str,
    num_classes: int,
    config: PostprocessConfig,
) -> str:
    """(B, M) matrix: the score of every candidate that survives class-aware NMS, else -1."""
    thr = g.const("score_thr", _f32(config.score_threshold))
    above = g.op1("Greater", [scores, thr])
    masked = g.op1("Where", [above, scores, g.const("zero", _f32(0.0))])  # (B, M)
    class_ids = g.const("class_ids", np.arange(num_classes, dtype=np.int64).reshape(1, -1, 1))
    axes1 = g.const("axes", _i64(1))
    is_class = g.op1("Equal", [g.op1("Unsqueeze", [labels, axes1]), class_ids])  # (B, K, M)
    per_class = g.op1(
        "Where", [is_class, g.op1("Unsqueeze", [masked, axes1]), g.const("zero", _f32(0.0))]
    )
    selected = g.op1(
        "NonMaxSuppression",
        [
            boxes,
            per_class,
            g.const("max_per_class", _i64(config.max_detections)),
            g.const("iou_thr", _f32(config.nms_iou)),
            g.const("nms_score_thr", _f32(config.score_threshold)),
        ],
        center_point_box=0,
    )  # (num_selected, 3): batch, class, box
    batch_box = g.op1("Gather", [selected, g.const("cols", _i64(0, 2))], axis=1)  # (S, 2)
    kept = g.op1("GatherND", [masked, batch_box])  # (S,)
    minus_one = helper.make_tensor("minus_one", TensorProto.FLOAT, [1], [-1.0])
    init = g.op1("ConstantOfShape", [g.op1("Shape", [masked])], value=minus_one)
    return g.op1("ScatterND", [init, batch_box, kept])


def _pad_outputs(
    g: _NodeBuilder, keep_scores: str, boxes: str, labels: str, m: int, config: PostprocessConfig
) -> dict[str, str]:
    """TopK(D) over the surviving scores and the padded num_dets / boxes / scores / labels."""
    max_dets = config.max_detections
    if m < max_dets:  # TopK's K may not exceed the axis; pad with never-valid -1 columns
        pads = g.const("pads", _i64(0, 0, 0, max_dets - m))
        keep_scores = g.op1("Pad", [keep_scores, pads, g.const("pad_value", np.float32(-1.0))])
    top_scores, top_idx = g.op(
        "TopK", [keep_scores, g.const("k_final", _i64(max_dets))], 2, axis=1, largest=1, sorted=1
    )
    if m < max_dets:  # padded columns point past M; clamp them (their rows are masked below)
        top_idx = g.op1("Min", [top_idx, g.const("last", _i64(m - 1))])
    valid = g.op1("Greater", [top_scores, g.const("score_thr", _f32(config.score_threshold))])
    out_scores = g.op1("Where", [valid, top_scores, g.const("zero", _f32(0.0))])
    sel_labels = g.op1("GatherElements", [labels, top_idx], axis=1)
    out_labels = g.op1("Where", [valid, sel_labels, g.const("no_label", _i64(-1))])
    axes2 = g.const("axes", _i64(2))
    sel_boxes = g.op1("GatherND", [boxes, g.op1("Unsqueeze", [top_idx, axes2])], batch_dims=1)
    valid3 = g.op1("Unsqueeze", [valid, axes2])
    out_boxes = g.op1("Where", [valid3, sel_boxes, g.const("zero", _f32(0.0))])
    count = g.op1(
        "ReduceSum",
        [g.op1("Cast", [valid], to=TensorProto.FLOAT), g.const("axes", _i64(1))],
        keepdims=0,
    )  # summed in float: exact for counts this small, and every runtime reduces floats
    num_dets = g.op1("Cast", [count], to=TensorProto.INT64)
    return {"num_dets": num_dets, "boxes": out_boxes, "scores": out_scores, "labels": out_labels}


def build_postprocess_nodes(
    cls_logits: str,
    box_deltas: str,
    anchors: torch.Tensor,
    anchors_per_level: list[int],
    num_classes: int,
    img_size: int,
    config: PostprocessConfig,
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Nodes and initializers that turn `cls_logits` (B, N, K) and `box_deltas` (B, N, 4) into
    the four tensors named by OUTPUT_NAMES (see the module docstring for shapes)."""
    if anchors.shape[0] != sum(anchors_per_level):
        raise ValueError(
            f"{anchors.shape[0]} anchors but anchors_per_level sums to {sum(anchors_per_level)}"
        )
    g = _NodeBuilder()
    logits, flat_ids = _select_topk_per_level(g, cls_logits, anchors_per_level, num_classes, config)
    scores = g.op1("Sigmoid", [logits])
    k_const = g.const("num_classes", _i64(num_classes))
    anchor_idx = g.op1("Div", [flat_ids, k_const])  # int64 Div truncates; ids are >= 0
    labels = g.op1("Sub", [flat_ids, g.op1("Mul", [anchor_idx, k_const])])
    boxes = _decode_and_clip(g, box_deltas, anchor_idx, anchors, img_size)
    keep_scores = _nms_keep_scores(g, boxes, scores, labels, num_classes, config)
    m = sum(candidates_per_level(anchors_per_level, num_classes, config))
    outputs = _pad_outputs(g, keep_scores, boxes, labels, m, config)
    for name in OUTPUT_NAMES:
        g.rename_output(outputs[name], name)
    return g.nodes, g.initializers


def output_value_infos(
    batch_dim: str | int, config: PostprocessConfig
) -> list[onnx.ValueInfoProto]:
    """Graph outputs with static shapes except the batch dimension."""
    d = config.max_detections
    return [
        helper.make_tensor_value_info("num_dets", TensorProto.INT64, [batch_dim]),
        helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch_dim, d, 4]),
        helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch_dim, d]),
        helper.make_tensor_value_info("labels", TensorProto.INT64, [batch_dim, d]),
    ]


def append_postprocess(
    model: onnx.ModelProto,
    anchors: torch.Tensor,
    anchors_per_level: list[int],
    num_classes: int,
    img_size: int,
    config: PostprocessConfig,
    cls_name: str = "cls_logits",
    box_name: str = "box_deltas",
) -> onnx.ModelProto:
    """Replace the raw outputs `cls_name`, `box_name` of `model` (edited in place and returned)
    by the four padded detection outputs."""
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ValueError(f"post-processing graph needs opset >= {MIN_OPSET}, model has {opset}")
    raw_outputs = {o.name for o in model.graph.output}
    if not {cls_name, box_name} <= raw_outputs:
        raise ValueError(f"model outputs {sorted(raw_outputs)} lack {cls_name!r}/{box_name!r}")
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch = batch_dim.dim_param or batch_dim.dim_value or "batch"
    nodes, initializers = build_postprocess_nodes(
        cls_name, box_name, anchors, anchors_per_level, num_classes, img_size, config
    )
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(initializers)
    del model.graph.output[:]
    model.graph.output.extend(output_value_infos(batch, config))
    return model
