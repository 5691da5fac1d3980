"""COCO AP on resampled image sets, and the paired bootstrap of an AP difference between losses.

Why not one COCOeval per resample: `params.imgIds` drops repeated ids, so a resample drawn with
replacement cannot be scored that way, and hundreds of full evaluations per run are slow. Instead
each run is matched once (COCOeval.evaluate: which detection matches which ground truth, per
image, class and IoU threshold) and AP is re-accumulated with image weights, weight = how often the
resample drew the image. A weight of k counts the image's detections and ground truth k times:
the same AP as k physical copies of the image (the precision-recall points between copies never
raise the interpolated precision), so weights of all ones reproduce COCOeval's AP exactly.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

AREA_ALL = 0  # COCOeval's area range index of "all"
MAX_DETS_INDEX = 2  # COCOeval's maxDets index of 100
METHOD = (
    "Paired bootstrap over validation images and seeds: each resample draws the validation "
    "images with replacement and the seeds (paired seed by seed: loss seed s against baseline "
    "seed s) with replacement; both losses are scored on the same resample by re-accumulating "
    "COCO AP from one COCOeval matching per run with image weights (exact for repeated images), "
    "and the AP difference is averaged over the drawn seeds. The 95% interval is the 2.5 and "
    "97.5 percentiles over the resamples. An interval that excludes 0 is called an effect; one "
    "that contains 0 is not distinguishable from noise at this budget."
)


@dataclass
class ClassMatches:
    """One class's detections over all images, sorted by descending score (COCO's order).

    image_index (D,) int: row of each detection's image; tp, fp (T, D) bool at each IoU
    threshold (detections matched to ignored ground truth are neither); gt (I,) int: the
    non-ignored ground truths of the class per image; scores (D,) float: the detections' scores.
    """

    image_index: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    gt: np.ndarray
    scores: np.ndarray


@dataclass
class RunMatches:
    """What one evaluated run needs for resampled AP and PR curves.

    image_ids (I,), iou_thresholds (T,), recall_thresholds (R,); classes: one per category;
    precision (T, R, K): COCOeval.eval['precision'] at area all, 100 detections (-1: no gt);
    stats: COCOeval.stats as a list.
    """

    image_ids: list[int]
    iou_thresholds: np.ndarray
    recall_thresholds: np.ndarray
    classes: list[ClassMatches]
    precision: np.ndarray
    stats: list[float]


# engine -> (loss, seed) -> that run's matching
Matches = dict[str, dict[tuple[str, int], RunMatches]]


def match_run(coco_gt: Any, results: list[dict[str, Any]], image_ids: list[int]) -> RunMatches:
    """Run COCOeval once on `results` over `image_ids` and keep the per-image matches."""
    from pycocotools.cocoeval import COCOeval

    image_ids = sorted(set(image_ids))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results]) if results else _empty_dt(coco_gt)
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    params = evaluator.params
    num_areas, num_images = len(params.areaRng), len(image_ids)
    classes = []
    for k in range(len(params.catIds)):
        start = k * num_areas * num_images + AREA_ALL * num_images
        classes.append(_class_matches(evaluator.evalImgs[start : start + num_images], params))
    return RunMatches(
        image_ids=image_ids,
        iou_thresholds=np.asarray(params.iouThrs),
        recall_thresholds=np.asarray(params.recThrs),
        classes=classes,
        precision=evaluator.eval["precision"][:, :, :, AREA_ALL, MAX_DETS_INDEX],
        stats=[float(s) for s in evaluator.stats],
    )


def _empty_dt(coco_gt: Any) -> Any:
    """A COCO results object with no detections (loadRes refuses an empty list)."""
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = {
        "images": coco_gt.dataset["images"],
        "categories": coco_gt.dataset["categories"],
    }
    empty.dataset["annotations"] = []
    empty.createIndex()
    return empty


def _class_matches(entries: list[dict | None], params: Any) -> ClassMatches:
    """Concatenate one class's per-image evaluateImg entries in COCO accumulate's order."""
    max_det = params.maxDets[MAX_DETS_INDEX]
    num_t = len(params.iouThrs)
    scores, index, matched, ignored = [], [], [], []
    gt = np.zeros(len(entries), dtype=np.int64)
    for i, entry in enumerate(entries):
        if entry is None:
            continue
        dt_scores = np.asarray(entry["dtScores"][:max_det], dtype=np.float64)
        scores.append(dt_scores)
        index.append(np.full(len(dt_scores), i, dtype=np.int64))
        matched.append(np.asarray(entry["dtMatches"])[:, :max_det].reshape(num_t, -1))
        ignored.append(np.asarray(entry["dtIgnore"])[:, :max_det].reshape(num_t, -1))
        gt[i] = int(np.count_nonzero(np.asarray(entry["gtIgnore"]) == 0))
    if not scores:
        empty = np.zeros((num_t, 0), dtype=bool)
        return ClassMatches(np.zeros(0, dtype=np.int64), empty, empty.copy(), gt, np.zeros(0))
    all_scores = np.concatenate(scores)
    order = np.argsort(-all_scores, kind="mergesort")
    dtm = np.concatenate(matched, axis=1)[:, order] != 0
    dt_ignored = np.concatenate(ignored, axis=1)[:, order].astype(bool)
    return ClassMatches(
        image_index=np.concatenate(index)[order],
        tp=dtm & ~dt_ignored,
        fp=~dtm & ~dt_ignored,
        gt=gt,
        scores=all_scores[order],
    )


def _class_precision(
    matches: ClassMatches,
    weights: np.ndarray,
    recall_thresholds: np.ndarray,
    min_score: float = 0.0,
) -> np.ndarray | None:
    """(T, R) interpolated precision of one class under image weights, counting only the
    detections scored at least `min_score`; None without gt."""
    num_gt = float(np.dot(weights, matches.gt))
    if num_gt == 0:
        return None
    det_weights = weights[matches.image_index]
    keep = (det_weights > 0) & (matches.scores >= min_score)
    det_weights = det_weights[keep].astype(np.float64)
    tp_sum = np.cumsum(matches.tp[:, keep] * det_weights, axis=1)
    fp_sum = np.cumsum(matches.fp[:, keep] * det_weights, axis=1)
    num_t = matches.tp.shape[0]
    out = np.zeros((num_t, len(recall_thresholds)))
    if tp_sum.shape[1] == 0:
        return out
    for t in range(num_t):  # 10 IoU thresholds, not data
        recall = tp_sum[t] / num_gt
        precision = tp_sum[t] / (tp_sum[t] + fp_sum[t] + np.spacing(1))
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        at = np.searchsorted(recall, recall_thresholds, side="left")
        valid = at < len(recall)
        out[t, valid] = envelope[at[valid]]
    return out


def weighted_ap(
    matches: RunMatches,
    weights: np.ndarray | None = None,
    iou: float | None = None,
    min_score: float = 0.0,
) -> float:
    """COCO AP (area all, 100 dets) with per-image weights; `iou` picks one threshold (AP50);
    `min_score` drops the detections scored below it (the AP of a deployment threshold).

    weights (I,) >= 0 aligned with `matches.image_ids`; None: all ones (COCOeval's AP). NaN
    when no class has ground truth under the weights (COCO reports -1 there).
    """
    weights = np.ones(len(matches.image_ids)) if weights is None else np.asarray(weights)
    rows = slice(None)
    if iou is not None:
        t = int(np.argmin(np.abs(matches.iou_thresholds - iou)))
        rows = slice(t, t + 1)
    per_class = [
        p[rows]
        for c in matches.classes
        if (p := _class_precision(c, weights, matches.recall_thresholds, min_score)) is not None
    ]
    return float(np.mean(per_class)) if per_class else float("nan")


def paired_bootstrap(
    pairs: list[tuple[RunMatches, RunMatches]],
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """AP(candidate) - AP(baseline) with a bootstrap interval over images and paired seeds.

    pairs: one (candidate, baseline) per seed, all scored on the same images. Returns delta
    (mean over seeds on the full set), per_seed_delta, ci (low, high), the share of resamples
    with delta <= 0 and >= 0, and `effect`: True when the interval excludes 0.
    """
    if not pairs:
        raise ValueError("paired_bootstrap needs at least one (candidate, baseline) pair")
    return contrast_bootstrap(pairs, (1.0, -1.0), resamples, seed, level)


def contrast_bootstrap(
    groups: list[tuple[RunMatches, ...]],
    coefficients: tuple[float, ...],
    resamples: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, Any]:
    """sum_k coefficients[k] * AP(group[k]), averaged over the groups (one per seed), with a
    bootstrap interval: images resampled once for every run, groups (seeds) resampled whole.

    (1, -1) is a paired difference; (1, -1, -1, 1) on (A noisy, A clean, B noisy, B clean)
    asks whether A's change differs from B's. Same fields as paired_bootstrap returns.
    """
    if not groups or any(len(g) != len(coefficients) for g in groups):
        raise ValueError("contrast_bootstrap needs groups of one run per coefficient")
    image_ids = groups[0][0].image_ids
    if any(run.image_ids != image_ids for group in groups for run in group):
        raise ValueError("every run in a paired bootstrap must be scored on the same images")

    def contrast(group: tuple[RunMatches, ...], weights: np.ndarray | None = None) -> float:
        return sum(
            c * weighted_ap(run, weights) for c, run in zip(coefficients, group, strict=True)
        )

    per_seed = [contrast(group) for group in groups]
    rng = np.random.default_rng(seed)
    num_images, num_groups = len(image_ids), len(groups)
    deltas = np.empty(resamples)
    for r in range(resamples):
        weights = np.bincount(rng.integers(0, num_images, num_images), minlength=num_images)
        drawn = np.bincount(rng.integers(0, num_groups, num_groups), minlength=num_groups)
        seed_deltas = [
            contrast(group, weights) if n else 0.0 for group, n in zip(groups, drawn, strict=True)
        ]
        deltas[r] = np.dot(drawn, seed_deltas) / num_groups  # NaN only if no gt was drawn
    deltas = deltas[np.isfinite(deltas)]
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(deltas, [tail, 100 - tail]) if len(deltas) else (np.nan, np.nan)
    return {
        "delta": float(np.mean(per_seed)),
        "per_seed_delta": [float(d) for d in per_seed],
        "ci": [float(low), float(high)],
        "level": level,
        "resamples": int(len(deltas)),
        "share_le_0": float(np.mean(deltas <= 0)) if len(deltas) else float("nan"),
        "share_ge_0": float(np.mean(deltas >= 0)) if len(deltas) else float("nan"),
        "effect": bool(low > 0 or high < 0),
    }


def mean_precision_curve(runs: list[RunMatches], iou: float) -> tuple[np.ndarray, np.ndarray]:
    """(recall thresholds (R,), precision (R,)) averaged over classes with gt, then over runs."""
    curves = []
    for run in runs:
        t = int(np.argmin(np.abs(run.iou_thresholds - iou)))
        precision = run.precision[t]  # (R, K)
        with_gt = precision[:, (precision >= 0).all(axis=0)]
        if with_gt.shape[1]:
            curves.append(with_gt.mean(axis=1))
    recall = runs[0].recall_thresholds if runs else np.linspace(0, 1, 101)
    return recall, (np.mean(curves, axis=0) if curves else np.zeros_like(recall))
