"""Validation split across DDP ranks: each rank predicts its share, rank 0 scores them all.

Built from deploy's public pieces (letterbox, `postprocess_detections`, `score_coco`), so the
detections and the COCO scoring are the ones `deploy.evaluate.evaluate` produces; only the loop
over images is split. A given image's detections come out in the same order as in one process,
and COCOeval sorts per image with a stable sort, so the AP equals the single-process AP.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from deploy.evaluate import image_path, load_coco, postprocess_detections, score_coco
from deploy.metadata import Predictor
from deploy.preprocess import letterbox, load_image, to_batch
from train.distributed import all_gather_objects, broadcast_object, current_rank_and_world

log = logging.getLogger(__name__)


def _read(infos: list[dict], img_dir: Path, strict: bool, ann_file: Path) -> tuple[list, set[int]]:
    """(image id, PIL image) of the readable images, and the ids of the unreadable ones."""
    pairs, skipped = [], set()
    for info in infos:
        path = image_path(Path(img_dir), info.get("file_name"), ann_file)  # escapes: an error
        try:
            pairs.append((info["id"], load_image(path)))
        except DeployError as exc:
            if strict:
                raise DeployError(f"{exc} (--strict)") from exc
            log.warning("%s; image skipped", exc)
            skipped.add(info["id"])
    return pairs, skipped


def predict_shard(
    predictor: Predictor,
    infos: list[dict],
    img_dir: Path,
    batch_size: int,
    strict: bool,
    ann_file: Path = Path("annotations"),
) -> tuple[list[dict[str, Any]], set[int]]:
    """COCO result dicts for `infos` (batches padded to `batch_size`, as the evaluator does)."""
    metadata = predictor.metadata
    results: list[dict[str, Any]] = []
    skipped: set[int] = set()
    for start in range(0, len(infos), batch_size):
        pairs, bad = _read(infos[start : start + batch_size], img_dir, strict, ann_file)
        skipped |= bad
        if not pairs:
            continue
        boxed = [letterbox(image, metadata.img_size, metadata.pad_value) for _, image in pairs]
        arrays = [array for array, _ in boxed]
        detections = predictor(to_batch(arrays + [arrays[-1]] * (batch_size - len(arrays))))
        results += postprocess_detections(
            detections,
            scales=[scale for _, scale in boxed],
            image_sizes=[image.size for _, image in pairs],
            image_ids=[image_id for image_id, _ in pairs],
            category_ids=metadata.category_ids,
        )
    return results, skipped


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
        results, skipped = predict_shard(
            predictor, infos[rank::world], img_dir, batch_size, strict, ann_file
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
