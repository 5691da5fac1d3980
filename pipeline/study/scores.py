"""Detection scores per loss and engine: what a loss does to them, and what a threshold costs.

Losses reshape the score distribution (focal's scores sit lower than cross-entropy's, GHM keeps
many more candidates), and a deployed model is used at a score threshold, not at COCO's
"every detection down to 0.05". So for each loss and engine the study reports:

- the histogram of detection scores, true and false positives apart (matched at IoU 0.5 by
  COCOeval; a detection matched to an ignored region is neither), per validation image;
- AP when only detections scored at least t are kept, for a ladder of thresholds t (exactly
  the AP of COCOeval on the filtered detections: the dropped ones are the lowest scored);
- the threshold with the best F1 at IoU 0.5 over all classes pooled, with its precision and
  recall: the threshold a user would deploy at.

All of it comes from the runs' COCOeval matches (bootstrap.RunMatches), averaged over seeds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.study.bootstrap import RunMatches, weighted_ap

SCORE_BIN_EDGES = np.round(np.linspace(0.0, 1.0, 21), 2)  # 0.05 wide; 0.6 is an edge, not 0.6000…1
THRESHOLDS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
F1_GRID = np.round(np.arange(0.01, 1.0, 0.01), 2)
MATCH_IOU = 0.5


def _pooled(run: RunMatches, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Every class's detections of one run at IoU `iou`: scores, tp, fp, and the gt count."""
    t = int(np.argmin(np.abs(run.iou_thresholds - iou)))
    scores = np.concatenate([c.scores for c in run.classes]) if run.classes else np.zeros(0)
    tp = np.concatenate([c.tp[t] for c in run.classes]) if run.classes else np.zeros(0, bool)
    fp = np.concatenate([c.fp[t] for c in run.classes]) if run.classes else np.zeros(0, bool)
    return scores, tp, fp, int(sum(int(c.gt.sum()) for c in run.classes))


def score_histogram(runs: list[RunMatches], iou: float = MATCH_IOU) -> dict[str, Any]:
    """True and false positives per score bin and validation image, averaged over runs."""
    tp_rows, fp_rows, tp_scores = [], [], []
    for run in runs:
        scores, tp, fp, _ = _pooled(run, iou)
        per_image = 1.0 / max(1, len(run.image_ids))
        tp_rows.append(np.histogram(scores[tp], SCORE_BIN_EDGES)[0] * per_image)
        fp_rows.append(np.histogram(scores[fp], SCORE_BIN_EDGES)[0] * per_image)
        tp_scores.append(scores[tp])
    bins = len(SCORE_BIN_EDGES) - 1
    tp_scores = np.concatenate(tp_scores) if tp_scores else np.zeros(0)
    return {
        "iou": iou,
        "edges": SCORE_BIN_EDGES.tolist(),
        "tp_per_image": (np.mean(tp_rows, axis=0) if runs else np.zeros(bins)).tolist(),
        "fp_per_image": (np.mean(fp_rows, axis=0) if runs else np.zeros(bins)).tolist(),
        "tp_median_score": float(np.median(tp_scores)) if len(tp_scores) else None,
    }


def ap_by_threshold(runs: list[RunMatches]) -> dict[str, Any]:
    """COCO AP keeping detections scored >= t, per threshold: mean and std over runs."""
    if not runs:
        return {"thresholds": list(THRESHOLDS), "mean": [], "std": []}
    table = np.array([[weighted_ap(run, min_score=t) for t in THRESHOLDS] for run in runs])
    std = table.std(axis=0, ddof=1) if len(runs) > 1 else np.full(len(THRESHOLDS), np.nan)
    return {
        "thresholds": list(THRESHOLDS),
        "mean": table.mean(axis=0).tolist(),
        "std": [None if not np.isfinite(s) else float(s) for s in std],
    }


def f1_by_threshold(run: RunMatches, iou: float = MATCH_IOU) -> np.ndarray:
    """(precision, recall, F1) at every F1_GRID threshold, all classes pooled: (3, G)."""
    scores, tp, fp, num_gt = _pooled(run, iou)
    kept = scores[None, :] >= F1_GRID[:, None]  # (G, D)
    tps = (kept & tp[None, :]).sum(axis=1).astype(float)
    fps = (kept & fp[None, :]).sum(axis=1).astype(float)
    precision = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=tps + fps > 0)
    recall = tps / num_gt if num_gt else np.zeros_like(tps)
    f1 = np.divide(
        2 * precision * recall,
        precision + recall,
        out=np.zeros_like(tps),
        where=precision + recall > 0,
    )
    return np.stack([precision, recall, f1])


def best_f1(runs: list[RunMatches], iou: float = MATCH_IOU) -> dict[str, Any] | None:
    """The threshold whose F1 (averaged over runs) is highest, and its precision and recall."""
    if not runs:
        return None
    mean = np.mean([f1_by_threshold(run, iou) for run in runs], axis=0)
    best = int(np.argmax(mean[2]))  # the lowest threshold among ties
    return {
        "iou": iou,
        "threshold": float(F1_GRID[best]),
        "precision": float(mean[0, best]),
        "recall": float(mean[1, best]),
        "f1": float(mean[2, best]),
    }


def score_report(
    runs_by_loss: dict[str, list[RunMatches]],
) -> dict[str, dict[str, Any]]:
    """One engine's score section: loss -> histogram, AP by threshold and best F1."""
    return {
        loss: {
            "histogram": score_histogram(runs),
            "ap_by_threshold": ap_by_threshold(runs),
            "best_f1": best_f1(runs),
        }
        for loss, runs in runs_by_loss.items()
        if runs
    }
