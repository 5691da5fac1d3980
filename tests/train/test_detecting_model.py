"""Training learns, and the deployed model detects what PyTorch detects, on a model that detects.

Every check here runs on tests/detecting_model.py's session model (AP ~0.86 on its easy,
colour-coded validation set). Expected values come from outside the code under test: the
ground-truth boxes themselves (a straight loop matching detections to them in original pixels,
with the ground truth's own category ids), the training history, and the other runtime.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from common.contract import Detections
from common.datasets.layout import resolve_split
from export.onnx import compare_detections, run_onnxruntime
from pipeline.exporting import split_parity_images
from tests.cli_support import invoke
from tests.detecting_model import MIN_VAL_AP, TRAIN_ARGS, DetectingRun, detecting_run

pytestmark = pytest.mark.slow
# Of the validation objects, the share a deployed model must find with the right category id
# at IoU >= 0.5 (the session model finds all of them; BGR input swaps the two classes' colours).
MIN_RECALL = 0.9


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DetectingRun:
    return detecting_run(tmp_path_factory)


@pytest.fixture(scope="module")
def deployed(model: DetectingRun, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """best.pt exported to fp32 and int8 ONNX in a folder of its own."""
    out = tmp_path_factory.mktemp("deployed")
    shutil.copy(model.weights, out / "best.pt")
    result = invoke("export", "--weights", out / "best.pt", "--data", model.data,
                    "--precision", "int8", "--calib-images", 32)  # fmt: skip
    assert result.exit_code == 0, result.output
    return {"pt": out / "best.pt", "onnx": out / "model.onnx", "int8": out / "model.int8.onnx"}


def _evaluate(model: DetectingRun, weights: Path, out: Path) -> tuple[dict, list[dict]]:
    """`pipeline eval` of `weights` on the validation split: (report, COCO detections)."""
    report, dets = out / f"{weights.name}.report.json", out / f"{weights.name}.dets.json"
    result = invoke("eval", "--model", weights, "--data", model.data, "--json", report,
                    "--results", dets, "--warmup", 0, "--batch-size", 4)  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text()), json.loads(dets.read_text())


@pytest.fixture(scope="module")
def evaluated(
    model: DetectingRun, deployed: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[dict, list[dict]]]:
    out = tmp_path_factory.mktemp("evaluated")
    return {name: _evaluate(model, path, out) for name, path in deployed.items()}


def _iou_xywh(a: list[float], b: list[float]) -> float:
    ix = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / (a[2] * a[3] + b[2] * b[3] - inter)


def recall_with_category(ann_file: Path, detections: list[dict], min_score: float = 0.3) -> float:
    """Share of ground-truth boxes that a detection of the SAME category id, scored at least
    `min_score`, overlaps at IoU >= 0.5, both in the original image's pixels."""
    gt = json.loads(Path(ann_file).read_text())["annotations"]
    found = 0
    for ann in gt:
        found += any(
            det["image_id"] == ann["image_id"]
            and det["category_id"] == ann["category_id"]
            and det["score"] >= min_score
            and _iou_xywh(det["bbox"], ann["bbox"]) >= 0.5
            for det in detections
        )
    return found / len(gt)


def test_training_lowers_the_loss_and_reaches_the_stated_ap(model: DetectingRun) -> None:
    history = model.history()
    losses = [epoch["loss_cls"] + epoch["loss_reg"] for epoch in history]
    assert losses[-1] < 0.25 * losses[0], losses
    assert max(epoch["AP"] for epoch in history) >= MIN_VAL_AP, history
    assert history[-1]["AP"] > history[0]["AP"] + 0.5


def test_best_checkpoint_holds_the_best_epochs_weights(model: DetectingRun, tmp_path: Path) -> None:
    """best.pt, scored again from disk, gives the best AP of the history, and says its epoch."""
    history = model.history()
    best_epoch = max(history, key=lambda epoch: epoch["AP"])
    stored = torch.load(model.weights, weights_only=True)
    assert stored["epoch"] == best_epoch["epoch"]
    report, _ = _evaluate(model, model.weights, tmp_path)
    assert report["metrics"]["AP"] == pytest.approx(best_epoch["AP"], abs=1e-6)
    last, _ = _evaluate(model, model.run / "last.pt", tmp_path)
    assert last["metrics"]["AP"] == pytest.approx(history[-1]["AP"], abs=1e-6)


def test_deployed_detections_are_the_ground_truth_objects(
    model: DetectingRun, evaluated: dict[str, tuple[dict, list[dict]]]
) -> None:
    """In original pixels and category ids, every format finds the validation objects."""
    for name, (report, dets) in evaluated.items():
        assert report["metrics"]["AP"] >= MIN_VAL_AP, name
        assert recall_with_category(model.val_ann, dets) >= MIN_RECALL, name


def _in_order(dets: list[dict]) -> list[dict]:
    return sorted(dets, key=lambda d: (d["image_id"], d["category_id"], -d["score"]))


