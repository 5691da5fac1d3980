"""`pipeline export --img-size --conf --iou --max-dets`: the graph applies exactly what was
asked, and the model's metadata says so (eval and predict read it from there)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from deploy.metadata import read_onnx_metadata
from export.onnx import run_onnxruntime
from tests.cli_support import invoke, make_tiny_dataset
from train.checkpoint import checkpoint_payload, save_atomic
from train.model.detector import ModelConfig, RetinaDetector


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
    assert (metadata.img_size, metadata.score_threshold) == (96, 0.3)
    assert (metadata.nms_iou, metadata.max_detections) == (0.6, 20)

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
