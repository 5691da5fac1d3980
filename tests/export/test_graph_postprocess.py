"""export/graph_postprocess.py: the constants the tail is built from, and append_postprocess on a
hand-made two-output "network" (no torch export needed, so these run in well under a second)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from common.contract import PostprocessConfig
from export.graph_postprocess import append_postprocess
from tests.oracles.model_files import build_postprocess_model
from train.model.box_coder import DELTA_CLAMP

# Two 10 x 10 anchors one pixel apart, two classes, a 10 px image (the hand-worked NMS example of
# tests/export/test_export.py): centres (5, 5) and (6, 5), sizes 10 x 10.
ANCHORS = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
NUM_CLASSES, IMG_SIZE = 2, 10


def _i64(*values: int) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def _f32(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


def _constants_by_role(graph: onnx.GraphProto) -> dict[str, list[np.ndarray]]:
    """Initializers grouped by the role in their name "post/<role>_<n>", in creation order."""
    found: dict[str, list[np.ndarray]] = {}
    for init in graph.initializer:
        assert init.name.startswith("post/"), init.name
        role = init.name.removeprefix("post/").rsplit("_", 1)[0]
        found.setdefault(role, []).append(numpy_helper.to_array(init))
    return found


def _assert_same_constants(got: dict[str, list[np.ndarray]], want: dict[str, list]) -> None:
    assert sorted(got) == sorted(want)
    for role, arrays in want.items():
        assert len(got[role]) == len(arrays), role
        for actual, expected in zip(got[role], arrays, strict=True):
            assert actual.dtype == expected.dtype, role
            np.testing.assert_array_equal(actual, expected, err_msg=role)


# (score_threshold 0.25, nms_iou 0.4, topk_per_level 3): M = min(3, 2 anchors * 2 classes) = 3.
SHARED = {
    "start": [_i64(0)],
    "end": [_i64(2)],
    "shape": [_i64(0, 4)],  # (B, N_l * K)
    "k_level0": [_i64(3)],
    "offset": [_i64(0)],
    "num_classes": [_i64(2)],
    "anchor_xy": [np.array([[5, 5], [6, 5]], np.float32)],
    "anchor_wh": [np.array([[10, 10], [10, 10]], np.float32)],
    "axes": [_i64(1), _i64(2), _i64(2), _i64(1), _i64(2), _i64(1)],
    "s": [_i64(0), _i64(2)],  # deltas[..., 0:2] are dx, dy; deltas[..., 2:4] dw, dh
    "e": [_i64(2), _i64(4)],
    "delta_clamp": [_f32(DELTA_CLAMP)],
    "half": [_f32(0.5)],
    "clip_min": [np.float32(0.0)],
    "clip_max": [np.float32(IMG_SIZE)],
    "score_thr": [_f32(0.25), _f32(0.25)],  # before NMS and for the final valid mask
    "zero": [_f32(0.0)] * 4,
    "class_ids": [np.array([[[0], [1]]], np.int64)],
    "iou_thr": [_f32(0.4)],
    "nms_score_thr": [_f32(0.25)],
    "cols": [_i64(0, 2)],  # (batch, box) columns of NonMaxSuppression's (batch, class, box)
    "no_label": [_i64(-1)],
}


@pytest.mark.parametrize(
    ("max_detections", "padding"),
    [
        # D = 5 > M = 3: two never-valid -1 columns before TopK(5), indices clamped to M - 1 = 2
        (5, {"pads": [_i64(0, 0, 0, 2)], "pad_value": [np.float32(-1.0)], "last": [_i64(2)]}),
        (3, {}),  # D = M: TopK(3) needs no padding and no clamp
    ],
)
def test_tail_constants_hold_the_config_values_under_named_roles(
    max_detections: int, padding: dict[str, list]
) -> None:
    """Every constant of the tail is named "post/<role>_<n>" (export/tensorrt.py pins "post/" to
    FP32) and holds what the config and anchors give, worked out by hand above."""
    config = PostprocessConfig(
        score_threshold=0.25, nms_iou=0.4, topk_per_level=3, max_detections=max_detections
    )
    model = build_postprocess_model(ANCHORS, [2], NUM_CLASSES, IMG_SIZE, config)
    graph = model.graph
    want = SHARED | padding | {"max_per_class": [_i64(max_detections)]}
    want["k_final"] = [_i64(max_detections)]
    _assert_same_constants(_constants_by_role(graph), want)
    (fill,) = [n for n in graph.node if n.op_type == "ConstantOfShape"]
    value = fill.attribute[0].t
    assert value.name == "minus_one" and numpy_helper.to_array(value).tolist() == [-1.0]
    # nodes and constants share one counter: names are numbered 1..n in build order, all unique
    numbers = [int(n.name.rsplit("_", 1)[1]) for n in graph.node if n.name.startswith("post/")]
    numbers += [int(i.name.rsplit("_", 1)[1]) for i in graph.initializer]
    assert len(numbers) == len(graph.node) + len(graph.initializer)
    assert sorted(numbers) == list(range(1, len(numbers) + 1))


def test_standalone_model_inputs_outputs_and_name() -> None:
    model = build_postprocess_model(ANCHORS, [2], NUM_CLASSES, IMG_SIZE, PostprocessConfig())
    onnx.checker.check_model(model, full_check=True)

    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]

    assert model.graph.name == "postprocess"
    assert {i.name: dims(i) for i in model.graph.input} == {
        "cls_logits": ["batch", 2, NUM_CLASSES],
        "box_deltas": ["batch", 2, 4],
    }
    assert [dims(o)[0] for o in model.graph.output] == ["batch"] * 4


def _split_network(
    batch: onnx.TensorShapeProto.Dimension | None, opsets: list[onnx.OperatorSetIdProto]
) -> onnx.ModelProto:
    """A stand-in network: images (B, 2, K + 4) split into cls_logits (B, 2, K), box_deltas."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, [None, 2, NUM_CLASSES + 4])
    dim0 = images.type.tensor_type.shape.dim[0]
    if batch is None:
        dim0.Clear()
    else:
        dim0.CopyFrom(batch)
    split = helper.make_node(
        "Split", ["images", "sizes"], ["cls_logits", "box_deltas"], axis=2, name="net/split"
    )
    outputs = [
        helper.make_tensor_value_info("cls_logits", TensorProto.FLOAT, ["b", 2, NUM_CLASSES]),
        helper.make_tensor_value_info("box_deltas", TensorProto.FLOAT, ["b", 2, 4]),
    ]
    sizes = numpy_helper.from_array(_i64(NUM_CLASSES, 4), "sizes")
    graph = helper.make_graph([split], "net", [images], outputs, [sizes])
    return helper.make_model(graph, opset_imports=opsets)


