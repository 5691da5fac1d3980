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
from deploy.evaluate import load_coco, postprocess_detections, score_coco
from deploy.metadata import Predictor
from deploy.preprocess import letterbox, load_image, to_batch
from train.distributed import all_gather_objects, broadcast_object, current_rank_and_world

log = logging.getLogger(__name__)


def _read(infos: list[dict], img_dir: Path, strict: bool) -> tuple[list, set[int]]:
    """(image id, PIL image) of the readable images, and the ids of the unreadable ones."""
    pairs, skipped = [], set()
    for info in infos:
        try:
            pairs.append((info["id"], load_image(Path(img_dir) / info["file_name"])))
        except DeployError as exc:
            if strict:
                raise DeployError(f"{exc} (--strict)") from exc
            log.warning("%s; image skipped", exc)
            skipped.add(info["id"])
    return pairs, skipped


def predict_shard(
    predictor: Predictor, infos: list[dict], img_dir: Path, batch_size: int, strict: bool
) -> tuple[list[dict[str, Any]], set[int]]:
    """COCO result dicts for `infos` (batches padded to `batch_size`, as the evaluator does)."""
    metadata = predictor.metadata
    results: list[dict[str, Any]] = []
    skipped: set[int] = set()
    for start in range(0, len(infos), batch_size):
        pairs, bad = _read(infos[start : start + batch_size], img_dir, strict)
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
    own = predict_shard(predictor, infos[rank::world], img_dir, batch_size, strict)
    gathered = all_gather_objects(own)
    metrics = None
    if rank == 0:
        by_image: dict[int, list] = {}
        for results, _ in gathered:
            for result in results:
                by_image.setdefault(result["image_id"], []).append(result)
        skipped = set().union(*(bad for _, bad in gathered))
        scored = [info["id"] for info in infos if info["id"] not in skipped]
        if not scored:
            raise DeployError(f"{img_dir}: none of the {len(infos)} images could be read")
        ordered = [r for info in infos for r in by_image.get(info["id"], [])]
        metrics = score_coco(coco_gt, ordered, scored)
    return broadcast_object(metrics)
