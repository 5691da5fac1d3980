"""Validation split across DDP ranks: each rank predicts its share, rank 0 scores them all.

Each rank runs deploy's own image loop (`predict_images`) on its share and rank 0 runs deploy's
`score_coco`, so the detections and the scoring are the ones `deploy.evaluate.evaluate` produces;
only the list of images is split. A given image's detections come out in the same order as in
one process, and COCOeval sorts per image with a stable sort, so the AP equals the
single-process AP.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from deploy.evaluate import load_coco, predict_images, score_coco
from deploy.metadata import Predictor
from train.distributed import all_gather_objects, broadcast_object, current_rank_and_world


def evaluate_sharded(
    predictor: Predictor,
    ann_file: Path,
    img_dir: Path,
    max_images: int | None = None,
    batch_size: int = 8,
    strict: bool = False,
) -> dict[str, float]:
    """COCO metrics of `predictor` on the first `max_images` images (by id), on every rank.

    Rank r predicts images r, r + W, r + 2W, ...; the detections are gathered, rank 0 runs
    COCOeval and broadcasts the metrics. Collective: every rank must call it.
    """
    rank, world = current_rank_and_world()
    coco_gt = load_coco(ann_file)
    infos = sorted(coco_gt.dataset["images"], key=lambda info: info["id"])[:max_images]
    if not infos:
        raise DeployError(f"{ann_file}: no images to evaluate")
    # An error on one rank is carried through the collectives and raised on every rank, so no
    # rank is left waiting in a gather or broadcast that its peer never joins.
    try:
        results, skipped = predict_images(
            predictor, infos[rank::world], img_dir, ann_file, batch_size, strict
        )
        error = None
    except DeployError as exc:
        results, skipped, error = [], set(), str(exc)
    gathered = all_gather_objects((results, skipped, error))
    errors = [e for _, _, e in gathered if e is not None]
    if errors:
        raise DeployError(errors[0])
    outcome: tuple[dict[str, float] | None, str | None] = (None, None)
    if rank == 0:
        outcome = _score_gathered(coco_gt, infos, gathered, img_dir)
    metrics, error = broadcast_object(outcome)
    if error is not None:
        raise DeployError(error)
    return metrics


def _score_gathered(
    coco_gt: Any, infos: list[dict], gathered: list, img_dir: Path
) -> tuple[dict[str, float] | None, str | None]:
    """Rank 0: COCO metrics of every rank's detections, or the error that stops everyone."""
    by_image: dict[int, list] = {}
    for results, _, _ in gathered:
        for result in results:
            by_image.setdefault(result["image_id"], []).append(result)
    skipped = set().union(*(bad for _, bad, _ in gathered))
    scored = [info["id"] for info in infos if info["id"] not in skipped]
    if not scored:
        return None, f"{img_dir}: none of the {len(infos)} images could be read"
    ordered = [r for info in infos for r in by_image.get(info["id"], [])]
    return score_coco(coco_gt, ordered, scored), None