def _dim(param: str = "", value: int = 0) -> onnx.TensorShapeProto.Dimension:
    dim = onnx.TensorShapeProto.Dimension()
    if param:
        dim.dim_param = param
    if value:
        dim.dim_value = value
    return dim


def test_append_postprocess_replaces_the_raw_outputs_by_detections() -> None:
    """Default output names cls_logits / box_deltas; the hand-worked NMS case end to end: class 0's
    weaker box (IoU 0.9) is suppressed, class 1's survives; the batch dim follows the input."""
    network = _split_network(_dim(param="n"), [helper.make_opsetid("", 17)])
    config = PostprocessConfig()
    returned = append_postprocess(network, ANCHORS, [2], NUM_CLASSES, IMG_SIZE, config)
    assert returned is network  # edited in place and returned
    assert [o.name for o in network.graph.output] == ["num_dets", "boxes", "scores", "labels"]
    assert {o.type.tensor_type.shape.dim[0].dim_param for o in network.graph.output} == {"n"}
    onnx.checker.check_model(network, full_check=True)
    session = ort.InferenceSession(network.SerializeToString(), providers=["CPUExecutionProvider"])
    logits = [[2.0, -5.0], [1.0, 0.0]]  # sigmoid: .881 .007 | .731 .5
    images = np.array([[row + [0.0] * 4 for row in logits]], np.float32)
    num_dets, boxes, scores, labels = session.run(None, {"images": images})
    assert num_dets.tolist() == [2]
    assert labels[0, :3].tolist() == [0, 1, -1]
    np.testing.assert_allclose(scores[0, :2], [1 / (1 + math.exp(-2.0)), 0.5], rtol=1e-6)
    np.testing.assert_allclose(boxes[0, :2], [[0, 0, 10, 10], [1, 0, 10, 10]])


@pytest.mark.parametrize(
    ("batch", "expected"),
    [(_dim(value=4), 4), (None, "batch")],
    ids=["static", "unknown"],
)
def test_output_batch_dim_is_the_inputs_or_named_batch(
    batch: onnx.TensorShapeProto.Dimension | None, expected: int | str
) -> None:
    network = _split_network(batch, [helper.make_opsetid("", 17)])
    append_postprocess(network, ANCHORS, [2], NUM_CLASSES, IMG_SIZE, PostprocessConfig())
    for output in network.graph.output:
        dim = output.type.tensor_type.shape.dim[0]
        assert (dim.dim_param or dim.dim_value) == expected


def test_opset_is_read_from_either_spelling_of_the_default_domain() -> None:
    explicit = _split_network(_dim(param="n"), [helper.make_opsetid("ai.onnx", 18)])
    append_postprocess(explicit, ANCHORS, [2], NUM_CLASSES, IMG_SIZE, PostprocessConfig())
    assert explicit.graph.output[0].name == "num_dets"
    for opsets, seen in [
        ([helper.make_opsetid("", 16)], 16),
        ([helper.make_opsetid("com.microsoft", 1)], 0),  # no default-domain opset at all
    ]:
        network = _split_network(_dim(param="n"), opsets)
        with pytest.raises(ValueError, match=f"needs opset >= 17, model has {seen}$"):
            append_postprocess(network, ANCHORS, [2], NUM_CLASSES, IMG_SIZE, PostprocessConfig())
