"""Detections on any image from a deployed model, in a few lines of Python and without torch.

    from deploy.detector import Detector
    detector = Detector.load("runs/demo/model.onnx", conf=0.25)
    for det in detector(Image.open("street.jpg")):  # or an H x W x 3 uint8 RGB numpy array
        print(det.category_name, det.score, det.bbox)  # bbox: x, y, w, h in the image's pixels

The letterbox, the model call and the mapping back to original pixels and category ids are
`deploy.evaluate.run_batch`'s, so a prediction is exactly what `pipeline eval` scores.

Thresholds: the model runs its own post-processing (for an exported graph the score threshold,
NMS IoU and detection cap are baked in and stated in its metadata). A Detector can only narrow
that output, and it does so exactly: `conf` at or above the model's score threshold keeps the
detections scoring at least `conf` (dropping low scores after greedy NMS equals dropping them
before, since a box only ever suppresses lower-scored ones), `max_dets` up to the model's cap
keeps the highest scores. An NMS IoU other than the model's own is refused rather than
approximated: a second NMS pass over the graph's output is not NMS at that IoU (a box the graph
already suppressed cannot come back: with A > B > C in score, B suppressing C at the graph's IoU
and A suppressing B at a stricter one, the second pass keeps A alone, one NMS at the stricter IoU
keeps A and C), so it would silently differ from the same model run as a checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from deploy.backends.base import RuntimeSettings
from deploy.errors import DeployError
from deploy.evaluate import checked_metadata, run_batch
from deploy.metadata import Predictor
from deploy.narrow import check_narrowing
from deploy.runtimes import open_deployed

ImageInput = Image.Image | np.ndarray


@dataclass(frozen=True)
class Detection:
    """One detected object: bbox (x, y, w, h) in the original image's pixels, COCO's form."""

    bbox: tuple[float, float, float, float]
    category_id: int
    category_name: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        """The JSON form `pipeline predict` writes."""
        return {
            "bbox": list(self.bbox),
            "category_id": self.category_id,
            "category_name": self.category_name,
            "score": self.score,
        }


class Detector:
    """A predictor plus the thresholds a user asked for; images in, `Detection` lists out.

    Args:
        predictor: anything that meets `deploy.metadata.Predictor` (ONNX Runtime, TensorRT, or
            pipeline.models.load_predictor's PyTorch one for a .pt checkpoint).
        conf: keep detections scoring at least this; not below the model's own threshold.
        iou: the NMS IoU expected; None or the model's own value (see the module docstring).
        max_dets: at most this many detections per image, highest scores first; None: the
            model's cap.
        batch_size: images per model call (a fixed-batch engine needs its own batch size).
    """

    def __init__(
        self,
        predictor: Predictor,
        conf: float = 0.25,
        iou: float | None = None,
        max_dets: int | None = None,
        batch_size: int = 1,
    ) -> None:
        self.predictor = predictor
        self.metadata = checked_metadata(predictor)
        self.source = str(getattr(predictor, "path", getattr(predictor, "backend_name", "model")))
        self.conf = float(conf)
        own = self.metadata.postprocess
        self.iou = own.nms_iou if iou is None else float(iou)
        self.max_dets = own.max_detections if max_dets is None else int(max_dets)
        self.batch_size = int(batch_size)
        self._check_settings()
        self._names = dict(zip(self.metadata.category_ids, self.metadata.class_names, strict=True))

    @classmethod
    def load(
        cls,
        path: str | Path,
        provider: str = "auto",
        conf: float = 0.25,
        iou: float | None = None,
        max_dets: int | None = None,
        batch_size: int = 1,
    ) -> Detector:
        """A Detector for an exported .onnx model, a TensorRT .engine or an OpenVINO .xml
        (`provider` applies to .onnx: auto, cpu, cuda or tensorrt). A .pt checkpoint needs torch, which deploy/ never
        loads: pass `pipeline.models.load_predictor(path)` to `Detector(...)` instead."""
        predictor = _load_deployed_predictor(Path(path), provider)
        return cls(predictor, conf=conf, iou=iou, max_dets=max_dets, batch_size=batch_size)

    def __call__(self, image: ImageInput) -> list[Detection]:
        """Detections in one image (PIL image, or H x W x 3 uint8 RGB array), best first."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[list[Detection]]:
        """One list of detections per image, in the order given, each best first."""
        pil_images = [as_pil_image(image, index) for index, image in enumerate(images)]
        results: list[dict[str, Any]] = []
        for start in range(0, len(pil_images), self.batch_size):
            chunk = list(enumerate(pil_images[start : start + self.batch_size], start))
            results += run_batch(self.predictor, self.metadata, chunk, self.batch_size)
        per_image: list[list[Detection]] = [[] for _ in pil_images]
        for result in results:
            per_image[result["image_id"]].append(self._detection(result))
        return [self._narrowed(detections) for detections in per_image]

    def _detection(self, result: dict[str, Any]) -> Detection:
        category_id = int(result["category_id"])
        x, y, w, h = (float(v) for v in result["bbox"])
        return Detection((x, y, w, h), category_id, self._names[category_id], result["score"])

    def _narrowed(self, detections: list[Detection]) -> list[Detection]:
        kept = sorted((d for d in detections if d.score >= self.conf), key=lambda d: -d.score)
        return kept[: self.max_dets]

    def _check_settings(self) -> None:
        """Refuse what the model's own post-processing makes impossible to honour exactly."""
        check_narrowing(self.metadata, self.conf, self.iou, self.max_dets, self.source)
        if self.batch_size < 1:
            raise DeployError(f"batch size must be >= 1, got {self.batch_size}")


def as_pil_image(image: ImageInput, index: int = 0) -> Image.Image:
    """A PIL image as given, or an H x W x 3 uint8 RGB array as a PIL image (not copied)."""
    if isinstance(image, Image.Image):
        return image
    if _is_rgb_uint8_array(image):
        return Image.fromarray(np.ascontiguousarray(image))
    shape = getattr(image, "shape", None)
    dtype = getattr(image, "dtype", None)
    raise DeployError(
        f"image {index}: expected a PIL image or an H x W x 3 uint8 RGB array, got "
        f"{type(image).__name__}" + (f" {shape} {dtype}" if shape is not None else "")
    )


def _is_rgb_uint8_array(image: object) -> bool:
    return (
        isinstance(image, np.ndarray)
        and image.dtype == np.uint8
        and image.ndim == 3
        and image.shape[2] == 3
        and image.size > 0
    )


def _load_deployed_predictor(path: Path, provider: str) -> Predictor:
    """The runtime for an .onnx, .xml or .engine file; a .pt is one line saying why not here."""
    if path.suffix.lower() == ".pt" and path.is_file():
        raise DeployError(
            f"{path}: a .pt checkpoint needs torch, which deploy/ never loads; use "
            "Detector(pipeline.models.load_predictor(path)) or export it with `pipeline export`"
        )
    return open_deployed(path, RuntimeSettings(provider=provider))
