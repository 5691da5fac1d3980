"""The options of every command but train, run and compare (TrainConfig and pipeline/study/ hold
theirs), each described once: by a field of an option dataclass (common.settings.setting).

pipeline/options.py generates the click options of a command from its dataclass and fills the
dataclass from the parsed command line. EvalOptions and PredictOptions are also what eval and
predict run with (pipeline/evaluation.py and predicting.py import them from here), ExportOptions
lives with the export stage (export/options.py); the `...Command` classes add what a command takes
beside them (the model file, the output folder, ...). Torch-free: importing the CLI must not load
torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.contract import (
    MAX_DETECTIONS,
    NMS_IOU,
    SCORE_THRESHOLD,
)
from common.datasets.layout import SPLITS
from common.settings import (
    conf_setting,
    device_setting,
    iou_setting,
    max_dets_setting,
    setting,
)
from export.options import ExportOptions

PROVIDERS = ("auto", "cpu", "cuda", "tensorrt")

MODEL_FILE = "A .pt checkpoint, .onnx model, TensorRT .engine or OpenVINO .xml file."
CHECKPOINT_DEVICE = "Device for .pt checkpoints (auto: CUDA when available, else CPU)."


# Options several commands share; each command says what its post-processing options do.
def model_setting(help: str) -> Any:  # noqa: A002
    """--model (--weights still accepted): the model file, required."""
    return setting(help=help, flags=("--model", "--weights"))


def provider_setting() -> Any:
    return setting("auto", "ONNX Runtime execution provider.", choices=PROVIDERS)


def split_setting(default: str, help: str) -> Any:  # noqa: A002
    return setting(default, help, choices=SPLITS)


# ---------------------------------------------------------------------------- pipeline export
@dataclass(frozen=True, kw_only=True)
class ExportCommand:
    weights: Path = model_setting("The .pt checkpoint to export (best.pt or last.pt of a run).")
    out: Path | None = setting(
        None,
        "Output .onnx (default: model.onnx beside the weights); other files take its stem.",
    )
    data: Path | None = setting(
        None,
        "Dataset for parity images (val) and int8 calibration images (train); default: the "
        "model's own split files or dataset when still on disk, else the built-in one.",
    )
    options: ExportOptions = setting(nested=True, factory=ExportOptions)
    overwrite: bool = setting(False, "Replace existing output files.")


# ------------------------------------------------------------------------------ pipeline eval
@dataclass(frozen=True)
class Thresholds:
    """Post-processing asked of `pipeline eval`; None keeps the model's own value."""

    conf: float | None = conf_setting(
        f"Score threshold (default: the model's own, {SCORE_THRESHOLD:g}; an exported model's can only be raised)."
    )
    iou: float | None = iou_setting(
        f"NMS IoU (default: the model's own, {NMS_IOU:g}; only a .pt can change it)."
    )
    max_dets: int | None = max_dets_setting(
        f"Detections per image at most (default: the model's own, {MAX_DETECTIONS}; an exported "
        "model's can only be lowered)."
    )

    def applied_to(self, predictor: Any, model_path: Path) -> Any:
        """A .pt runs its NMS at exactly these values; a deployed model (NMS in its graph) is
        narrowed after the fact where that is exact, and refuses the rest (deploy/narrow.py)."""
        from deploy.narrow import NarrowedPredictor, check_narrowing

        model = predictor.metadata
        own = model.postprocess
        conf = own.score_threshold if self.conf is None else self.conf
        iou = own.nms_iou if self.iou is None else self.iou
        max_dets = own.max_detections if self.max_dets is None else self.max_dets
        if (conf, iou, max_dets) == (own.score_threshold, own.nms_iou, own.max_detections):
            return predictor
        if Path(model_path).suffix.lower() == ".pt":
            asked = {"score_threshold": conf, "nms_iou": iou, "max_detections": max_dets}
            predictor.run_thresholds(dataclasses.replace(own, **asked))
            return predictor
        check_narrowing(model, conf, iou, max_dets, str(model_path))
        return NarrowedPredictor(predictor, conf, max_dets)


@dataclass(frozen=True, kw_only=True)
class EvalOptions:
    """How `pipeline eval` scores a model: on what, through which runtime, and what it writes.

    split_files: (annotation json, image folder) to score on instead of `data`'s `split`.
    overwrite=False refuses to replace an existing report (json_path) or results file (the
    scoring inside `run` and `compare` replaces its own).
    """

    data: Path | None = setting(
        None,
        "Dataset folder (default: the model's own split files or dataset when still on disk, "
        "else the built-in one).",
    )
    split: str = split_setting("val", "Which split to score.")
    split_files: tuple[Path, Path] | None = setting(None, cli=False)
    batch_size: int = setting(1, "Images per model call (latency is reported per image).", min=1)
    provider: str = provider_setting()
    device: str = device_setting(CHECKPOINT_DEVICE)
    max_images: int | None = setting(None, "Score the first N images of the split only.", min=1)
    warmup: int = setting(5, "Untimed model calls before timing starts.", min=0)
    json_path: Path | None = setting(None, "Write the report here.", flags=("--json",))
    results: Path | None = setting(None, "Write detections in COCO results format here.")
    strict: bool = setting(False, "An unreadable image is an error, not skipped.")
    cuda_api: str = setting(
        "auto", "CUDA bindings for .engine files.", choices=("auto", "cuda-python", "pycuda")
    )
    cuda_graph: bool = setting(False, "Replay a captured CUDA graph (.engine, batch 1).")
    thresholds: Thresholds | None = setting(None, nested=True)
    openvino_hint: str = setting(
        "latency",
        "OpenVINO (.xml) performance hint: one request as fast as possible, or parallel "
        "streams for batches.",
        choices=("latency", "throughput"),
    )
    overwrite: bool = setting(False, "Replace existing --json / --results files.")


