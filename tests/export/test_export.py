"""Post-processing (PyTorch and ONNX graph), ONNX export, runtime parity and the TensorRT check."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from common.contract import Detections, PostprocessConfig
from common.errors import InputError
from deploy.metadata import ModelMetadata
from export.compat import check_tensorrt_compat
from export.onnx import (
    check_parity,
    compare_detections,
    export_onnx,
    read_postprocess_config,
    run_onnxruntime,
)
from tests.oracles.model_files import build_postprocess_model
from train.model.anchors import AnchorSpec, anchors_per_level, generate_anchors
from train.model.box_coder import DELTA_CLAMP
from train.model.retinanet import ModelConfig, RetinaDetector
from train.postprocess import postprocess
from train.predict import TorchPredictor

NUM_CLASSES, IMG_SIZE = 3, 64


def _run_both(logits, deltas, anchors, per_level, img_size, config) -> tuple[dict, dict]:
    """The same hand-made head outputs through train.postprocess and the standalone ONNX graph."""
    ref = postprocess(logits, deltas, anchors, per_level, img_size, config)
    graph = build_postprocess_model(anchors, per_level, logits.shape[2], img_size, config)
    onnx.checker.check_model(graph, full_check=True)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {"cls_logits": logits.numpy(), "box_deltas": deltas.numpy()}
    names = [o.name for o in session.get_outputs()]
    return {k: v.numpy() for k, v in ref.items()}, dict(
        zip(names, session.run(None, feeds), strict=True)
    )


def _as_dets(out: dict) -> Detections:
    return Detections(out["num_dets"], out["boxes"], out["scores"], out["labels"])


def test_hand_worked_nms_example() -> None:
    """Two overlapping anchors (IoU 0.9 after clipping), two classes, one candidate under 0.05:
    the weaker same-class box is suppressed, the other class survives, the rest is padding."""
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    logits = torch.tensor([[[2.0, -5.0], [1.0, 0.0]]])  # sigmoid: .881 .007 | .731 .5
    deltas = torch.zeros(1, 2, 4)
    for config, expected in [
        (PostprocessConfig(), [(0, 2.0, [0, 0, 10, 10]), (1, 0.0, [1, 0, 10, 10])]),
        (
            PostprocessConfig(nms_iou=0.95),
            [(0, 2.0, [0, 0, 10, 10]), (0, 1.0, [1, 0, 10, 10]), (1, 0.0, [1, 0, 10, 10])],
        ),
    ]:
        for out in _run_both(logits, deltas, anchors, [2], 10, config):
            n = len(expected)
            assert out["num_dets"].tolist() == [n]
            assert out["labels"][0, :n].tolist() == [label for label, _, _ in expected]
            want_scores = [1 / (1 + math.exp(-logit)) for _, logit, _ in expected]
            np.testing.assert_allclose(out["scores"][0, :n], want_scores, rtol=1e-6)
            np.testing.assert_allclose(out["boxes"][0, :n], [box for _, _, box in expected])
            assert out["boxes"].shape == (1, 100, 4)  # D > M = 4: the graph pads before TopK
            assert (out["scores"][0, n:] == 0).all() and (out["labels"][0, n:] == -1).all()
            assert (out["boxes"][0, n:] == 0).all()


def test_score_threshold_is_strict_and_decode_is_clamped() -> None:
    """Just above 0.05 kept, just below dropped; a huge dw/dh is clamped as in box_coder."""
    anchors = torch.tensor(
        [[0.0, 0.0, 16.0, 16.0], [4992.0, 4992.0, 5008.0, 5008.0], [9000.0, 0.0, 9016.0, 16.0]]
    )
    at_threshold = math.log(0.05 / 0.95)
    logits = torch.tensor([[[at_threshold + 1e-3], [3.0], [at_threshold - 1e-3]]])
    deltas = torch.tensor([[[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 50.0, 50.0], [0.0] * 4]])
    half = 0.5 * 16 * math.exp(DELTA_CLAMP)  # 500 px
    for out in _run_both(logits, deltas, anchors, [3], 10000, PostprocessConfig()):
        assert out["num_dets"].tolist() == [2]
        np.testing.assert_allclose(out["boxes"][0, 0], [5000 - half] * 2 + [5000 + half] * 2)
        np.testing.assert_allclose(out["boxes"][0, 1], [0, 0, 16, 16])


@pytest.mark.parametrize(
    "config",
    [
        PostprocessConfig(),
        PostprocessConfig(topk_per_level=7, max_detections=5),
        PostprocessConfig(topk_per_level=4, nms_iou=0.3, max_detections=100),
    ],
)
def test_graph_matches_torch_on_random_head_outputs(config: PostprocessConfig) -> None:
    spec = AnchorSpec(img_size=IMG_SIZE, anchor_scale=2.0)
    anchors, per_level = generate_anchors(spec), anchors_per_level(spec)
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(3, anchors.shape[0], NUM_CLASSES, generator=gen) * 2 - 2
    deltas = torch.randn(3, anchors.shape[0], 4, generator=gen) * 0.5
    ref, got = _run_both(logits, deltas, anchors, per_level, IMG_SIZE, config)
    result = compare_detections(_as_dets(ref), _as_dets(got))
    assert result["match"], result
    assert result["num_dets_reference"] > 0


@pytest.fixture(scope="module")
def tiny_model() -> RetinaDetector:
    """Random weights; cls bias raised from the 0.01 prior so ~60 detections per image pass 0.05
    (some images fill fewer than D rows, so padding is exercised too)."""
    torch.manual_seed(0)
    model = RetinaDetector(
        ModelConfig(num_classes=NUM_CLASSES, img_size=IMG_SIZE, fpn_channels=32, head_convs=1)
    )
    with torch.no_grad():
        torch.nn.init.normal_(model.head.cls_out.weight, std=0.1)
        model.head.cls_out.bias.fill_(-5.0)
        torch.nn.init.normal_(model.head.box_out.weight, std=0.05)
    return model.eval()


@pytest.fixture(scope="module")
def exported(tiny_model: RetinaDetector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return export_onnx(tiny_model, out, {"class_names": '["a", "b", "c"]', "loss": "focal"})


def _images(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((batch, 3, IMG_SIZE, IMG_SIZE)) * 255).astype(np.float32)


def test_export_file_contract(exported: Path) -> None:
    model = onnx.load(str(exported))
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["images"]
    dims = [d.dim_value or d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, IMG_SIZE, IMG_SIZE]
    assert [o.name for o in model.graph.output] == ["num_dets", "boxes", "scores", "labels"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["loss"] == "focal" and props["class_names"] == '["a", "b", "c"]'
    assert read_postprocess_config(exported) == PostprocessConfig()


def test_onnxruntime_matches_torch(tiny_model: RetinaDetector, exported: Path) -> None:
    result = check_parity(tiny_model, exported, _images(3))
    assert result["match"], result
    assert result["num_dets_reference"] > 50
    assert result["max_box_diff"] < 1e-2 and result["max_score_diff"] < 1e-4


def test_dynamic_batch_and_padding(exported: Path) -> None:
    images = _images(3, seed=1)
    three = run_onnxruntime(exported, images)
    one = run_onnxruntime(exported, images[:1])
    assert three.boxes.shape == (3, 100, 4) and one.boxes.shape == (1, 100, 4)
    first = Detections(three.num_dets[:1], three.boxes[:1], three.scores[:1], three.labels[:1])
    assert compare_detections(first, one)["match"]
    assert three.num_dets.dtype == np.int64 and three.labels.dtype == np.int64
    assert three.scores.dtype == np.float32 and three.boxes.dtype == np.float32
    assert (three.num_dets < 100).any(), "fixture should leave padding rows"
    for b, n in enumerate(three.num_dets):
        assert (three.scores[b, n:] == 0).all() and (three.labels[b, n:] == -1).all()
        assert (three.boxes[b, n:] == 0).all()
        assert (three.scores[b, :n] > 0.05).all() and (three.labels[b, :n] >= 0).all()
        assert (np.diff(three.scores[b, :n]) <= 0).all()  # decreasing score order


def test_torch_predictor_contract(tiny_model: RetinaDetector) -> None:
    tiny_model.train()
    metadata = ModelMetadata(class_names=["a", "b", "c"], category_ids=[1, 2, 3], img_size=IMG_SIZE)
    predictor = TorchPredictor(tiny_model, metadata=metadata)
    dets = predictor(_images(2))
    assert tiny_model.training, "predictor must restore the caller's mode"
    tiny_model.eval()
    assert predictor.backend_name == "pytorch" and predictor.precision == "fp32"
    assert predictor.metadata == metadata  # the thresholds it runs: the defaults, as stated
    tighter = PostprocessConfig(nms_iou=0.7)
    assert TorchPredictor(tiny_model, metadata, config=tighter).metadata.postprocess == tighter
    assert dets.num_dets.shape == (2,) and dets.num_dets.dtype == np.int64
    assert dets.boxes.shape == (2, 100, 4) and dets.boxes.dtype == np.float32
    with pytest.raises(InputError, match="expects a numpy array"):
        predictor(_images(1)[:, :, :32])


def test_export_never_leaves_half_written_file(
    tiny_model: RetinaDetector, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous export")

    def disk_full(fd: int) -> None:  # the bytes are written; flushing them to disk fails
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="disk full"):
        export_onnx(tiny_model, target, {})
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    with pytest.raises(TypeError, match="must be str"):
        export_onnx(tiny_model, target, {"img_size": 64})  # type: ignore[dict-item]


def test_compat_passes_on_our_export(exported: Path) -> None:
    assert check_tensorrt_compat(exported) == []


def _topk_model(k_is_input: bool, spatial: int | str, opset: int = 17) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, spatial])
    inputs, inits = [x], []
    if k_is_input:
        inputs.append(helper.make_tensor_value_info("k", TensorProto.INT64, [1]))
    else:
        inits.append(helper.make_tensor("k", TensorProto.INT64, [1], [2]))
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, name="topk")
    outputs = [
        helper.make_tensor_value_info("v", TensorProto.FLOAT, ["batch", 2, spatial]),
        helper.make_tensor_value_info("i", TensorProto.INT64, ["batch", 2, spatial]),
    ]
    graph = helper.make_graph([node], "g", inputs, outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_compat_flags_what_tensorrt_rejects() -> None:
    assert check_tensorrt_compat(_topk_model(k_is_input=False, spatial=8)) == []
    problems = check_tensorrt_compat(_topk_model(k_is_input=True, spatial=8))
    assert any("TopK" in p and "must be a constant" in p for p in problems), problems
    problems = check_tensorrt_compat(_topk_model(k_is_input=False, spatial="width"))
    assert any("dim 2 is dynamic (width)" in p for p in problems), problems
    problems = check_tensorrt_compat(_topk_model(k_is_input=False, spatial=8, opset=13))
    assert problems == ["opset 13 < 17 (required)"]
    custom = _topk_model(k_is_input=False, spatial=8)
    custom.graph.node.append(helper.make_node("Unique", ["x"], ["u"], name="u"))
    assert any("op Unique" in p for p in check_tensorrt_compat(custom))


def test_io_binding_path_gives_the_same_detections(
    tiny_model: RetinaDetector, tmp_path: Path
) -> None:
    """IO binding (the default on CUDA/TensorRT) is checked here on the CPU provider."""
    from deploy.backends.onnxruntime import OnnxRuntimePredictor

    metadata = ModelMetadata(class_names=["a", "b", "c"], category_ids=[1, 2, 3], img_size=IMG_SIZE)
    path = export_onnx(tiny_model, tmp_path / "model.onnx", metadata.to_props())
    plain = OnnxRuntimePredictor(path, provider="cpu")
    bound = OnnxRuntimePredictor(path, provider="cpu", io_binding=True)
    assert not plain.io_binding and bound.io_binding
    images = _images(2, seed=3)
    expected, actual = plain(images), bound(images)
    assert expected.num_dets.sum() > 0
    for field in ("num_dets", "boxes", "scores", "labels"):
        np.testing.assert_array_equal(getattr(actual, field), getattr(expected, field))
