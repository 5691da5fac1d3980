"""`pipeline export --img-size --conf --iou --max-dets`: the graph applies exactly what was
asked, and the model's metadata says so (eval and predict read it from there); `pipeline eval
--conf --iou --max-dets`: exact narrowing of an exported model, any NMS IoU for a checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deploy.evaluate import load_coco, score_coco
from deploy.metadata import read_onnx_metadata
from export.onnx import run_onnxruntime
from tests.cli_support import invoke, make_tiny_dataset
from train.checkpoint import checkpoint_payload, save_atomic
from train.model.retinanet import ModelConfig, RetinaDetector


@pytest.fixture(scope="module")
def detecting_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny detector trained at 64 px whose raised classifier bias makes it score many boxes."""
    torch.manual_seed(0)
    model = RetinaDetector(ModelConfig(num_classes=5, img_size=64, fpn_channels=16, head_convs=1))
    with torch.no_grad():
        model.head.cls_out.bias.fill_(1.0)
        model.head.cls_out.weight.mul_(20.0)  # scores spread by image content: 0.3 matters
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    names = [f"c{i}" for i in range(5)]
    save_atomic(checkpoint_payload(model.eval(), names, [1, 2, 3, 4, 5], "focal", {}, {}), path)
    return path


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_the_graph_applies_the_asked_size_threshold_iou_and_cap(
    detecting_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    data = make_tiny_dataset(tmp_path_factory)
    out = detecting_checkpoint.parent / "model.onnx"
    result = invoke("export", "--weights", detecting_checkpoint, "--data", data, "--out", out,
                    "--img-size", 96, "--conf", 0.3, "--iou", 0.6, "--max-dets", 20)  # fmt: skip
    assert result.exit_code == 0, result.output

    graph = onnx.load(str(out))
    dims = [d.dim_value or d.dim_param for d in graph.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 96, 96]
    metadata = read_onnx_metadata(out)
    assert (metadata.img_size, metadata.postprocess.score_threshold) == (96, 0.3)
    assert (metadata.postprocess.nms_iou, metadata.postprocess.max_detections) == (0.6, 20)

    images = np.random.default_rng(0).uniform(0, 255, (4, 3, 96, 96)).astype(np.float32)
    found = run_onnxruntime(out, images)
    assert found.boxes.shape == (4, 20, 4)
    assert found.num_dets.sum() > 0 and (found.num_dets <= 20).all()
    assert int(found.num_dets.max()) == 20  # the cap is reached: without it there would be more
    overlaps = []
    for b in range(4):
        n = int(found.num_dets[b])
        scores, labels, boxes = found.scores[b, :n], found.labels[b, :n], found.boxes[b, :n]
        assert (scores >= 0.3).all()
        assert (boxes >= 0).all() and (boxes <= 96).all()
        for i in range(n):  # class-aware NMS at 0.6: no same-class pair overlaps more
            for j in range(i + 1, n):
                if labels[i] == labels[j]:
                    overlaps.append(_iou(boxes[i], boxes[j]))
    assert max(overlaps) <= 0.6 + 1e-6
    assert max(overlaps) > 0.5  # a pair NMS at the default 0.5 would have suppressed


# ------------------------------------------------------- pipeline eval --conf --iou --max-dets


@pytest.fixture(scope="module")
def exported(
    detecting_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, Path]:
    """(checkpoint, its ONNX at the default thresholds, the dataset)."""
    data = make_tiny_dataset(tmp_path_factory)
    out = tmp_path_factory.mktemp("default") / "model.onnx"
    result = invoke("export", "--weights", detecting_checkpoint, "--data", data, "--out", out)
    assert result.exit_code == 0, result.output
    return detecting_checkpoint, out, data


def _eval(model: Path, data: Path, out: Path, *flags: object) -> tuple[dict, list[dict]]:
    report, dets = out / "report.json", out / "dets.json"
    result = invoke("eval", "--model", model, "--data", data, "--json", report, "--results",
                    dets, "--warmup", 0, "--overwrite", *flags)  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(report.read_text()), json.loads(dets.read_text())


def _key(d: dict) -> tuple:
    return (
        d["image_id"],
        d["category_id"],
        round(d["score"], 5),
        *(round(v, 3) for v in d["bbox"]),
    )


def test_eval_narrows_an_exported_model_exactly(exported, tmp_path: Path) -> None:
    _, onnx_path, data = exported
    _, everything = _eval(onnx_path, data, tmp_path)
    conf = round(float(np.median([d["score"] for d in everything])), 4)  # keeps about half
    report, above = _eval(onnx_path, data, tmp_path, "--conf", conf)
    assert 10 < len(above) < len(everything) - 10
    assert sorted(map(_key, above)) == sorted(_key(d) for d in everything if d["score"] >= conf)
    coco_gt = load_coco(data / "annotations" / "instances_val.json")
    ids = sorted(coco_gt.getImgIds())
    assert report["metrics"]["AP"] == pytest.approx(score_coco(coco_gt, above, ids)["AP"])
    _, top3 = _eval(onnx_path, data, tmp_path, "--max-dets", 3)
    by_image: dict[int, list[dict]] = {}
    for d in everything:
        by_image.setdefault(d["image_id"], []).append(d)
    best3 = [d for ds in by_image.values() for d in sorted(ds, key=lambda d: -d["score"])[:3]]
    assert sorted(map(_key, top3)) == sorted(map(_key, best3))


def test_eval_refuses_an_iou_the_graph_cannot_apply(exported) -> None:
    from click.testing import CliRunner

    from pipeline.cli import cli

    _, onnx_path, data = exported
    result = CliRunner().invoke(cli, ["eval", "--model", str(onnx_path), "--data", str(data),
                                      "--iou", "0.3"])  # fmt: skip
    assert result.exit_code == 2
    assert "NMS runs inside this model at IoU 0.5" in result.output


def test_eval_of_a_checkpoint_runs_nms_at_the_asked_iou(exported, tmp_path: Path) -> None:
    checkpoint, _, data = exported
    images = json.loads((data / "annotations" / "instances_val.json").read_text())["images"]
    sizes = {i["id"]: (i["width"], i["height"]) for i in images}

    def inside(d: dict) -> np.ndarray | None:
        """xyxy of a box clear of the image border (clipping there would change its IoU)."""
        x, y, w, h = d["bbox"]
        width, height = sizes[d["image_id"]]
        clear = x > 0.5 and y > 0.5 and x + w < width - 0.5 and y + h < height - 0.5
        return np.array([x, y, x + w, y + h]) if clear else None

    def worst_overlap(dets: list[dict]) -> float:
        worst = 0.0
        for a in dets:
            for b in dets:
                same = a["image_id"] == b["image_id"] and a["category_id"] == b["category_id"]
                box_a, box_b = inside(a), inside(b)
                if a is not b and same and box_a is not None and box_b is not None:
                    worst = max(worst, _iou(box_a, box_b))
        return worst

    _, default = _eval(checkpoint, data, tmp_path)
    assert worst_overlap(default) > 0.3  # at the default 0.5, pairs above 0.3 survive
    _, strict = _eval(checkpoint, data, tmp_path, "--iou", 0.3)
    assert worst_overlap(strict) <= 0.3 + 1e-3


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--batch-size", "4"], "--batch-size: only TensorRT (--trt) takes it"),
        (["--workspace", "2", "--openvino"], "--workspace: only TensorRT (--trt) takes it"),
        (["--calib-images", "8"], "--calib-images 8: only --precision int8 calibrates"),
    ],
)
def test_an_engine_option_for_an_engine_not_written_changes_nothing_and_says_so(
    detecting_checkpoint: Path, tmp_path: Path, flags: list[str], message: str
) -> None:
    """The engine table lists each engine's export options: one set for an engine this export
    does not write is refused before anything is written."""
    out = tmp_path / "model.onnx"
    result = invoke("export", "--weights", detecting_checkpoint, "--out", out, *flags)
    assert result.exit_code == 2 and message in result.output
    assert result.output.count("\n") == 1 and not out.exists()


def test_the_options_of_the_engine_asked_for_are_taken() -> None:
    """The same options pass the check when the export writes the engine that takes them."""
    from export.options import ExportOptions
    from pipeline.exporting import _check_combination

    _check_combination(ExportOptions(trt=True, batch=4, workspace_gb=2.0))
    _check_combination(ExportOptions(openvino=True, precision="int8", calibration="entropy"))
    _check_combination(ExportOptions(precision="int8", calib_images=8, opset=18))