@dataclass(frozen=True, kw_only=True)
class EvalCommand:
    model_path: Path = model_setting(MODEL_FILE)
    options: EvalOptions = setting(nested=True, factory=EvalOptions)
    compare_to: Path | None = setting(
        None,
        "A second model file (another engine or export of the same model): score both on the "
        "same images and say where they differ (settings, detections paired at IoU > 0.99, "
        "score differences per class and object size, per-layer SQNR when both are ONNX).",
    )


# --------------------------------------------------------------------------- pipeline predict
@dataclass(frozen=True, kw_only=True)
class PredictOptions:
    """The thresholds and runtime choices of `pipeline predict` (see its --help)."""

    conf: float = conf_setting(
        f"Keep detections scoring at least this (not below the model's own threshold, {SCORE_THRESHOLD:g}).",
        default=0.25,
    )
    iou: float | None = iou_setting(
        f"NMS IoU (default: the model's own, {NMS_IOU:g}). A .pt runs NMS at any IoU; .onnx and "
        ".engine files have NMS in the graph and accept only its value."
    )
    max_dets: int | None = max_dets_setting(
        f"At most this many detections per image (default: the model's cap, {MAX_DETECTIONS})."
    )
    batch_size: int = setting(
        1,
        "Images per model call (an .engine takes at most the batch it was built for).",
        min=1,
    )
    provider: str = provider_setting()
    device: str = device_setting(CHECKPOINT_DEVICE)


@dataclass(frozen=True, kw_only=True)
class PredictCommand:
    sources: tuple[str, ...] = setting(help="Images, folders or glob patterns.", argument=True)
    model_path: Path = model_setting(MODEL_FILE)
    out: Path = setting(help="Folder for the drawn images (same file names) and detections.json.")
    options: PredictOptions = setting(nested=True, factory=PredictOptions)
    overwrite: bool = setting(False, "Replace existing drawn images / detections.json.")


# ------------------------------------------------------------------------------ pipeline data
@dataclass(frozen=True, kw_only=True)
class SynthOptions:
    out: Path = setting(help="Dataset folder to create.")
    num_train: int = setting(1200, "Training images.", min=1)
    num_val: int = setting(200, "Val images.", min=1)
    seed: int = setting(0, "Seed of the drawing: the same seed writes the same dataset.")
    label_noise: float = setting(
        0.0,
        "Fraction of train annotations given a wrong class (val stays clean).",
        min=0,
        max=1,
    )
    overwrite: bool = setting(False, "Replace an existing dataset in --out.")


@dataclass(frozen=True, kw_only=True)
class ShowOptions:
    data: Path | None = setting(None, "Dataset folder (default: the built-in synthetic one).")
    split: str = split_setting("train", "Which split to draw.")
    num: int = setting(16, "Images in the grid.", min=1)
    seed: int | None = setting(
        None, "Show a random sample drawn with this seed (default: the first images by id)."
    )
    out: Path | None = setting(
        None, "Output image (default: data_<split>.png in the current folder)."
    )
    overwrite: bool = setting(False, "Replace an existing --out file.")


@dataclass(frozen=True, kw_only=True)
class ConvertOptions:
    source_format: str = setting(
        help="The layout of --data: Pascal VOC or YOLO txt.",
        choices=("voc", "yolo"),
        flags=("--from",),
    )
    data: Path = setting(help="The VOC or YOLO dataset folder.")
    out: Path = setting(help="COCO dataset folder to create (must not exist).")


# --------------------------------------------------------------------------- pipeline analyze
@dataclass(frozen=True, kw_only=True)
class AnalyzeOptions:
    weights: Path = model_setting("The .pt checkpoint to analyze.")
    data: Path | None = setting(
        None,
        "Dataset whose val split is analyzed (default: the val split files the checkpoint "
        "validated on when still on disk, else its dataset's, else the built-in one).",
    )
    out: Path | None = setting(None, "Output folder (default: analysis/ beside the weights).")
    max_images: int | None = setting(
        None,
        "First N validation images (memory grows with images x anchors x classes).",
        min=1,
    )
    device: str = device_setting("Where the model runs (auto: CUDA when available, else CPU).")
