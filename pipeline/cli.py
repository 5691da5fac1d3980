"""The `pipeline` command: data, train, pretrain, export, eval, predict, run, compare, analyze,
losses, doctor."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from common.contract import CALIBRATION_METHODS
from common.logs import LOG_FORMAT
from pipeline.errors import PipelineError, user_errors_exit_2
from pipeline.help_format import help_all_option, short_help_command
from pipeline.options import (
    SECONDARY_TRAIN_PARAMS,
    config_from_command_line,
    format_loss_listing,
    train_options,
)
from pipeline.study.options import COMPARE_DETAIL_PARAMS, compare_options
from train.config import BACKBONE_NAMES


def device_option(help_text: str) -> Callable:
    """--device auto|cpu|cuda, the same choices in every command that runs a model."""
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda"]),
        default="auto",
        show_default=True,
        help=help_text,
    )


def post_processing_options(
    conf: str, iou: str, max_dets: str, conf_default: float | None = None
) -> Callable:
    """--conf, --iou and --max-dets (export, eval, predict); each command says what they do."""
    options = [
        click.option(
            "--conf",
            type=click.FloatRange(0, 1),
            default=conf_default,
            show_default=conf_default is not None,
            help=conf,
        ),
        click.option("--iou", type=click.FloatRange(0, 1), default=None, help=iou),
        click.option("--max-dets", type=click.IntRange(min=1), default=None, help=max_dets),
    ]

    def apply(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func

    return apply


@click.group()
@click.version_option(package_name="softsample-pipeline", prog_name="pipeline")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Train detectors with soft-sampling losses, deploy them, and measure what ships."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)


@cli.group()
def data() -> None:
    """Datasets."""


@data.command("synth")
@click.option(
    "--out", type=click.Path(path_type=Path), required=True, help="Dataset folder to create."
)
@click.option(
    "--num-train",
    type=click.IntRange(min=1),
    default=1200,
    show_default=True,
    help="Training images.",
)
@click.option(
    "--num-val", type=click.IntRange(min=1), default=200, show_default=True, help="Val images."
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the drawing: the same seed writes the same dataset.",
)
@click.option(
    "--label-noise",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Fraction of train annotations given a wrong class (val stays clean).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing dataset in --out.")
@user_errors_exit_2
def data_synth(
    out: Path, num_train: int, num_val: int, seed: int, label_noise: float, overwrite: bool
) -> None:
    """Write the built-in synthetic shapes dataset (COCO json + PNG)."""
    from train.data.synthetic import generate_synthetic_dataset

    if (out / "annotations").exists() and not overwrite:
        raise PipelineError(f"{out}: already holds a dataset; pass --overwrite to replace it")
    try:
        root = generate_synthetic_dataset(
            out, num_train=num_train, num_val=num_val, seed=seed, label_noise=label_noise
        )
    except OSError as exc:
        raise PipelineError(
            f"{out}: cannot write the dataset there ({exc.strerror or exc})"
        ) from exc
    click.echo(f"wrote {num_train} train + {num_val} val images to {root}")


@data.command("show")
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset folder (default: the built-in synthetic one).",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val"]),
    default="train",
    show_default=True,
    help="Which split to draw.",
)
@click.option(
    "--num",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Images in the grid.",
)
@click.option(
    "--seed",
    type=int,
    default=None,
    help="Show a random sample drawn with this seed (default: the first images by id).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output image (default: data_<split>.png in the current folder).",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing --out file.")
@user_errors_exit_2
def data_show(
    data_dir: Path | None, split: str, num: int, seed: int | None, out: Path | None, overwrite: bool
) -> None:
    """Draw dataset images with their ground-truth boxes into one grid image (crowd dashed)."""
    from pipeline.data_show import run_data_show

    click.echo(run_data_show(data_dir, split, num, seed, out, overwrite).line())


@data.command("convert")
@click.option(
    "--from",
    "source_format",
    type=click.Choice(["voc", "yolo"]),
    required=True,
    help="The layout of --data: Pascal VOC or YOLO txt.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    required=True,
    help="The VOC or YOLO dataset folder.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="COCO dataset folder to create (must not exist).",
)
@user_errors_exit_2
def data_convert(source_format: str, data_dir: Path, out: Path) -> None:
    """Write a VOC or YOLO folder in the built-in COCO layout (--data reads both directly)."""
    from pipeline.data_convert import run_data_convert

    click.echo(run_data_convert(source_format, data_dir, out).line())


def _loss_epilog() -> str:
    from train.losses.registry import describe_losses

    blocks = "\n\n".join("\b\n" + format_loss_listing([entry]) for entry in describe_losses())
    return "Loss options (--loss-opt KEY=VALUE) with their defaults:\n\n" + blocks


# train, run and compare: --help explains the everyday options, --help-all every one.
TrainCommand = short_help_command(SECONDARY_TRAIN_PARAMS, _loss_epilog)
RunCommand = short_help_command(SECONDARY_TRAIN_PARAMS)
CompareCommand = short_help_command(SECONDARY_TRAIN_PARAMS | COMPARE_DETAIL_PARAMS)


def _run_folder(out: Path | None, default: Path, options: dict[str, object]) -> Path:
    """--out, or the next free folder after `default` (runs/train, runs/train2, ...); a
    --resume takes its folder from the checkpoint instead."""
    from pipeline.outputs import next_run_dir

    if out is not None:
        return out
    resume = options.get("resume")
    return Path(str(resume)) if resume is not None else next_run_dir(default)


@cli.command(cls=TrainCommand)
@help_all_option
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder (default: runs/train, or the next free runs/trainN).",
)
@train_options
@user_errors_exit_2
def train(out: Path | None, **options: object) -> None:
    """Train a RetinaNet-style detector with the chosen loss."""
    from pipeline.training import run_training
    from train.distributed import is_main_process

    out = _run_folder(out, Path("runs/train"), options)
    result = run_training(config_from_command_line(out, options))
    if is_main_process():  # under torchrun every rank returns here
        click.echo(
            f"best AP {result.best_ap:.4f}; checkpoints: {result.best_path}, {result.last_path}"
        )


@cli.command("export")
@click.option(
    "--model",
    "--weights",
    "weights",
    type=click.Path(path_type=Path),
    required=True,
    help="The .pt checkpoint to export (best.pt or last.pt of a run).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output .onnx (default: model.onnx beside the weights); other files take its stem.",
)
@click.option(
    "--opset",
    type=click.IntRange(min=17),
    default=17,  # pipeline.exporting.DEFAULT_OPSET; importing it here would load torch
    show_default=True,
    help="ONNX opset of the exported graph (17 or later).",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset for parity images (val) and int8 calibration images (train); default: the "
    "model's own split files or dataset when still on disk, else the built-in one.",
)
@click.option(
    "--trt",
    is_flag=True,
    help="Also build a TensorRT engine (model.<precision>.engine); needs an NVIDIA GPU.",
)
@click.option(
    "--openvino",
    is_flag=True,
    help="Also write an OpenVINO IR (model.<precision>.xml + .bin) for CPU inference.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
    default="fp32",
    show_default=True,
    help="Engine precision with --trt (fp32, fp16, int8) or --openvino (fp32, bf16, int8); "
    "otherwise fp16/int8 write model.<precision>.onnx (int8: static QDQ quantization for ONNX "
    "Runtime, post-processing kept in float; OpenVINO's int8 IR is converted from it).",
)
@click.option(
    "--batch-size",
    "--batch",
    "batch",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Largest batch the TensorRT engine accepts (its optimization profile is 1 / N / N).",
)
@click.option(
    "--workspace",
    type=click.FloatRange(min=0, min_open=True),
    default=4.0,
    show_default=True,
    help="TensorRT builder workspace limit in GiB.",
)
@click.option(
    "--calib-images",
    "--calibration-images",
    "calib_images",
    type=click.IntRange(min=1),
    default=128,
    show_default=True,
    help="Training images used to calibrate int8 (spread over the split; their list's hash is "
    "recorded in the model).",
)
@click.option(
    "--calibration",
    type=click.Choice(CALIBRATION_METHODS),
    default=None,
    help="int8 calibrator: each activation's range from its min/max, from the histogram's "
    "entropy-minimizing threshold, or from its 99.999th percentile (ONNX Runtime's three; "
    "OpenVINO's int8 IR inherits it). Default: minmax; TensorRT 10's own: entropy.",
)
@click.option(
    "--int8-method",
    type=click.Choice(["qdq", "nncf"]),
    default="qdq",
    show_default=True,
    help="OpenVINO int8: convert ONNX Runtime's QDQ model (the same quantization as onnx-int8, "
    "with --calibration and --max-ap-drop), or quantize the fp32 IR with NNCF (pip install "
    "'.[nncf]'; NNCF's own ranges and bias correction).",
)
@click.option(
    "--max-ap-drop",
    type=click.FloatRange(min=0),
    default=None,
    metavar="POINTS",
    help="int8: keep the layers that lose the most (lowest SQNR) in float until the int8 AP "
    "is within POINTS of fp32 on the first half of the val split; prints which stayed float.",
)
@click.option(
    "--img-size",
    type=click.IntRange(min=32),
    default=None,
    help="Input size of the exported model (default: the size it trained at).",
)
@post_processing_options(
    conf="Score threshold baked into the graph (default 0.05).",
    iou="NMS IoU baked into the graph (default 0.5).",
    max_dets="Detections per image the graph returns at most (default 100).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@user_errors_exit_2
def export_cmd(
    weights: Path,
    out: Path | None,
    opset: int,
    data: Path | None,
    trt: bool,
    openvino: bool,
    precision: str,
    batch: int,
    workspace: float,
    calib_images: int,
    calibration: str | None,
    max_ap_drop: float | None,
    int8_method: str,
    img_size: int | None,
    conf: float | None,
    iou: float | None,
    max_dets: int | None,
    overwrite: bool,
) -> None:
    """Export a checkpoint to ONNX with decoding and NMS in the graph, and check parity;
    optionally quantize it for ONNX Runtime or build a TensorRT engine."""
    from pipeline.exporting import ExportOptions, run_export

    options = ExportOptions(
        opset=opset,
        trt=trt,
        openvino=openvino,
        precision=precision,
        batch=batch,
        workspace_gb=workspace,
        calib_images=calib_images,
        calibration=calibration,
        max_ap_drop=max_ap_drop,
        int8_method=int8_method,
        img_size=img_size,
        score_threshold=conf,
        nms_iou=iou,
        max_detections=max_dets,
    )
    summary = run_export(weights, out, data, overwrite, options)
    click.echo(summary)


# Which model and where it runs, the same for every command that runs one (eval, predict).
model_option = click.option(
    "--model",
    "--weights",
    "model_path",
    type=click.Path(path_type=Path),
    required=True,
    help="A .pt checkpoint, .onnx model, TensorRT .engine or OpenVINO .xml file.",
)
provider_option = click.option(
    "--provider",
    type=click.Choice(["auto", "cpu", "cuda", "tensorrt"]),
    default="auto",
    show_default=True,
    help="ONNX Runtime execution provider.",
)


@cli.command("eval")
@model_option
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset folder (default: the model's own split files or dataset when still on disk, "
    "else the built-in one).",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val"]),
    default="val",
    show_default=True,
    help="Which split to score.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Images per model call (latency is reported per image).",
)
@provider_option
@device_option("Device for .pt checkpoints (auto: CUDA when available, else CPU).")
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    default=None,
    help="Score the first N images of the split only.",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Untimed model calls before timing starts.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write the report here.",
)
@click.option(
    "--results",
    type=click.Path(path_type=Path),
    default=None,
    help="Write detections in COCO results format here.",
)
@click.option("--strict", is_flag=True, help="An unreadable image is an error, not skipped.")
@click.option(
    "--cuda-api",
    type=click.Choice(["auto", "cuda-python", "pycuda"]),
    default="auto",
    show_default=True,
    help="CUDA bindings for .engine files.",
)
@click.option("--cuda-graph", is_flag=True, help="Replay a captured CUDA graph (.engine, batch 1).")
@post_processing_options(
    conf="Score threshold (default: the model's own, 0.05; an exported model's can only be "
    "raised).",
    iou="NMS IoU (default: the model's own, 0.5; only a .pt can change it).",
    max_dets="Detections per image at most (default: the model's own, 100; an exported "
    "model's can only be lowered).",
)
@click.option(
    "--openvino-hint",
    type=click.Choice(["latency", "throughput"]),
    default="latency",
    show_default=True,
    help="OpenVINO (.xml) performance hint: one request as fast as possible, or parallel "
    "streams for batches.",
)
@click.option(
    "--compare-to",
    type=click.Path(path_type=Path),
    default=None,
    help="A second model file (another engine or export of the same model): score both on the "
    "same images and say where they differ (settings, detections paired at IoU > 0.99, score "
    "differences per class and object size, per-layer SQNR when both are ONNX).",
)
@click.option("--overwrite", is_flag=True, help="Replace existing --json / --results files.")
@user_errors_exit_2
def eval_cmd(
    model_path: Path,
    conf: float | None,
    iou: float | None,
    max_dets: int | None,
    compare_to: Path | None,
    **options: Any,
) -> None:
    """Score a model with COCO mAP and time it (one evaluator for every format)."""
    from deploy.report import format_metrics_table
    from pipeline.evaluation import EvalOptions, Thresholds, run_compare_to, run_eval

    thresholds = Thresholds(conf, iou, max_dets)
    settings = EvalOptions(**options, thresholds=thresholds)
    if compare_to is None:
        report = run_eval(model_path, settings)
        click.echo(format_metrics_table([(model_path.name, report)]))
        return
    from deploy.report import format_agreement

    if settings.results is not None:
        raise PipelineError("--results with --compare-to: give each model its own eval to keep "
                            "its detections")  # fmt: skip
    report = run_compare_to(model_path, compare_to, settings)
    rows = [(f"A {model_path.name}", report), (f"B {compare_to.name}", report["compare_to"])]
    click.echo(format_metrics_table(rows))
    click.echo(format_agreement(report["compare_to"]))


@cli.command()
@click.argument("sources", nargs=-1, required=True)
@model_option
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the drawn images (same file names) and detections.json.",
)
@post_processing_options(
    conf="Keep detections scoring at least this (not below the model's own threshold, 0.05).",
    iou="NMS IoU (default: the model's own, 0.5). A .pt runs NMS at any IoU; .onnx and "
    ".engine files have NMS in the graph and accept only its value.",
    max_dets="At most this many detections per image (default: the model's cap, 100).",
    conf_default=0.25,
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Images per model call (an .engine takes at most the batch it was built for).",
)
@provider_option
@device_option("Device for .pt checkpoints (auto: CUDA when available, else CPU).")
@click.option("--overwrite", is_flag=True, help="Replace existing drawn images / detections.json.")
@user_errors_exit_2
def predict(
    sources: tuple[str, ...],
    model_path: Path,
    out: Path,
    conf: float,
    iou: float | None,
    max_dets: int | None,
    batch_size: int,
    provider: str,
    device: str,
    overwrite: bool,
) -> None:
    """Detect objects in images, folders or glob patterns (SOURCES); draw them onto copies in
    --out and list them in --out/detections.json (boxes x, y, w, h in original pixels)."""
    from pipeline.predicting import PredictOptions, run_predict

    options = PredictOptions(conf, iou, max_dets, batch_size, provider, device)
    click.echo(run_predict(model_path, list(sources), out, options, overwrite).line())


@cli.command(cls=RunCommand)
@help_all_option
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Run folder (default: runs/demo, or the next free runs/demoN).",
)
@train_options
@user_errors_exit_2
def run(out: Path | None, **options: object) -> None:
    """The main job: synthesize (if needed) -> train -> export -> eval PyTorch and ONNX."""
    from pipeline.main_job import run_main_job

    out = _run_folder(out, Path("runs/demo"), options)
    table = run_main_job(config_from_command_line(out, options))
    if table:  # empty on torchrun ranks > 0
        click.echo(table)


@cli.command(cls=CompareCommand)
@help_all_option
@compare_options
@user_errors_exit_2
def compare(**options: object) -> None:
    """Train, deploy and score every loss x seed; write report.md, report.json and plots.

    Resumes: finished runs in OUT/runs/ are reused, never retrained or deleted.
    --loss-opt LOSS.KEY=VALUE sets an option of one loss; KEY=VALUE sets it for every compared
    loss that has it.
    """
    from pipeline.study.compare import run_compare, spec_from_options
    from pipeline.study.markdown import format_summary

    markdown = run_compare(spec_from_options(options))
    click.echo(format_summary(json.loads((markdown.parent / "report.json").read_text())))
    click.echo(f"wrote {markdown}")


@cli.command()
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset (COCO, Pascal VOC or YOLO folder) whose train split is cropped (default: the "
    "built-in one).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/pretrain/backbone.pth"),
    show_default=True,
    help="Weights file to write (never overwritten); give it to --pretrained.",
)
@click.option(
    "--backbone",
    type=click.Choice(list(BACKBONE_NAMES)),
    default="resnet18",
    show_default=True,
    help="The backbone to pretrain (train with the same --backbone).",
)
@click.option(
    "--crop-size",
    type=click.IntRange(min=32),
    default=64,
    show_default=True,
    help="Side in pixels each object or background crop is resized to.",
)
@click.option(
    "--backgrounds-per-image",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Background crops (overlapping no object) taken from each image.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="Passes over the crops.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Crops per optimizer step.",
)
@click.option(
    "--lr",
    type=click.FloatRange(min=0, min_open=True),
    default=2e-3,
    show_default=True,
    help="AdamW learning rate (cosine decay).",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="Seed of the classifier's head, crop order and background boxes.",
)
@device_option("Where the backbone trains (auto: CUDA when available, else CPU).")
@user_errors_exit_2
def pretrain(data: Path | None, out: Path, device: str, **options: object) -> None:
    """A loss-neutral backbone: classify object and background crops (no detection loss).

    Every run of a loss study can then start from the same weights: `pipeline compare
    --pretrained OUT`. Nothing is downloaded.
    """
    from train.data.synthetic import ensure_synthetic_dataset
    from train.distributed import resolve_device
    from train.pretrain import PretrainConfig, run_pretrain

    config = PretrainConfig(
        data=data if data is not None else ensure_synthetic_dataset(),
        out=out,
        device=str(resolve_device(device)),
        **options,  # type: ignore[arg-type]
    )
    summary = run_pretrain(config)
    last = summary["history"][-1]
    accuracy = (
        f", crop accuracy on val {last['val_accuracy']:.3f}" if "val_accuracy" in last else ""
    )
    click.echo(f"wrote {out} ({summary['train_crops']} training crops{accuracy})")


@cli.command()
@click.option(
    "--model",
    "--weights",
    "weights",
    type=click.Path(path_type=Path),
    required=True,
    help="The .pt checkpoint to analyze.",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path),
    default=None,
    help="Dataset whose val split is analyzed (default: the val split files the checkpoint "
    "validated on when still on disk, else its dataset's, else the built-in one).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output folder (default: analysis/ beside the weights).",
)
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    default=None,
    help="First N validation images (memory grows with images x anchors x classes).",
)
@device_option("Where the model runs (auto: CUDA when available, else CPU).")
@user_errors_exit_2
def analyze(
    weights: Path, data: Path | None, out: Path | None, max_images: int | None, device: str
) -> None:
    """The papers' analyses of a trained model: FL loss CDF, GHM gradient norms, PISA samples."""
    from pipeline.analysis.analyze import run_analyze

    click.echo(run_analyze(weights, data, out, max_images, device))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable listing.")
@user_errors_exit_2
def losses(names: tuple[str, ...], as_json: bool) -> None:
    """List the losses (or only NAMES) with their options and defaults."""
    from train.losses.registry import describe_losses

    described = describe_losses()
    unknown = [n for n in names if n not in {entry["name"] for entry in described}]
    if unknown:
        valid = ", ".join(entry["name"] for entry in described)
        raise PipelineError(f"pipeline losses: unknown {', '.join(unknown)}; valid: {valid}")
    if names:
        described = [entry for entry in described if entry["name"] in names]
    if as_json:
        click.echo(json.dumps(described, indent=2, default=str))
        return
    click.echo(format_loss_listing(described))


@cli.command()
def doctor() -> None:
    """Print what this machine can run: torch/CUDA, ONNX Runtime providers, TensorRT."""
    from pipeline.doctor import format_report, machine_report

    click.echo(format_report(machine_report()))


def main() -> None:
    cli(prog_name="pipeline")
