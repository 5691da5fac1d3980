"""One evaluator for every predictor: COCO bbox mAP plus per-stage latency on the same images.

The loop per batch: read images (not timed: disk speed is not the model's), letterbox and stack
(preprocess_ms), run the predictor (inference_ms), map detections back to original pixels and
COCO category ids (postprocess_ms). Warm-up runs repeat the first batch before timing starts, so
every image is scored once and timed once. `benchmark_latency` runs the same loop on random
images without the scorer.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from common.dataset_paths import image_file
from common.datasets.coco_json import read_coco_json
from common.image import INPUT_FORMAT, PAD_VALUE, letterbox
from deploy.errors import DeployError
from deploy.eval_report import write_json_atomic
from deploy.latency import StageTimer
from deploy.metadata import ModelMetadata, Predictor
from deploy.preprocess import load_image, to_batch

logger = logging.getLogger(__name__)

# Report name -> index in COCOeval.stats.
METRIC_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}


def evaluate(
    predictor: Predictor,
    ann_file: Path,
    img_dir: Path,
    batch_size: int = 1,
    warmup: int = 3,
    max_images: int | None = None,
    results_path: Path | None = None,
    strict: bool = False,
) -> dict[str, Any]:
    """Score `predictor` on a COCO json + image folder; returns the report dict.

    Metrics are COCOeval bbox stats (0..1; COCO's -1 where the dataset has no ground truth in
    that size range; all 0.0 when the model detects nothing). Latency is per image, in ms.
    Images that cannot be read are skipped with a warning and left out of the scoring
    (`skipped_images` in the report); `strict=True` makes the first one an error.
    """
    ann_file, img_dir = Path(ann_file), Path(img_dir)
    metadata = checked_metadata(predictor)
    _check_batch_args(batch_size, warmup, max_images)
    coco_gt = load_coco(ann_file)
    _check_categories(metadata, coco_gt, ann_file)
    infos = sorted(coco_gt.dataset["images"], key=lambda info: info["id"])[:max_images]
    if not infos:
        raise DeployError(f"{ann_file}: no images to evaluate")
    timer = StageTimer()
    results, skipped = predict_images(
        predictor, infos, img_dir, ann_file, batch_size, strict, warmup, timer
    )
    scored = [info["id"] for info in infos if info["id"] not in skipped]
    if not scored:
        raise DeployError(f"{img_dir}: none of the {len(infos)} images could be read")
    if skipped:
        logger.warning(
            "%s: skipped %d of %d images that could not be read", img_dir, len(skipped), len(infos)
        )
    metrics = score_coco(coco_gt, results, scored)
    if results_path is not None:
        write_json_atomic(results_path, results)
        logger.info("wrote %d detections to %s", len(results), results_path)
    report = {"metrics": metrics, **_timing_report(predictor, timer, batch_size)}
    return report | {"skipped_images": len(skipped)}


def predict_images(
    predictor: Predictor,
    infos: list[dict[str, Any]],
    img_dir: Path,
    ann_file: Path,
    batch_size: int = 1,
    strict: bool = False,
    warmup: int = 0,
    timer: StageTimer | None = None,
) -> tuple[list[dict[str, Any]], set[int]]:
    """COCO result dicts for the images `infos` name, and the ids of those that could not be read.

    The one loop over images that both `evaluate` and DDP-sharded validation run, so a shard's
    detections are exactly what a single process would produce for the same images.
    """
    metadata = checked_metadata(predictor)
    paths = {info["id"]: image_path(img_dir, info.get("file_name"), ann_file) for info in infos}
    reader = _ImageReader(paths, strict)
    timer = timer if timer is not None else StageTimer()
    results = _predict_all(predictor, metadata, infos, reader, batch_size, warmup, timer)
    return results, reader.skipped


def image_path(img_dir: Path, file_name: Any, ann_file: Path) -> Path:
    """img_dir / file_name, refusing anything but a relative path that stays inside img_dir."""
    return image_file(img_dir, file_name, ann_file, DeployError)


def _predict_all(
    predictor: Predictor,
    metadata: ModelMetadata,
    infos: list[dict[str, Any]],
    reader: _ImageReader,
    batch_size: int,
    warmup: int,
    timer: StageTimer,
) -> list[dict[str, Any]]:
    """Warm up on the first batch, then run every batch of readable images under the timer."""
    batches = [infos[i : i + batch_size] for i in range(0, len(infos), batch_size)]
    first = reader.read(batches[0]) if warmup else []
    for _ in range(warmup if first else 0):
        run_batch(predictor, metadata, first, batch_size, timer)
        timer.discard_batch()
    results: list[dict[str, Any]] = []
    for batch in batches:
        pairs = reader.read(batch)
        if pairs:
            results += run_batch(predictor, metadata, pairs, batch_size, timer)
            timer.end_batch(len(pairs))
    return results


def benchmark_latency(
    predictor: Predictor, batch_size: int = 1, iterations: int = 100, warmup: int = 10
) -> dict[str, Any]:
    """Latency and throughput on random 4:3 images through the evaluator's timed loop (no mAP)."""
    metadata = checked_metadata(predictor)
    _check_batch_args(batch_size, warmup, None)
    if iterations < 1:
        raise DeployError(f"iterations must be >= 1, got {iterations}")
    rng = np.random.default_rng(0)
    size = metadata.img_size
    shape = (max(1, size * 3 // 4), size, 3)
    images = [
        (i, Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))) for i in range(batch_size)
    ]
    timer = StageTimer()
    for _ in range(warmup):
        run_batch(predictor, metadata, images, batch_size, timer)
        timer.discard_batch()
    for _ in range(iterations):
        run_batch(predictor, metadata, images, batch_size, timer)
        timer.end_batch(batch_size)
    return _timing_report(predictor, timer, batch_size)


