"""`pipeline export`: checkpoint -> ONNX (decode + NMS in the graph) -> parity check, and on request
a reduced-precision ONNX for ONNX Runtime (int8 QDQ, fp16) and one engine's file (the engine
table's rows with an export flag: an OpenVINO IR, a TensorRT engine), written by that row's
exporter (export/<engine>.py) and then opened with deploy's loader and compared with ONNX Runtime.

Files, beside the weights unless --out says otherwise (`model` is --out's stem; names from the
engine table, common/engines.py): model.onnx (float32, always: the reference every other file is
compared to), model.int8.onnx / model.fp16.onnx (without an engine flag, and as the source of
OpenVINO's int8 IR), model.<precision>.xml + .bin (--openvino), model.<precision>.engine +
.engine.json (--trt), and trt_timing.cache (reused by the next engine build in that folder).
"""

from __future__ import annotations

import json
import logging
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from common.contract import Detections
from common.engines import ENGINES, FP32, Engine, named_object
from common.errors import InputError
from deploy.evaluate import letterboxed_images
from deploy.metadata import ModelMetadata
from deploy.runtimes import open_deployed
from export.compat import check_tensorrt_compat, tensorrt_plugins
from export.engine_job import EngineJob
from export.onnx import (
    check_parity,
    compare_detections,
    export_onnx,
    run_onnxruntime,
    update_metadata,
)
from export.options import ONNX, ExportOptions, engine_asked, engines_asked
from pipeline.datasets import model_split
from pipeline.errors import PipelineError
from pipeline.models import metadata_from_checkpoint
from pipeline.options import option_flags
from pipeline.outputs import check_output_file
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.model.detectors import is_two_stage

log = logging.getLogger(__name__)


def split_parity_images(ann_file: Path, img_dir: Path, img_size: int, count: int = 4) -> np.ndarray:
    """The parity check's images: the first `count` readable ones of the split."""
    return letterboxed_images(ann_file, img_dir, img_size, count)


def _refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    for path in paths:  # exists without --overwrite, or its folder is not writable
        check_output_file(path, overwrite)


def _outputs(out: Path, options: ExportOptions) -> list[Path]:
    """Every file this export writes, the float32 ONNX first and the asked engine's file last
    (names from the engine table); int8 for OpenVINO goes through model.int8.onnx unless NNCF."""
    paths = [out]
    precision, engine = options.precision, engine_asked(options)
    if _writes_onnx_variant(options):
        paths.append(out.with_name(ONNX.model_file(precision, out.stem)))
    if engine is not ONNX:
        paths.append(out.with_name(engine.model_file(precision, out.stem)))
    return paths


def _writes_onnx_variant(options: ExportOptions) -> bool:
    """model.<precision>.onnx: fp16 or int8 for ONNX Runtime, and the QDQ model an engine's int8
    file is converted from (the table's int8_from_qdq: OpenVINO unless NNCF quantizes)."""
    precision, engine = options.precision, engine_asked(options)
    if precision == FP32 or precision not in ONNX.precisions:
        return False
    return engine is ONNX or (
        precision == "int8" and engine.int8_from_qdq and not _by_nncf(options)
    )


def _by_nncf(options: ExportOptions) -> bool:
    """OpenVINO int8 quantized by NNCF from the fp32 IR (no QDQ ONNX in between)."""
    return options.int8_method == "nncf"


def _check_nncf(options: ExportOptions) -> None:
    if not (options.openvino and options.precision == "int8"):
        raise PipelineError(
            "--int8-method nncf: only --openvino --precision int8 is quantized by NNCF; it "
            "would change nothing here"
        )
    if options.calibration is not None:
        raise PipelineError(
            f"--calibration {options.calibration}: NNCF sets its ranges itself; the calibrators "
            "are ONNX Runtime's (--int8-method qdq)"
        )
    if options.max_ap_drop is not None:
        raise PipelineError(
            "--max-ap-drop: the budget search keeps layers of the QDQ model in float; use "
            "--int8-method qdq (NNCF's own accuracy control is not wired in)"
        )


