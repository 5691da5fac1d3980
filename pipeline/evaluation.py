"""`pipeline eval`: any model file -> the one evaluator -> report JSON + COCO results."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deploy.eval_report import write_json_atomic
from deploy.evaluate import environment_info, evaluate
from pipeline.command_options import EvalOptions
from pipeline.datasets import model_split
from pipeline.errors import PipelineError
from pipeline.models import load_predictor
from pipeline.outputs import check_output_file
from train.config import TrainConfig

if TYPE_CHECKING:
    from train.data.splits import Split


def run_eval(model_path: Path, options: EvalOptions) -> dict[str, Any]:
    """Score one model file with COCO mAP and time it; the report (also written to json_path)."""
    return _run_eval(model_path, options)[0]


def _run_eval(model_path: Path, options: EvalOptions) -> tuple[dict[str, Any], Any]:
    """run_eval's report and the metadata the model was run with."""
    o = options
    for output in (o.json_path, o.results):
        if output is not None:
            check_output_file(output, o.overwrite)
    predictor = load_predictor(
        model_path,
        provider=o.provider,
        device=o.device,
        cuda_api=o.cuda_api,
        cuda_graph=o.cuda_graph,
        openvino_hint=o.openvino_hint,
    )
    if o.thresholds is not None:
        predictor = o.thresholds.applied_to(predictor, model_path)
    if hasattr(predictor, "candidate_counts"):  # a PyTorch model: count its NMS candidates too
        predictor.candidate_counts = []
    if o.split_files is not None:
        ann_file, img_dir = o.split_files
    else:
        ann_file, img_dir = model_split(o.data, predictor.metadata.extra, o.split)
    report = evaluate(
        predictor,
        ann_file,
        img_dir,
        batch_size=o.batch_size,
        warmup=o.warmup,
        max_images=o.max_images,
        results_path=o.results,
        strict=o.strict,
    )
    report["model"] = str(model_path)
    conversion = predictor.metadata.extra.get("conversion")
    if conversion:  # how an int8 or fp16 model was made: calibrator, images, their list's hash
        report["conversion"] = conversion
    counts = getattr(predictor, "candidate_counts", None)  # PyTorch models only
    if counts and report.get("num_images"):  # the scored images come after the warm-up calls
        scored = counts[-int(report["num_images"]) :]
        report["nms_candidates_per_image"] = sum(scored) / len(scored)
    report["environment"] = environment_info()
    if o.json_path is not None:
        write_json_atomic(o.json_path, report)
    return report, predictor.metadata


def scored_files(folder: Path, name: str) -> tuple[Path, Path]:
    """report_{name}.json and detections_{name}.json of an engine scored in a run folder; a ':'
    in the name (a calibration, onnx-int8:entropy) becomes '.' so the name is a file name
    everywhere."""
    tag = name.replace(":", ".")
    return folder / f"report_{tag}.json", folder / f"detections_{tag}.json"


def eval_in_run(name: str, model_path: Path, config: TrainConfig) -> dict[str, Any]:
    """Score a model of the run in `config.out` on its validation split, batch 1, as `run` and
    `compare` report it: report_{name}.json and detections_{name}.json beside the checkpoints;
    a .pt is timed on the device it trained on."""
    from train.distributed import resolve_device  # torch; `run` and `compare` have it loaded

    report_path, detections_path = scored_files(Path(config.out), name)
    val = run_val_split(config)
    options = EvalOptions(
        split_files=(val.ann, val.images),
        device=resolve_device(config.device).type,
        max_images=config.max_val_images,
        json_path=report_path,
        results=detections_path,
        strict=config.strict,
        overwrite=True,  # the run's own reports: a resumed or re-scored run replaces them
    )
    return run_eval(model_path, options)


def run_val_split(config: TrainConfig) -> Split:
    """The split a run validated on (its own files, carved or found under --data)."""
    from train.data.splits import validation_split

    val = validation_split(config)
    if val is None:
        raise PipelineError(
            f"{config.data}: no val split to score on; pass --val-fraction F or --val-ann and "
            "--val-images"
        )
    return val


def _scored_detections(model_path: Path, options: EvalOptions) -> tuple[dict, list[dict], Any]:
    """(report, COCO results, predictor metadata) of one model on the options' split."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(prefix="compare-to-") as tmp:
        results = Path(tmp) / "results.json"
        settings = dataclasses.replace(options, results=results, json_path=None)
        report, metadata = _run_eval(model_path, settings)
        detections = json.loads(results.read_text())
    return report, detections, metadata


def run_compare_to(model_a: Path, model_b: Path, options: EvalOptions) -> dict[str, Any]:
    """Score A and B on the same images, then where they disagree (deploy/agreement.py).

    The report is A's, with B's metrics and the comparison under "compare_to".
    """
    from deploy.agreement import agreement, diagnosis, layer_errors, metadata_differences

    if options.json_path is not None:
        check_output_file(options.json_path, options.overwrite)
    report_a, dets_a, meta_a = _scored_detections(model_a, options)
    report_b, dets_b, meta_b = _scored_detections(model_b, options)
    names = dict(zip(meta_a.category_ids, meta_a.class_names, strict=True))
    found = agreement(dets_a, dets_b, names)
    differences = metadata_differences(meta_a, meta_b)
    found |= {"model": str(model_b), "metrics": report_b["metrics"], "latency": report_b["latency"],
              "throughput_ips": report_b.get("throughput_ips"), "backend": report_b.get("backend"),
              "metadata_differences": differences, "diagnosis": diagnosis(found, differences)}  # fmt: skip

    if model_a.suffix.lower() == model_b.suffix.lower() == ".onnx":
        found["layers"] = layer_errors(model_a, model_b, _probe_images(options, meta_a))
    report_a["compare_to"] = found
    if options.json_path is not None:
        write_json_atomic(options.json_path, report_a)
    return report_a


def _probe_images(options: EvalOptions, metadata: Any, count: int = 4) -> Any:
    """A few letterboxed images of the scored split, for the per-layer comparison."""
    from deploy.evaluate import letterboxed_images

    if options.split_files is not None:
        ann_file, img_dir = options.split_files
    else:
        ann_file, img_dir = model_split(options.data, metadata.extra, options.split)
    return letterboxed_images(ann_file, img_dir, metadata.img_size, count, metadata.pad_value)