def checked_metadata(predictor: Predictor) -> ModelMetadata:
    """The preprocessing below only produces one input format; refuse any other."""
    metadata = predictor.metadata
    if metadata.input_format != INPUT_FORMAT:
        raise DeployError(
            f"{_backend_name(predictor)}: model expects input format {metadata.input_format!r}, "
            f"this evaluator produces {INPUT_FORMAT!r}"
        )
    return metadata


def _check_batch_args(batch_size: int, warmup: int, max_images: int | None) -> None:
    if batch_size < 1:
        raise DeployError(f"batch size must be >= 1, got {batch_size}")
    if warmup < 0:
        raise DeployError(f"warm-up must be >= 0, got {warmup}")
    if max_images is not None and max_images < 1:
        raise DeployError(f"max images must be >= 1, got {max_images}")


class _ImageReader:
    """Decodes images by id; unreadable ones are skipped (warned once) or, if strict, an error."""

    def __init__(self, paths: dict[int, Path], strict: bool) -> None:
        self.paths, self.strict = paths, strict
        self.skipped: set[int] = set()

    def read(self, infos: list[dict[str, Any]]) -> list[tuple[int, Image.Image]]:
        """(image id, decoded image) pairs; warns when the json's size disagrees with the file's."""
        pairs = []
        for info in infos:
            path = self.paths[info["id"]]
            try:
                image = load_image(path)
            except DeployError as exc:
                if self.strict:
                    raise DeployError(f"{exc} (--strict)") from exc
                if info["id"] not in self.skipped:
                    logger.warning("%s; image skipped", exc)
                self.skipped.add(info["id"])
                continue
            expected = (info.get("width"), info.get("height"))
            if None not in expected and tuple(image.size) != expected:
                logger.warning(
                    "%s: size %s differs from %s in the annotations; boxes use the file's size",
                    path,
                    image.size,
                    expected,
                )
            pairs.append((info["id"], image))
        return pairs


def run_batch(
    predictor: Predictor,
    metadata: ModelMetadata,
    images: list[tuple[int, Image.Image]],
    batch_size: int,
    timer: StageTimer | None = None,
) -> list[dict[str, Any]]:
    """Preprocess, infer, postprocess one batch under the timer; COCO result dicts out.

    `images` are (image id, image) pairs, at most `batch_size` of them. A short last batch is
    padded with copies to `batch_size`, so fixed-batch models (TensorRT engines, static ONNX
    exports) run every batch; the padding's outputs are dropped. The evaluator and
    `deploy.detector.Detector` both run this, so a prediction is what the evaluator scores.
    """
    timer = timer if timer is not None else StageTimer()
    with timer.stage("preprocess_ms"):
        boxed = [letterbox(image, metadata.img_size, metadata.pad_value) for _, image in images]
        arrays = [array for array, _ in boxed]
        batch = to_batch(arrays + [arrays[-1]] * (batch_size - len(arrays)))
    with timer.stage("inference_ms"):
        detections = predictor(batch)
    with timer.stage("postprocess_ms"):
        return postprocess_detections(
            detections,
            scales=[scale for _, scale in boxed],
            image_sizes=[image.size for _, image in images],
            image_ids=[image_id for image_id, _ in images],
            category_ids=metadata.category_ids,
        )