def _check_options_apply(options: ExportOptions) -> None:
    """An engine's option set away from its default for no file this export writes would change
    nothing: one line naming the engines that take it (the engine table's export_options)."""
    written = {ONNX.name, engine_asked(options).name}
    defaults = ExportOptions()
    for f in fields(ExportOptions):
        flag = option_flags(f)[0]
        takers = [e for e in ENGINES if flag in e.export_options]
        if not takers or getattr(options, f.name) == getattr(defaults, f.name):
            continue
        if not any(e.name in written for e in takers):
            names = " and ".join(f"{e.runtime} ({e.export_flag})" for e in takers)
            raise PipelineError(f"{flag}: only {names} takes it; it would change nothing here")


def _check_combination(options: ExportOptions) -> None:
    """The precisions each target knows, one target at a time, and no option left unused."""
    asked = engines_asked(options)
    if len(asked) > 1:
        flags = " and ".join(str(e.export_flag) for e in asked)
        raise PipelineError(f"{flags}: choose one engine per export")
    if _by_nncf(options):
        _check_nncf(options)
    _check_options_apply(options)
    if options.max_ap_drop is not None and not (
        options.precision == "int8" and _writes_onnx_variant(options)
    ):
        raise PipelineError(
            "--max-ap-drop: only --precision int8 for ONNX Runtime (and the OpenVINO IR made "
            "from it) is quantized within a budget; it would change nothing here"
        )
    calib_images = options.calib_images
    calibrating = {  # the calibration options given, with their values
        "--calibration": options.calibration,
        "--calib-images": calib_images if calib_images != ExportOptions().calib_images else None,
    }
    for flag, value in calibrating.items():
        if value is not None and options.precision != "int8":
            raise PipelineError(
                f"{flag} {value}: only --precision int8 calibrates; it would change nothing"
            )
    engine = engine_asked(options)
    if options.precision not in engine.precisions:
        takers = [e.runtime for e in ENGINES if e.precisions == engine.precisions]
        verb = "takes" if len(takers) == 1 else "take"
        raise PipelineError(
            f"--precision {options.precision}: {' and '.join(takers)} {verb} "
            f"{', '.join(engine.precisions)}"
        )


def _check_detector(model: Any, options: ExportOptions) -> None:
    """What is written for the one-stage graph only (its head's outputs are where they start)."""
    if not is_two_stage(model):
        return
    if options.max_ap_drop is not None:
        raise PipelineError(
            "--max-ap-drop: the budget search ranks the one-stage network's layers; the "
            "two-stage detector's int8 is plain --precision int8 (its FPN quantized)"
        )
    if _by_nncf(options):
        raise PipelineError(
            "--int8-method nncf: written for the one-stage graph; the two-stage detector's "
            "OpenVINO int8 is converted from its QDQ model (--int8-method qdq)"
        )


def _calibration(train: tuple[Path, Path], metadata: ModelMetadata, count: int) -> Any:
    from export.quantize import split_images

    return split_images(*train, metadata.img_size, count, metadata.pad_value)