def test_onnx_detections_equal_pytorch_detections(
    evaluated: dict[str, tuple[dict, list[dict]]],
) -> None:
    """The same boxes, scores and category ids, image by image, through the whole eval path."""
    torch_report, torch_dets = evaluated["pt"]
    onnx_report, onnx_dets = evaluated["onnx"]
    assert len(torch_dets) == len(onnx_dets) > 100
    for a, b in zip(_in_order(torch_dets), _in_order(onnx_dets), strict=True):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert a["score"] == pytest.approx(b["score"], abs=1e-4)
        np.testing.assert_allclose(a["bbox"], b["bbox"], atol=2e-2)
    for metric in ("AP", "AP50", "AP75"):
        assert onnx_report["metrics"][metric] == pytest.approx(
            torch_report["metrics"][metric], abs=1e-4
        )


def test_int8_keeps_the_fp32_accuracy(evaluated: dict[str, tuple[dict, list[dict]]]) -> None:
    fp32, int8 = evaluated["onnx"][0], evaluated["int8"][0]
    assert int8["precision"] == "int8"
    assert int8["metrics"]["AP"] == pytest.approx(fp32["metrics"]["AP"], abs=0.03)


def _shifted(dets: Detections, **change: np.ndarray) -> Detections:
    fields = {
        name: getattr(dets, name).copy() for name in ("num_dets", "boxes", "scores", "labels")
    }
    fields.update(change)
    return Detections(**fields)


def test_compare_detections_reports_each_kind_of_mismatch(
    model: DetectingRun, deployed: dict[str, Path]
) -> None:
    """The parity helper must see a moved box, a changed score or label, a missing detection."""
    images = split_parity_images(*resolve_split(model.data, "val"), 72, count=4)
    dets = run_onnxruntime(deployed["onnx"], images)
    assert dets.num_dets.min() >= 1
    assert compare_detections(dets, _shifted(dets))["match"]
    moved = dets.boxes.copy()
    moved[0, 0, 2] += 0.5
    changed_score = dets.scores.copy()
    changed_score[1, 0] -= 0.01
    relabelled = dets.labels.copy()
    relabelled[2, 0] = 1 - relabelled[2, 0]
    fewer = dets.num_dets.copy()
    fewer[3] -= 1
    for change in (
        {"boxes": moved},
        {"scores": changed_score},
        {"labels": relabelled},
        {"num_dets": fewer},
    ):
        result = compare_detections(dets, _shifted(dets, **change))
        assert not result["match"], change.keys()
        assert result["mismatched"] >= 1


def test_the_main_job_trains_exports_and_scores_both_formats_alike(model: DetectingRun) -> None:
    """`pipeline run` (the demo's job) made the session model: its report and table."""
    report = json.loads((model.run / "report.json").read_text())
    assert set(report) == {"pytorch", "onnxruntime"}
    best_ap = max(epoch["AP"] for epoch in model.history())
    for name in ("pytorch", "onnxruntime"):
        assert report[name]["metrics"]["AP"] == pytest.approx(best_ap, abs=1e-4), name
    table = model.main_job_output.read_text().splitlines()
    rows = {line.split()[0]: line.split()[1] for line in table if line.split()}
    assert float(rows["onnxruntime"]) == pytest.approx(best_ap, abs=1e-3)
    assert float(rows["pytorch"]) == pytest.approx(best_ap, abs=1e-3)


def test_compare_scores_the_int8_engine(model: DetectingRun, tmp_path: Path) -> None:
    """compare's onnx-int8 and openvino-bf16 engines on the trained run (copied in as a finished
    training)."""
    run = tmp_path / "study" / "runs" / "focal-s0"
    run.mkdir(parents=True)
    for name in ("best.pt", "last.pt", "history.json"):
        shutil.copy(model.run / name, run / name)
    (run / "trained.json").write_text(json.dumps({"train_wall_seconds": 1.0}))
    result = invoke("compare", "--out", tmp_path / "study", "--data", model.data,
                    "--losses", "focal", "--seeds", 1, "--backend", "onnx-int8,openvino-bf16",
                    "--resamples", 10, *TRAIN_ARGS)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert (run / "model.int8.onnx").is_file()
    summary = json.loads((run / "run.json").read_text())
    int8_ap, torch_ap = summary["metrics"]["onnx-int8"]["AP"], summary["metrics"]["pytorch"]["AP"]
    assert torch_ap >= MIN_VAL_AP and int8_ap == pytest.approx(torch_ap, abs=0.03)
    dets = json.loads((run / "detections_onnx-int8.json").read_text())
    assert recall_with_category(model.val_ann, dets) >= MIN_RECALL
    assert (run / "model.bf16.xml").is_file()  # OpenVINO's IR, scored as the second engine
    bf16_ap = summary["metrics"]["openvino-bf16"]["AP"]
    assert bf16_ap == pytest.approx(torch_ap, abs=0.01)
    report = json.loads((tmp_path / "study" / "report.json").read_text())
    assert report["backends"] == ["onnx-int8", "openvino-bf16"]
    assert report["deployment"]["openvino-bf16"]["focal"]["delta"] == pytest.approx(
        bf16_ap - torch_ap, abs=1e-9
    )