def postprocess_detections(
    detections: Any,
    scales: list[float],
    image_sizes: list[tuple[int, int]],
    image_ids: list[int],
    category_ids: list[int],
) -> list[dict[str, Any]]:
    """Padded letterboxed detections -> COCO results (xywh in original pixels, category ids).

    Only the first num_dets rows of each image count, and rows with label -1 (padding) are
    dropped; boxes are divided by the letterbox scale and clipped to the (width, height) given.
    """
    num_dets = np.asarray(detections.num_dets).reshape(-1)
    all_boxes = np.asarray(detections.boxes, dtype=np.float64)
    all_scores = np.asarray(detections.scores, dtype=np.float64)
    all_labels = np.asarray(detections.labels).astype(np.int64)
    results: list[dict[str, Any]] = []
    for i, (scale, (width, height), image_id) in enumerate(
        zip(scales, image_sizes, image_ids, strict=True)
    ):
        count = int(np.clip(num_dets[i], 0, all_boxes.shape[1]))
        labels = all_labels[i, :count]
        keep = labels >= 0
        if np.any(labels >= len(category_ids)):
            raise DeployError(
                f"model predicted class index {int(labels.max())} but its metadata lists "
                f"{len(category_ids)} classes"
            )
        boxes = all_boxes[i, :count][keep] / scale
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        boxes[:, 2:] -= boxes[:, :2]
        cats = np.asarray(category_ids, dtype=np.int64)[labels[keep]].tolist()
        scores = all_scores[i, :count][keep].tolist()
        for box, score, cat in zip(boxes.tolist(), scores, cats, strict=True):
            results.append(
                {"image_id": image_id, "category_id": int(cat), "bbox": box, "score": score}
            )
    return results


def letterboxed_images(
    ann_file: Path, img_dir: Path, img_size: int, count: int = 4, pad_value: int = PAD_VALUE
) -> np.ndarray:
    """The first `count` readable images of a COCO file, letterboxed exactly as deployment will
    (export's parity check, eval --compare-to's per-layer comparison)."""
    from deploy.preprocess import load_image, to_batch

    arrays = []
    for entry in load_coco(ann_file).dataset["images"]:
        try:  # image_path: no escaping the image folder
            image = load_image(image_path(img_dir, entry["file_name"], ann_file))
        except DeployError as exc:
            logger.warning("%s; not used", exc)
            continue
        arrays.append(letterbox(image, img_size, pad_value)[0])
        if len(arrays) == count:
            break
    if not arrays:
        raise DeployError(f"{img_dir}: no readable image among those {ann_file} lists")
    return to_batch(arrays)


def load_coco(ann_file: Path) -> Any:
    """A pycocotools COCO from a json file, with DeployError for anything unusable.

    Annotations without `area` get w * h, since COCOeval's size ranges need it.
    """
    from pycocotools.coco import COCO

    ann_file = Path(ann_file)
    dataset = read_coco_json(ann_file, ("images", "categories"), DeployError)
    dataset.setdefault("annotations", [])
    try:
        for ann in dataset["annotations"]:
            if "area" not in ann:
                ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
            ann.setdefault("iscrowd", 0)  # optional in COCO files, required by COCOeval
        coco = COCO()
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):
            coco.createIndex()
    except (KeyError, TypeError, IndexError) as exc:
        raise DeployError(
            f"{ann_file}: malformed COCO entry ({type(exc).__name__}: {exc})"
        ) from exc
    return coco


def _check_categories(metadata: ModelMetadata, coco_gt: Any, ann_file: Path) -> None:
    """A model whose category ids are not the dataset's would score 0 AP with no hint why."""
    dataset_ids = set(coco_gt.getCatIds())
    missing = [cid for cid in metadata.category_ids if cid not in dataset_ids]
    if missing and len(missing) == len(metadata.category_ids):
        raise DeployError(
            f"{ann_file}: none of the model's category ids {metadata.category_ids[:10]} "
            "are in this dataset; was the model trained on it?"
        )
    if missing:
        logger.warning("%s: model category ids %s are not in this dataset", ann_file, missing)


def score_coco(
    coco_gt: Any, results: list[dict[str, Any]], image_ids: list[int]
) -> dict[str, float]:
    """COCOeval bbox over `image_ids` only (so --max-images does not count unseen gt as missed)."""
    from pycocotools.cocoeval import COCOeval

    if not results:
        return {name: 0.0 for name in METRIC_INDEX}
    with contextlib.redirect_stdout(io.StringIO()):
        # loadRes adds keys to each dict it gets; hand it copies so `results` stays clean.
        coco_dt = coco_gt.loadRes([dict(result) for result in results])
        evaluator = COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.imgIds = list(image_ids)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(evaluator.stats[index]) for name, index in METRIC_INDEX.items()}


