"""The study's score analysis (pipeline/study/scores.py) on a hand-worked case.

Two images, one class, three ground-truth boxes. Four detections, matched at IoU 0.5:
- image 1: an exact copy of gt A (score 0.9, true positive), a box far from everything (0.8,
  false positive), a second copy of gt A (0.2, false positive: A is taken);
- image 2: an exact copy of gt C (0.6, true positive); gt B of image 1 is never found.
So true positives score {0.9, 0.6}, false positives {0.8, 0.2}, and 3 objects are to be found.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deploy.evaluate import load_coco, score_coco
from pipeline.study.bootstrap import match_run
from pipeline.study.scores import (
    SCORE_BIN_EDGES,
    THRESHOLDS,
    ap_by_threshold,
    best_f1,
    f1_by_threshold,
    score_histogram,
)

GT_A, GT_B, GT_C = [10, 10, 30, 30], [60, 60, 30, 30], [20, 20, 40, 40]
DETECTIONS = [
    {"image_id": 1, "category_id": 1, "bbox": GT_A, "score": 0.9},
    {"image_id": 1, "category_id": 1, "bbox": [150, 150, 20, 20], "score": 0.8},
    {"image_id": 1, "category_id": 1, "bbox": GT_A, "score": 0.2},
    {"image_id": 2, "category_id": 1, "bbox": GT_C, "score": 0.6},
]


@pytest.fixture
def coco_gt(tmp_path: Path):
    anns = [
        {"id": i + 1, "image_id": image, "category_id": 1, "bbox": box, "area": 900.0,
         "iscrowd": 0}
        for i, (image, box) in enumerate([(1, GT_A), (1, GT_B), (2, GT_C)])
    ]  # fmt: skip
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200} for i in (1, 2)]
    path = tmp_path / "gt.json"
    categories = [{"id": 1, "name": "thing"}]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    return load_coco(path)


def test_true_and_false_positives_land_in_their_score_bins_per_image(coco_gt) -> None:
    run = match_run(coco_gt, DETECTIONS, [1, 2])
    histogram = score_histogram([run])
    assert histogram["edges"] == pytest.approx(SCORE_BIN_EDGES.tolist())
    bin_of = {score: int(score / 0.05 + 1e-9) for score in (0.9, 0.6, 0.8, 0.2)}
    tp, fp = np.zeros(20), np.zeros(20)
    tp[[bin_of[0.9], bin_of[0.6]]] = 0.5  # one each over two images
    fp[[bin_of[0.8], bin_of[0.2]]] = 0.5
    assert histogram["tp_per_image"] == pytest.approx(tp.tolist())
    assert histogram["fp_per_image"] == pytest.approx(fp.tolist())
    assert histogram["tp_median_score"] == pytest.approx(0.75)


def test_precision_recall_and_f1_at_each_threshold_by_hand(coco_gt) -> None:
    run = match_run(coco_gt, DETECTIONS, [1, 2])
    table = f1_by_threshold(run)
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2)

    def at(t: float) -> np.ndarray:
        return table[:, int(np.flatnonzero(np.isclose(grid, t))[0])]

    # t <= 0.2: 2 TP, 2 FP; 0.2 < t <= 0.6: 2 TP, 1 FP; 0.6 < t <= 0.8: 1 TP, 1 FP; then 1 TP
    assert at(0.2) == pytest.approx([0.5, 2 / 3, 4 / 7])
    assert at(0.21) == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert at(0.6) == pytest.approx([2 / 3, 2 / 3, 2 / 3])
    assert at(0.61) == pytest.approx([0.5, 1 / 3, 0.4])
    assert at(0.85) == pytest.approx([1.0, 1 / 3, 0.5])
    assert at(0.95) == pytest.approx([0.0, 0.0, 0.0])
    best = best_f1([run])
    assert best["threshold"] == pytest.approx(0.21)  # the lowest of the tied thresholds
    assert (best["precision"], best["recall"], best["f1"]) == pytest.approx((2 / 3, 2 / 3, 2 / 3))


def test_ap_at_a_threshold_is_cocoeval_on_the_detections_kept(coco_gt) -> None:
    """A second library: pycocotools scoring only the detections at or above each threshold."""
    runs = [match_run(coco_gt, DETECTIONS, [1, 2])]
    jittered = [dict(d, score=d["score"] * 0.7 + 0.25) for d in DETECTIONS]  # a second "seed"
    runs.append(match_run(coco_gt, jittered, [1, 2]))
    found = ap_by_threshold(runs)
    assert found["thresholds"] == list(THRESHOLDS)
    for i, t in enumerate(THRESHOLDS):
        per_seed = [
            score_coco(coco_gt, [d for d in dets if d["score"] >= t], [1, 2])["AP"]
            for dets in (DETECTIONS, jittered)
        ]
        assert found["mean"][i] == pytest.approx(np.mean(per_seed), abs=1e-12), t
        assert found["std"][i] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-12), t
    assert found["mean"][0] > found["mean"][-1]  # 0.9 keeps a single detection of the first