def _with_precision(metadata: ModelMetadata, precision: str, detail: dict) -> ModelMetadata:
    extra = {**metadata.extra, "precision": precision, "conversion": detail}
    return replace(metadata, extra=extra)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(R, O) IoU of xyxy boxes a (R, 4) and b (O, 4)."""
    low = np.maximum(a[:, None, :2], b[None, :, :2])
    high = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)[:, None]
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)[None, :]
    return inter / np.maximum(area_a + area_b - inter, 1e-9)


def agreement(reference: Any, other: Any, min_score: float = 0.3, min_iou: float = 0.8) -> tuple:
    """(found, total): the reference's detections scoring >= min_score that `other` also has
    (same label, IoU >= min_iou, any score). A reduced-precision model moves scores a little,
    so exact row-by-row parity does not apply; AP itself comes from `pipeline eval`."""
    found = total = 0
    for b in range(len(reference.num_dets)):
        n_ref, n_other = int(reference.num_dets[b]), int(other.num_dets[b])
        keep = reference.scores[b, :n_ref] >= min_score
        ref_boxes, ref_labels = reference.boxes[b, :n_ref][keep], reference.labels[b, :n_ref][keep]
        total += len(ref_boxes)
        if len(ref_boxes) and n_other:
            same = ref_labels[:, None] == other.labels[b, :n_other][None, :]
            close = _iou(ref_boxes, other.boxes[b, :n_other]) >= min_iou
            found += int((same & close).any(axis=1).sum())
    return found, total


def _compare_line(name: str, reference: Any, other: Any) -> str:
    found, total = agreement(reference, other)
    exact = compare_detections(reference, other)["match"]
    return (
        f"{name} vs float32 ONNX on {len(reference.num_dets)} images: "
        f"{int(other.num_dets.sum())} vs {int(reference.num_dets.sum())} detections; "
        f"{found}/{total} of the float32 ones scoring >= 0.3 found again (same class, IoU >= 0.8)"
        f"; exact parity: {exact}"
    )


def _budget_line(budget: dict[str, Any]) -> str:
    kept = budget["float_layers"]
    slower = budget["p50_ms_int8"] >= budget["p50_ms_fp32"]
    return (
        f"int8 within --max-ap-drop {budget['max_ap_drop']:g}: AP {budget['ap_int8']:.2f} vs fp32 "
        f"{budget['ap_fp32']:.2f} on the {budget['slice']}, p50 {budget['p50_ms_int8']:.2f} ms "
        f"vs {budget['p50_ms_fp32']:.2f} ms; {len(kept)} layer(s) kept in float"
        + (f": {', '.join(kept)}" if kept else "")
        + ("; no faster than fp32 here: ship fp32" if slower else "")
    )


def _onnx_variant(
    out: Path,
    target: Path,
    options: ExportOptions,
    metadata: ModelMetadata,
    train: tuple[Path, Path] | None,
    check: np.ndarray,
    val: tuple[Path, Path] | None = None,
) -> list[str]:
    """model.int8.onnx (static QDQ, calibrated on train images) or model.fp16.onnx."""
    from export.quantize import convert_fp16, quantize_int8

    if options.precision == "int8":
        from export.quantize import QuantizeOptions

        method = QuantizeOptions(method=options.calibration or "minmax")
        if options.max_ap_drop is None:
            images = _calibration(train, metadata, options.calib_images)
            detail = quantize_int8(out, target, images, method)
        else:
            from pipeline.int8_budget import quantize_within_budget

            detail = quantize_within_budget(
                out, target, lambda: _calibration(train, metadata, options.calib_images), val,
                check, options.max_ap_drop, method,
            )  # fmt: skip
        detail |= _fingerprint(train, options.calib_images)
    else:
        detail = convert_fp16(out, target)
    update_metadata(target, _with_precision(metadata, options.precision, detail).to_props())
    lines = [f"wrote {target} ({options.precision}: {json.dumps(detail)})"]
    if "budget" in detail:
        lines.append(_budget_line(detail["budget"]))
    if options.precision == "int8":  # fp16 runs on GPUs only; checked there
        reference = run_onnxruntime(out, check)
        lines.append(_compare_line("int8", reference, run_onnxruntime(target, check)))
    return lines


def at_input_size(payload: dict[str, Any], img_size: int | None) -> dict[str, Any]:
    """The checkpoint as if trained at `img_size` (the network is convolutional; only the
    anchors and the letterbox size follow the input size)."""
    if img_size is None or img_size == payload["img_size"]:
        return payload
    config = {**payload["model_config"], "img_size": img_size}
    return {**payload, "model_config": config, "img_size": img_size}


def run_export(
    weights: Path,
    out: Path | None,
    data: Path | None,
    overwrite: bool,
    options: ExportOptions | None = None,
) -> str:
    """Export, check, and optionally convert; returns the summary lines for the CLI."""
    options = options or ExportOptions()
    _check_combination(options)
    engine = engine_asked(options)
    if engine.requirement is not None:  # before any work: --trt on a CPU fails in a second
        named_object(engine.requirement)()
    if _by_nncf(options):
        from export.openvino_nncf import require_nncf

        require_nncf()
    payload = at_input_size(load_checkpoint(weights), options.img_size)
    model = model_from_checkpoint(payload, weights)
    _check_detector(model, options)
    out = out or weights.parent / "model.onnx"
    paths = _outputs(out, options)
    _refuse_overwrite(paths, overwrite)
    post = options.postprocess()
    # what the graph applies, for eval and predict to read
    metadata = replace(metadata_from_checkpoint(payload), postprocess=post)
    # the model's own val split (or --data's) for parity, before writing: a bad one fails first
    val = model_split(data, metadata.extra, "val")
    images = split_parity_images(*val, metadata.img_size)
    train = None
    if options.precision == "int8":  # the calibration split too, before anything is written
        try:
            train = model_split(data, metadata.extra, "train")
        except InputError as exc:
            raise InputError(f"{exc} (int8 calibrates on the train split)") from exc
    export_onnx(model, out, metadata.to_props(), opset=options.opset, postprocess=post)
    parity = check_parity(model, out, images)
    update_metadata(out, {"parity": json.dumps(parity, default=float)})  # travels with the model
    written = onnx.load(str(out), load_external_data=False)  # read once for both checks
    problems, plugins = check_tensorrt_compat(written), tensorrt_plugins(written)
    lines = [
        f"wrote {out}",
        f"parity on {len(images)} images: max box diff {parity['max_box_diff']:.2e} px, "
        f"max score diff {parity['max_score_diff']:.2e}, detections match: {parity['match']}",
        "TensorRT compatibility: "
        + ("ok" if not problems else "; ".join(problems))
        + "".join(f"; needs: {p}" for p in plugins),
    ]
    variant = paths[1] if _writes_onnx_variant(options) else None
    if variant is not None:
        lines += _onnx_variant(out, variant, options, metadata, train, images, val)
    if engine.exporter is not None:
        job = EngineJob(
            onnx=out,
            target=paths[-1],
            options=options,
            quantized=variant if options.precision == "int8" else None,
            stamp=lambda precision, detail: _with_precision(metadata, precision, detail).to_props(),
            calibration=lambda: _calibration(train, metadata, options.calib_images),
            fingerprint=lambda: _fingerprint(train, options.calib_images),
        )
        lines.append(named_object(engine.exporter)(job))
        lines.append(_check_engine_file(engine, paths[-1], options.precision, out, images))
    return "\n".join(lines)


def _fingerprint(train: tuple[Path, Path], count: int) -> dict[str, Any]:
    from export.quantize import calibration_fingerprint

    return calibration_fingerprint(train[0], count)


def _run_one_by_one(predictor: Any, images: np.ndarray) -> Detections:
    """Every image on its own: any engine takes batch 1 (a TensorRT plan may take no more)."""
    each = [predictor(images[i : i + 1]) for i in range(len(images))]
    fields = ("num_dets", "boxes", "scores", "labels")
    return Detections(*(np.concatenate([getattr(d, f) for d in each]) for f in fields))


def _check_engine_file(
    engine: Engine, target: Path, precision: str, reference: Path, images: np.ndarray
) -> str:
    """The written file opened by deploy's loader, as eval would, against the fp32 ONNX: exact
    parity at fp32, the detections found again otherwise."""
    detections = _run_one_by_one(open_deployed(target), images)
    fp32 = run_onnxruntime(reference, images)
    name = f"{engine.runtime} {precision}"
    if precision != FP32:
        return _compare_line(name, fp32, detections)
    exact = compare_detections(fp32, detections)
    return (
        f"{name} vs ONNX Runtime fp32 on {len(images)} images: max box diff "
        f"{exact['max_box_diff']:.2e} px, max score diff {exact['max_score_diff']:.2e}, "
        f"detections match: {exact['match']}"
    )
