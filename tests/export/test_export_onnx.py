"""export/onnx.py: the parity comparison on hand-made detections, metadata and file handling.

One tiny export (32 px, 8 FPN channels) serves the export tests; metadata and config tests use the
standalone post-processing graph as a small stand-in file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper

import export.onnx as export_module
from common.contract import POSTPROCESS_PROP, Detections, PostprocessConfig
from export.onnx import (
    check_parity,
    compare_detections,
    export_onnx,
    read_postprocess_config,
    run_onnxruntime,
    update_metadata,
)
from tests.oracles.model_files import build_postprocess_model
from train.model.retinanet import ModelConfig, RetinaDetector

Row = tuple[int, float, list[float]]  # label, score, box
A, C = [10.0, 10.0, 50.0, 50.0], [100.0, 100.0, 300.0, 300.0]


def _dets(*images: list[Row], rows: int = 4) -> Detections:
    """Padded detections (box 0, score 0, label -1) from per-image lists of valid rows."""
    batch = len(images)
    boxes = np.zeros((batch, rows, 4), np.float32)
    scores = np.zeros((batch, rows), np.float32)
    labels = np.full((batch, rows), -1, np.int64)
    for b, image in enumerate(images):
        for i, (label, score, box) in enumerate(image):
            labels[b, i], scores[b, i], boxes[b, i] = label, score, box
    return Detections(np.array([len(i) for i in images], np.int64), boxes, scores, labels)


def _moved(box: list[float], index: int, by: float) -> list[float]:
    return [value + by if i == index else value for i, value in enumerate(box)]


@pytest.mark.parametrize(
    ("other_box", "other_score", "ok"),
    [
        # tolerance per coordinate: 1e-2 px + 1e-3 x |reference coordinate|
        ([0.005, 0.0, 1000.9, 1000.0], 0.9, True),  # 0.005 <= 0.01, 0.9 <= 1.01
        ([0.01, 0.0, 1000.0, 1000.0], 0.9, True),  # exactly on the bound: inclusive
        ([0.0, 0.0, 1001.1, 1000.0], 0.9, False),  # 1.1 > 1.01
        ([0.02, 0.0, 1000.0, 1000.0], 0.9, False),  # 0.02 > 0.01 at coordinate 0
        ([0.0, 0.0, 1000.0, 1000.0], 0.9009, True),  # score within 1e-3
        ([0.0, 0.0, 1000.0, 1000.0], 0.8989, False),  # score 0.0011 off
    ],
)
def test_box_and_score_tolerances(other_box: list[float], other_score: float, ok: bool) -> None:
    ref = _dets([(0, 0.9, [0.0, 0.0, 1000.0, 1000.0])])
    result = compare_detections(ref, _dets([(0, other_score, other_box)]))
    assert result["match"] is ok
    assert result["mismatched"] == (0 if ok else 1)
    box_diff = max(abs(a - b) for a, b in zip(other_box, [0, 0, 1000, 1000], strict=True))
    assert result["max_box_diff"] == pytest.approx(box_diff, abs=1e-4)
    assert result["max_score_diff"] == pytest.approx(abs(other_score - 0.9), abs=1e-6)


def test_rows_pair_by_label_and_nearest_box_not_by_row() -> None:
    """Same detections in another row order (as near-equal scores swap) still match; the largest
    differences are reported whichever row and image they come from."""
    small = [1.0, 1.0, 2.0, 2.0]  # nearer to A than A itself would be by |a + b|, not by |a - b|
    ref = _dets(
        [(0, 0.9, A), (0, 0.8, small), (1, 0.7, C)],
        [(1, 0.5, C)],
    )
    other = _dets(
        [(1, 0.7, C), (0, 0.8, small), (0, 0.9004, _moved(A, 2, 0.02))],
        [(1, 0.5001, _moved(C, 2, 0.15))],
    )
    result = compare_detections(ref, other)
    assert result == {
        "match": True,
        "num_images": 2,
        "num_dets_reference": 4,
        "num_dets_other": 4,
        "mismatched": 0,
        "max_box_diff": pytest.approx(0.15, abs=1e-4),
        "max_score_diff": pytest.approx(0.0004, abs=1e-6),
    }


def test_each_kind_of_mismatch_is_counted() -> None:
    ref = _dets(
        [(0, 0.9, A), (1, 0.8, C)],  # other lacks the label-1 detection: 1 missing + 1 unpaired
        [(0, 0.9, A), (0, 0.9, A)],  # one detection cannot pair with two: its twin is far off
        [(2, 0.6, C)],  # same count, no detection of that label
        [],
    )
    other = _dets([(0, 0.9, A)], [(0, 0.9, A), (0, 0.9, _moved(A, 3, 5.0))], [(1, 0.6, C)], [])
    result = compare_detections(ref, other)
    assert result["match"] is False
    assert result["mismatched"] == 2 + 1 + 1
    assert (result["num_images"], result["num_dets_reference"], result["num_dets_other"]) == (
        4,
        5,
        4,
    )
    assert result["max_box_diff"] == pytest.approx(5.0)


def test_equal_counts_with_a_bad_pair_do_not_match() -> None:
    result = compare_detections(_dets([(0, 0.9, A)]), _dets([(1, 0.9, A)]))
    assert result["match"] is False and result["mismatched"] == 1


# score 0.3 and D = 20 rather than the defaults 0.05 / 100, so a reader that fell back to the
# defaults would find more detections than the file
CONFIG = PostprocessConfig(score_threshold=0.3, nms_iou=0.45, topk_per_level=50, max_detections=20)
CONFIG_JSON = (
    '{"max_detections": 20, "nms_iou": 0.45, "score_threshold": 0.3, "topk_per_level": 50}'
)
IMG_SIZE = 32


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _tiny_detector() -> RetinaDetector:
    """Random weights; class bias -1 (sigmoid 0.27) so scores straddle both 0.05 and 0.3."""
    torch.manual_seed(0)
    model = RetinaDetector(
        ModelConfig(num_classes=3, img_size=IMG_SIZE, fpn_channels=8, head_convs=1)
    )
    with torch.no_grad():
        torch.nn.init.normal_(model.head.cls_out.weight, std=0.2)
        model.head.cls_out.bias.fill_(-1.0)
    return model.eval()


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[RetinaDetector, Path, Path, list[logging.LogRecord]]:
    """(model, returned path, target path, log records) of one export into a folder that does
    not exist yet, with a stale thresholds entry among the metadata passed in."""
    model = _tiny_detector()
    target = tmp_path_factory.mktemp("export") / "new" / "dir" / "model.onnx"
    handler = _Records()
    logger = logging.getLogger("export.onnx")
    logger.addHandler(handler)
    try:
        props = {POSTPROCESS_PROP: "stale", "class_names": '["a", "b", "c"]'}
        returned = export_onnx(model, target, props, postprocess=CONFIG)
    finally:
        logger.removeHandler(handler)
    return model, returned, target, handler.records


def test_export_writes_opset_17_the_graphs_thresholds_and_a_folded_network(
    exported: tuple[RetinaDetector, Path, Path, list[logging.LogRecord]],
) -> None:
    _, returned, target, records = exported
    assert returned == target and [p.name for p in target.parent.iterdir()] == ["model.onnx"]
    model = onnx.load(str(target))
    assert [(o.domain, o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")] == [
        ("", 17)
    ]
    props = {p.key: p.value for p in model.metadata_props}
    assert props == {"class_names": '["a", "b", "c"]', "softsample.postprocess": CONFIG_JSON}
    warnings = [r for r in records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "postprocess" in warnings[0].getMessage()
    # constant folding merged the backbone's batch norms into its convolutions
    assert "BatchNormalization" not in {node.op_type for node in model.graph.node}


def test_parity_uses_the_thresholds_stored_in_the_file(
    exported: tuple[RetinaDetector, Path, Path, list[logging.LogRecord]],
) -> None:
    model, path, _, _ = exported
    images = (np.random.default_rng(0).random((2, 3, IMG_SIZE, IMG_SIZE)) * 255).astype(np.float32)
    onnx_dets = run_onnxruntime(path, images)
    scores = [onnx_dets.scores[b, :n] for b, n in enumerate(onnx_dets.num_dets)]
    assert all((s > 0.3).all() for s in scores) and 0 < onnx_dets.num_dets.max() <= 20
    result = check_parity(model, path, images)  # no config given: read from the metadata
    assert result["match"], result
    assert result["num_dets_reference"] == int(onnx_dets.num_dets.sum())
    # the images do tell the thresholds apart: PyTorch at the defaults finds more
    loose = check_parity(model, path, images, config=PostprocessConfig())
    assert not loose["match"] and loose["num_dets_reference"] > result["num_dets_reference"]


def _standalone_file(path: Path, props: dict[str, str]) -> Path:
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])
    model = build_postprocess_model(anchors, [2], 2, 10, PostprocessConfig())
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def _props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_update_metadata_replaces_adds_and_keeps_entries(tmp_path: Path) -> None:
    path = _standalone_file(tmp_path / "m.onnx", {"a": "1", "b": "2"})
    update_metadata(path, {"b": "3", "c": "4"})
    assert _props(path) == {"a": "1", "b": "3", "c": "4"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind
    for bad in ({"d": 5}, {6: "e"}):
        with pytest.raises(TypeError, match="must be str"):
            update_metadata(path, bad)  # type: ignore[arg-type]
    assert _props(path) == {"a": "1", "b": "3", "c": "4"}


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc (Linux)")
def test_atomic_save_closes_its_file_descriptor(tmp_path: Path) -> None:
    path = _standalone_file(tmp_path / "m.onnx", {})
    update_metadata(path, {"warm": "up"})
    before = len(os.listdir("/proc/self/fd"))
    for i in range(5):
        update_metadata(path, {"n": str(i)})
    assert len(os.listdir("/proc/self/fd")) == before


def test_read_postprocess_config_reads_a_file_from_before_the_one_key(tmp_path: Path) -> None:
    """Files exported before `softsample.postprocess` kept the graph's thresholds under a bare
    "postprocess" key: still read, the new key winning where both are present."""
    old = _standalone_file(tmp_path / "old.onnx", {"postprocess": CONFIG_JSON})
    assert read_postprocess_config(old) == CONFIG
    both = {"postprocess": CONFIG_JSON, POSTPROCESS_PROP: '{"nms_iou": 0.7}'}
    assert read_postprocess_config(_standalone_file(tmp_path / "both.onnx", both)) == (
        PostprocessConfig(nms_iou=0.7)
    )


def test_read_postprocess_config_defaults_and_skips_external_weights(tmp_path: Path) -> None:
    assert read_postprocess_config(_standalone_file(tmp_path / "none.onnx", {})) == (
        PostprocessConfig()
    )
    # stored with its tensors in a side file, which is then gone: the metadata is still readable
    model = onnx.load(str(_standalone_file(tmp_path / "big.onnx", {POSTPROCESS_PROP: CONFIG_JSON})))
    onnx.save(
        model,
        str(tmp_path / "big.onnx"),
        save_as_external_data=True,
        location="w.bin",
        all_tensors_to_one_file=True,
        size_threshold=0,
    )
    (tmp_path / "w.bin").unlink()
    assert read_postprocess_config(tmp_path / "big.onnx") == CONFIG


def test_an_invalid_graph_is_refused_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tail that only strict shape inference can see is wrong (float + int64) is never saved."""
    real_append = export_module.append_postprocess

    def broken_append(model: onnx.ModelProto, *args: object) -> onnx.ModelProto:
        real_append(model, *args)
        model.graph.initializer.append(helper.make_tensor("bad_i", TensorProto.INT64, [1], [1]))
        add = helper.make_node("Add", ["scores", "bad_i"], ["bad_sum"], name="post/bad")
        model.graph.node.append(add)
        model.graph.output.append(
            helper.make_tensor_value_info("bad_sum", TensorProto.FLOAT, ["batch", 20])
        )
        return model

    monkeypatch.setattr(export_module, "append_postprocess", broken_append)
    target = tmp_path / "model.onnx"
    with pytest.raises(onnx.shape_inference.InferenceError, match="post/bad"):
        export_onnx(_tiny_detector(), target, {}, postprocess=CONFIG)
    assert list(tmp_path.iterdir()) == []


def test_run_onnxruntime_asks_for_the_cpu_provider_alone(
    exported: tuple[RetinaDetector, Path, Path, list[logging.LogRecord]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The parity reference is plain CPU even where a GPU build would default to CUDA first
    (ONNX Runtime falls back silently on a provider name it does not know)."""
    import onnxruntime

    asked: list[list[str]] = []
    real_session = onnxruntime.InferenceSession

    def spy(path: str, providers: list[str]) -> onnxruntime.InferenceSession:
        asked.append(list(providers))
        return real_session(path, providers=providers)

    monkeypatch.setattr(onnxruntime, "InferenceSession", spy)
    images = np.zeros((1, 3, IMG_SIZE, IMG_SIZE), np.float32)
    dets = run_onnxruntime(exported[1], images)
    assert asked == [["CPUExecutionProvider"]]
    assert dets.boxes.shape == (1, 20, 4)