def _backend_name(predictor: Predictor) -> str:
    return str(getattr(predictor, "backend_name", type(predictor).__name__))


def _timing_report(predictor: Predictor, timer: StageTimer, batch_size: int) -> dict[str, Any]:
    return {
        "latency": timer.summary(),
        "throughput_ips": timer.throughput_ips(),
        "num_images": timer.images,
        "batch_size": batch_size,
        "backend": _backend_name(predictor),
        "precision": str(getattr(predictor, "precision", "fp32")),
        # TensorRT engines: whether batch-1 calls replayed a CUDA graph ("replayed"), fell back
        # ("fallback: <why>") or were not asked to ("off"); every other backend: "off".
        "cuda_graph": str(getattr(predictor, "cuda_graph_status", "off")),
    }


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def cpu_name() -> str:
    """platform.processor() is often empty on Linux; /proc/cpuinfo has the model name."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


# The instruction sets that decide bf16 and int8 speed on a CPU (as /proc/cpuinfo names them).
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile",
               "amx_bf16", "amx_int8")  # fmt: skip


def cpu_speed_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> list[str]:
    """Which of SPEED_FLAGS this CPU has (empty where the system has no /proc/cpuinfo)."""
    with contextlib.suppress(OSError):
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("flags"):
                have = set(line.split(":", 1)[1].split())
                return [flag for flag in SPEED_FLAGS if flag in have]
    return []


# Distributions that install each GPU package's module, in the order they are looked up.
TENSORRT_DISTRIBUTIONS = ("tensorrt-cu13", "tensorrt-cu12", "tensorrt")
ONNXRUNTIME_DISTRIBUTIONS = ("onnxruntime-gpu", "onnxruntime")
NVIDIA_DRIVER_FILE = Path("/proc/driver/nvidia/version")


def _installed(distributions: tuple[str, ...]) -> str:
    """ "<version> (<distribution>)" for each of `distributions` installed, or "not installed"."""
    found = [f"{_version(name)} ({name})" for name in distributions]
    found = [text for text in found if not text.startswith("not installed")]
    return ", ".join(found) or "not installed"


def nvidia_driver_version(version_file: Path = NVIDIA_DRIVER_FILE) -> str:
    """The loaded NVIDIA kernel driver's version, read without CUDA (so it works when CUDA fails)."""
    with contextlib.suppress(OSError):
        found = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", version_file.read_text())
        if found:
            return found.group(1)
    return "no NVIDIA driver loaded"


NVIDIA_GPUS_DIR = Path("/proc/driver/nvidia/gpus")


def nvidia_gpu_names(gpus_dir: Path = NVIDIA_GPUS_DIR) -> list[str]:
    """The NVIDIA GPUs' model names as the driver lists them (no CUDA call); [] without one."""
    names = []
    with contextlib.suppress(OSError):
        for info in sorted(gpus_dir.glob("*/information")):
            found = re.search(r"^Model:\s*(.+)$", info.read_text(), re.MULTILINE)
            if found:
                names.append(found.group(1).strip())
    return names


def gpu_stack_versions() -> dict[str, str]:
    """The versions a GPU number depends on (read from package metadata: nothing is imported).

    Two ONNX Runtime distributions listed together mean both write one `onnxruntime` package and
    the last installed won: reinstall one extra (README: Deployment).
    """
    return {
        "onnxruntime_distribution": _installed(ONNXRUNTIME_DISTRIBUTIONS),
        "tensorrt": _installed(TENSORRT_DISTRIBUTIONS),
        "cuda_python": _version("cuda-python"),
        "cuda_bindings": _version("cuda-bindings"),
        "nvidia_driver": nvidia_driver_version(),
    }


def _onnxruntime_info() -> dict[str, Any]:
    try:
        import onnxruntime
    except ImportError:
        return {"onnxruntime": "not installed", "onnxruntime_providers": []}
    return {
        "onnxruntime": onnxruntime.__version__,
        "onnxruntime_providers": onnxruntime.get_available_providers(),
    }


def environment_info() -> dict[str, Any]:
    """Versions and hardware for a report, so a latency number says where it was measured."""
    return {
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        **_onnxruntime_info(),
        "onnx": _version("onnx"),
        "openvino": _version("openvino"),
        "torch": _version("torch"),  # package metadata only: deploy never imports torch
        "pycocotools": _version("pycocotools"),
        "pillow": _version("pillow"),
        **gpu_stack_versions(),
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_flags": cpu_speed_flags(),
        "cpu_count": os.cpu_count(),
        "gpus": nvidia_gpu_names(),
    }
