"""`pipeline predict`: any model file on any images -> drawn copies plus detections.json.

Everything that can fail cheaply (sources, output paths, the model) fails before the first image
is read, so a long run never stops at its last write. Unreadable images among good ones are
skipped with a warning and counted; when every image is unreadable, that is an error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from deploy.detector import Detector
from deploy.draw import draw_detections
from deploy.errors import DeployError
from deploy.eval_report import write_json_atomic
from deploy.preprocess import load_image
from pipeline.command_options import PredictOptions
from pipeline.errors import PipelineError
from pipeline.image_sources import expand_image_sources
from pipeline.models import load_predictor
from pipeline.outputs import check_output_file

logger = logging.getLogger(__name__)

JSON_NAME = "detections.json"


@dataclass
class PredictSummary:
    """What a run wrote: drawn images and detections.json in `out_dir`, and what it skipped."""

    out_dir: Path
    images: int = 0
    detections: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)

    def line(self) -> str:
        skipped = f", {len(self.skipped)} unreadable skipped" if self.skipped else ""
        return (
            f"drew {self.detections} detections on {self.images} images{skipped}: "
            f"{self.out_dir}/ ({JSON_NAME} lists them)"
        )


def run_predict(
    model_path: Path,
    sources: list[str],
    out_dir: Path,
    options: PredictOptions,
    overwrite: bool = False,
) -> PredictSummary:
    """Predict every image `sources` name; returns the summary of what was written."""
    paths = expand_image_sources(sources)
    out_dir = Path(out_dir)
    json_path = out_dir / JSON_NAME
    check_output_file(json_path, overwrite)
    targets = _drawn_image_paths(paths, out_dir, overwrite)
    detector = load_detector(Path(model_path), options)
    summary = PredictSummary(out_dir)
    records: list[dict[str, Any]] = []
    for start in range(0, len(paths), options.batch_size):
        loaded = _read_images(paths[start : start + options.batch_size], summary)
        if not loaded:
            continue
        for (path, image), detections in zip(
            loaded, detector.predict_batch([image for _, image in loaded]), strict=True
        ):
            drawn = draw_detections(image, detections, detector.metadata.category_ids)
            _save_image(drawn, targets[path])
            records.append(_image_record(path, image.size, detections))
            summary.images += 1
            summary.detections += len(detections)
    _check_some_were_read(paths, summary)
    write_json_atomic(json_path, _detections_file(model_path, detector, records, summary))
    return summary


def load_detector(model_path: Path, options: PredictOptions) -> Detector:
    """Any model file as a Detector; a .pt checkpoint runs its NMS at the asked thresholds."""
    predictor = load_predictor(model_path, provider=options.provider, device=options.device)
    if model_path.suffix.lower() == ".pt":
        _run_torch_postprocess_at(predictor, options)
    return Detector(
        predictor,
        conf=options.conf,
        iou=options.iou,
        max_dets=options.max_dets,
        batch_size=options.batch_size,
    )


def _run_torch_postprocess_at(predictor: Any, options: PredictOptions) -> None:
    """A checkpoint's post-processing runs in PyTorch, so unlike an exported graph it can use
    any threshold: the score threshold lowered to --conf when that is below the default, the IoU
    and the cap as asked. The metadata states the values run, for the Detector's checks."""
    default = predictor.config
    predictor.run_thresholds(
        replace(
            default,
            score_threshold=min(options.conf, default.score_threshold),
            nms_iou=default.nms_iou if options.iou is None else options.iou,
            max_detections=max(options.max_dets or 0, default.max_detections),
        )
    )


def _drawn_image_paths(paths: list[Path], out_dir: Path, overwrite: bool) -> dict[Path, Path]:
    """Each image's output (same file name in `out_dir`), refusing collisions and overwrites."""
    targets: dict[Path, Path] = {}
    owner_of_name: dict[str, Path] = {}
    for path in paths:
        target = out_dir / path.name
        if path.name in owner_of_name:
            raise PipelineError(
                f"{path} and {owner_of_name[path.name]} would both be drawn to {target}; "
                "predict them into separate --out folders"
            )
        if target.resolve() == path.resolve():
            raise PipelineError(
                f"{path}: --out would overwrite this input image (outputs keep the input's "
                "file name); choose another --out folder"
            )
        check_output_file(target, overwrite)
        owner_of_name[path.name] = path
        targets[path] = target
    return targets


def _read_images(paths: list[Path], summary: PredictSummary) -> list[tuple[Path, Any]]:
    """(path, decoded image) pairs; an unreadable image is warned about and counted."""
    loaded = []
    for path in paths:
        try:
            loaded.append((path, load_image(path)))
        except DeployError as exc:
            logger.warning("%s; image skipped", exc)
            summary.skipped.append((path, str(exc)))
    return loaded


def _check_some_were_read(paths: list[Path], summary: PredictSummary) -> None:
    if summary.images:
        return
    first_reason = summary.skipped[0][1]
    if len(paths) == 1:
        raise PipelineError(first_reason)
    raise PipelineError(f"none of the {len(paths)} images could be read (first: {first_reason})")


def _save_image(image: Any, target: Path) -> None:
    """Save in the format the file name says (JPEG at quality 95)."""
    extra = {"quality": 95} if target.suffix.lower() in (".jpg", ".jpeg") else {}
    try:
        image.save(target, **extra)
    except (OSError, ValueError, KeyError) as exc:
        raise PipelineError(f"{target}: cannot write the drawn image ({exc})") from exc


def _image_record(path: Path, size: tuple[int, int], detections: list[Any]) -> dict[str, Any]:
    width, height = size
    return {
        "path": str(path),
        "width": width,
        "height": height,
        "detections": [detection.to_dict() for detection in detections],
    }


def _detections_file(
    model_path: Path, detector: Detector, records: list[dict[str, Any]], summary: PredictSummary
) -> dict[str, Any]:
    """detections.json: the model, the thresholds applied, one entry per image, the skipped."""
    return {
        "model": str(model_path),
        "conf": detector.conf,
        "iou": detector.iou,
        "max_dets": detector.max_dets,
        "images": records,
        "skipped": [{"path": str(path), "reason": reason} for path, reason in summary.skipped],
    }
