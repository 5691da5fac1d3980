"""The `pipeline` command: data, train, pretrain, export, eval, predict, run, compare, analyze,
losses, doctor."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import click

from common.logs import LOG_FORMAT
from pipeline.command_options import (
    AnalyzeOptions,
    ConvertOptions,
    EvalCommand,
    ExportCommand,
    PredictCommand,
    ShowOptions,
    SynthOptions,
)
from pipeline.errors import PipelineError, user_errors_exit_2
from pipeline.help_format import help_all_option, short_help_command
from pipeline.options import (
    SECONDARY_TRAIN_PARAMS,
    config_from_command_line,
    format_loss_listing,
    options_command,
    train_options,
)
from pipeline.study.options import COMPARE_DETAIL_PARAMS, compare_options
from train.losses.names import DETECTORS
from train.pretrain_config import PretrainConfig


@click.group()
@click.version_option(package_name="softsample-pipeline", prog_name="pipeline")
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
def cli(verbose: bool) -> None:
    """Train detectors with soft-sampling losses, deploy them, and measure what ships."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)


@cli.group()
def data() -> None:
    """Datasets."""


@options_command(data, "synth", SynthOptions)
def data_synth(o: SynthOptions) -> None:
    """Write the built-in synthetic shapes dataset (COCO json + PNG)."""
    from pipeline.data_synth import run_data_synth

    click.echo(run_data_synth(o.out, o.num_train, o.num_val, o.seed, o.label_noise, o.overwrite))


@options_command(data, "show", ShowOptions)
def data_show(o: ShowOptions) -> None:
    """Draw dataset images with their ground-truth boxes into one grid image (crowd dashed)."""
    from pipeline.data_show import run_data_show

    click.echo(run_data_show(o.data, o.split, o.num, o.seed, o.out, o.overwrite).line())


@options_command(data, "convert", ConvertOptions)
def data_convert(o: ConvertOptions) -> None:
    """Write a VOC or YOLO folder in the built-in COCO layout (--data reads both directly)."""
    from pipeline.data_convert import run_data_convert

    click.echo(run_data_convert(o.source_format, o.data, o.out).line())


def _loss_epilog() -> str:
    from train.losses import describe_losses

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


@options_command(cli, "export", ExportCommand)
def export_cmd(c: ExportCommand) -> None:
    """Export a checkpoint to ONNX with decoding and NMS in the graph, and check parity;
    optionally quantize it for ONNX Runtime, write an OpenVINO IR or build a TensorRT engine."""
    from pipeline.exporting import run_export

    click.echo(run_export(c.weights, c.out, c.data, c.overwrite, c.options))


@options_command(cli, "eval", EvalCommand)
def eval_cmd(c: EvalCommand) -> None:
    """Score a model with COCO mAP and time it (one evaluator for every format)."""
    from deploy.eval_report import format_metrics_table
    from pipeline.evaluation import run_compare_to, run_eval

    model_path, compare_to, settings = c.model_path, c.compare_to, c.options
    if compare_to is None:
        report = run_eval(model_path, settings)
        click.echo(format_metrics_table([(model_path.name, report)]))
        return
    from deploy.eval_report import format_agreement

    if settings.results is not None:
        raise PipelineError("--results with --compare-to: give each model its own eval to keep "
                            "its detections")  # fmt: skip
    report = run_compare_to(model_path, compare_to, settings)
    rows = [(f"A {model_path.name}", report), (f"B {compare_to.name}", report["compare_to"])]
    click.echo(format_metrics_table(rows))
    click.echo(format_agreement(report["compare_to"]))


@options_command(cli, "predict", PredictCommand)
def predict(c: PredictCommand) -> None:
    """Detect objects in images, folders or glob patterns (SOURCES); draw them onto copies in
    --out and list them in --out/detections.json (boxes x, y, w, h in original pixels)."""
    from pipeline.predicting import run_predict

    summary = run_predict(c.model_path, list(c.sources), c.out, c.options, c.overwrite)
    click.echo(summary.line())


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


@options_command(cli, "pretrain", PretrainConfig)
def pretrain(config: PretrainConfig) -> None:
    """A loss-neutral backbone: classify object and background crops (no detection loss).

    Every run of a loss study can then start from the same weights: `pipeline compare
    --pretrained OUT`. Nothing is downloaded.
    """
    from train.data.synthetic import ensure_synthetic_dataset
    from train.pretrain import run_pretrain

    if config.data is None:
        config = dataclasses.replace(config, data=ensure_synthetic_dataset())
    summary = run_pretrain(config)
    last = summary["history"][-1]
    accuracy = (
        f", crop accuracy on val {last['val_accuracy']:.3f}" if "val_accuracy" in last else ""
    )
    click.echo(f"wrote {config.out} ({summary['train_crops']} training crops{accuracy})")


@options_command(cli, "analyze", AnalyzeOptions)
def analyze(o: AnalyzeOptions) -> None:
    """The papers' analyses of a trained model: FL loss CDF, GHM gradient norms, PISA samples."""
    from pipeline.analysis.analyze import run_analyze

    click.echo(run_analyze(o.weights, o.data, o.out, o.max_images, o.device))


@cli.command()
@click.argument("names", nargs=-1)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable listing.")
@click.option(
    "--detector", type=click.Choice(DETECTORS), default=DETECTORS[0], show_default=True,
    help="Whose losses: the one-stage detector's, or the two-stage one's R-CNN head samplers.",
)  # fmt: skip
@user_errors_exit_2
def losses(names: tuple[str, ...], as_json: bool, detector: str) -> None:
    """List the losses (or only NAMES) with their options and defaults."""
    from train.losses import describe_losses

    described = describe_losses(detector)
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
