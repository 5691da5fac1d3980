"""`pipeline eval --model A --compare-to B`: where two deployments of one model disagree.

On the model built to detect: an export at score threshold 0.3 compared with the default one
(0.05) is named as a threshold difference, and its detections are exactly the default export's
that score at least 0.3 (counted here from A's own results file); an export compared with its
own copy agrees detection by detection; an int8 export is named by its precision, pairs with
the fp32 one at IoU 0.5, and shows finite per-layer SQNR. The pairing itself is checked on
hand-made detections.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deploy.agreement import pair_detections, size_name
from tests.cli_support import invoke
from tests.detecting_model import DetectingRun, detecting_run


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DetectingRun:
    return detecting_run(tmp_path_factory)


@pytest.fixture(scope="module")
def exports(model: DetectingRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The default export (model.onnx of the run), one at --conf 0.3, and an int8 one."""
    root = tmp_path_factory.mktemp("compare-to")
    found = {"default": model.run / "model.onnx"}
    int8 = ["--precision", "int8", "--calib-images", 16]
    for name, extra in (("conf", ["--conf", "0.3"]), ("int8", int8)):
        out = root / name / "model.onnx"
        result = invoke("export", "--weights", model.weights, "--out", out, "--data", model.data,
                        *extra)  # fmt: skip
        assert result.exit_code == 0, result.output
        found[name] = out.with_name("model.int8.onnx") if name == "int8" else out
    return found


def compare(model: DetectingRun, a: Path, b: Path, report: Path) -> tuple[str, dict]:
    result = invoke("eval", "--model", a, "--compare-to", b, "--data", model.data, "--warmup", 0,
                    "--json", report)  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output, json.loads(report.read_text())


@pytest.mark.slow
def test_a_model_exported_at_another_threshold_is_named(model, exports, tmp_path):
    output, report = compare(model, exports["default"], exports["conf"], tmp_path / "r.json")
    found = report["compare_to"]
    assert found["metadata_differences"] == {"score_threshold": [0.05, 0.3]}
    assert "diagnosis: the files differ in score threshold: 0.05 (A) vs 0.3 (B)" in output
    assert "a score threshold difference, not the engine" in output
    # B's detections are exactly A's that score >= 0.3 (NMS drops a box only for a higher one)
    alone = tmp_path / "a.json"
    result = invoke("eval", "--model", exports["default"], "--data", model.data, "--warmup", 0,
                    "--results", alone)  # fmt: skip
    assert result.exit_code == 0, result.output
    high = [d for d in json.loads(alone.read_text()) if d["score"] >= 0.3]
    assert found["detections"]["b"] == len(high) > 10
    assert found["paired"] == len(high) and found["only_b"]["count"] == 0
    assert found["only_a"]["count"] == found["detections"]["a"] - len(high) > 0
    assert found["score_difference"]["max_abs"] == 0.0


@pytest.mark.slow
def test_a_model_and_its_copy_agree_detection_by_detection(model, exports, tmp_path):
    copy = tmp_path / "copy.onnx"
    shutil.copy(exports["default"], copy)
    output, report = compare(model, exports["default"], copy, tmp_path / "r.json")
    found = report["compare_to"]
    assert found["metadata_differences"] == {}
    assert found["paired"] == found["detections"]["a"] == found["detections"]["b"] > 10
    assert found["only_a"]["count"] == found["only_b"]["count"] == 0
    assert all(row["sqnr_db"] == float("inf") for row in found["layers"])
    assert "0 of" in found["diagnosis"][0]


@pytest.mark.slow
def test_int8_is_named_by_its_precision_and_its_layers(model, exports, tmp_path):
    output, report = compare(model, exports["default"], exports["int8"], tmp_path / "r.json")
    found = report["compare_to"]
    assert found["metadata_differences"] == {"precision": ["fp32", "int8"]}
    assert "only the precision differs" in output
    assert found["paired_near"]["pairs"] >= 0.8 * found["detections"]["a"]
    layers = found["layers"]
    assert layers and all(0 < row["sqnr_db"] < 80 for row in layers)
    assert [row["sqnr_db"] for row in layers] == sorted(row["sqnr_db"] for row in layers)


def test_results_with_compare_to_is_refused(tmp_path):
    result = invoke("eval", "--model", tmp_path / "a.onnx", "--compare-to", tmp_path / "b.onnx",
                    "--results", tmp_path / "r.json")  # fmt: skip
    assert result.exit_code == 2 and "--results with --compare-to" in result.output


def det(image: int, category: int, box: list[float], score: float) -> dict:
    return {"image_id": image, "category_id": category, "bbox": box, "score": score}


def test_pairing_by_image_class_and_iou_highest_score_first():
    a = [det(1, 3, [0, 0, 100, 100], 0.9), det(1, 3, [0, 0, 100, 100.5], 0.8),
         det(1, 8, [0, 0, 100, 100], 0.7), det(2, 3, [50, 50, 10, 10], 0.6)]  # fmt: skip
    b = [
        det(1, 3, [0, 0, 100, 100.4], 0.85),  # IoU 0.996 with both of A's class-3 boxes
        det(1, 8, [0, 0, 100, 98], 0.7),  # IoU 0.98: not the same box
        det(2, 8, [50, 50, 10, 10], 0.6),
    ]  # same box, other class
    pairing = pair_detections(a, b)
    # A's 0.9 box claims B's twin first; A's 0.8 box, equally close, is left unmatched
    assert [(x["score"], y["score"]) for x, y in pairing.pairs] == [(0.9, 0.85)]
    assert sorted(d["score"] for d in pairing.only_a) == [0.6, 0.7, 0.8]
    assert sorted(d["score"] for d in pairing.only_b) == [0.6, 0.7]


def test_a_box_clipped_flat_pairs_with_its_identical_twin_only():
    flat = det(1, 3, [10, 20, 0, 15], 0.4)  # zero width: no area, IoU undefined
    pairing = pair_detections([flat], [dict(flat), det(1, 3, [11, 20, 0, 15], 0.4)])
    assert len(pairing.pairs) == 1 and pairing.pairs[0][1]["bbox"] == [10, 20, 0, 15]


def test_object_sizes_are_cocos():
    assert [size_name(a) for a in (0, 1023.9, 1024, 9215, 9216, 1e6)] == [
        "small",
        "small",
        "medium",
        "medium",
        "large",
        "large",
    ]
