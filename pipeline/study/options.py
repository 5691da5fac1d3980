"""The options of `pipeline compare`: its own, plus every shared training option but two.

`--loss` is replaced by `--losses`. `--overwrite` and `--resume` are left out: a comparison
resumes by itself, run by run, and never replaces a finished run, so those flags would be parsed
and ignored (or, for --resume, point every run at one folder).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click

from pipeline.options import TRAIN_OPTIONS_BY_FIELD
from pipeline.study.backends import BACKENDS
from pipeline.study.spec import LAUNCHER_ONLY, LAUNCHERS

EXCLUDED_TRAIN_OPTIONS = ("loss", "overwrite", "resume")
# Rarely set: named by --help, explained by --help-all (the options of some launchers only,
# the bootstrap's resamples, a reference study).
COMPARE_DETAIL_PARAMS = {*LAUNCHER_ONLY, "resamples", "reference"}
DEFAULT_LOSSES = "ce,focal,ghm,pisa"


COMPARE_OPTIONS: list[Callable] = [
    click.option(
        "--out",
        type=click.Path(path_type=Path),
        default=Path("runs/compare"),
        show_default=True,
        help="Study folder: runs/LOSS-sSEED/ per run, then report.md, report.json and plots.",
    ),
    click.option(
        "--losses",
        default=DEFAULT_LOSSES,
        show_default=True,
        help="Comma-separated losses to compare (`pipeline losses` lists them).",
    ),
    click.option(
        "--variant",
        "variants",
        multiple=True,
        metavar="NAME=LOSS:KEY=VALUE,...",
        help="A named loss setting compared like a loss, repeatable; NAME goes in --losses.",
    ),
    click.option(
        "--seeds",
        type=click.IntRange(min=1),
        default=3,
        show_default=True,
        help="Seeds per loss: --seed, --seed + 1, ...",
    ),
    click.option(
        "--backend",
        default="onnx",
        show_default=True,
        help="Deployed engines to score, comma-separated, from: "
        + ", ".join(BACKENDS)
        + ". An int8 engine may name its calibrator (onnx-int8:percentile), which makes it an "
        "axis. PyTorch is always scored too; the first engine ranks the losses.",
    ),
    click.option(
        "--baseline",
        default=None,
        help="Loss the others are compared against (default: focal, or random for faster-rcnn, "
        "else the first).",
    ),
    click.option(
        "--reference",
        type=click.Path(path_type=Path, file_okay=False, exists=True),
        default=None,
        help="An earlier study's --out, validated on the same images: report each loss's AP "
        "change from it (paired by seed) and that change against the baseline's, e.g. a "
        "label-noise study against the clean one.",
    ),
    click.option(
        "--resamples",
        type=click.IntRange(min=10),
        default=200,
        show_default=True,
        help="Bootstrap resamples for the confidence intervals.",
    ),
    click.option(
        "--launcher",
        type=click.Choice(LAUNCHERS),
        default="local",
        show_default=True,
        help="Where runs execute: here, as Ray tasks, or as Slurm jobs.",
    ),
    click.option(
        "--parallel",
        type=click.IntRange(min=1),
        default=None,
        help="Runs at once (local: 1, N > 1 gives each cores/N --threads; ray, slurm: all).",
    ),
    click.option(
        "--retries",
        type=click.IntRange(min=0),
        default=None,
        help="ray: start a run again this many times when its process dies (it resumes; default 2).",
    ),
    click.option(
        "--gpus-per-run",
        type=click.IntRange(min=0),
        default=None,
        help="ray, slurm: GPUs each run declares (slurm: per node; match --nproc-per-node; default 0).",
    ),
    click.option(
        "--ray-address",
        default=None,
        help="ray: the cluster to join (default: RAY_ADDRESS, else a cluster started here).",
    ),
    click.option("--slurm-partition", default=None, help="slurm: the partition the jobs go to."),
    click.option(
        "--slurm-time",
        type=click.IntRange(min=1),
        default=None,
        help="slurm: each job's time limit in minutes (default 240; a job stopped by it is "
        "requeued and resumes).",
    ),
    click.option(
        "--nodes-per-run",
        type=click.IntRange(min=1),
        default=None,
        help="slurm: nodes per run (default 1): one DDP training over all of them, torchrun "
        "on each.",
    ),
    click.option(
        "--slurm-cluster",
        type=click.Choice(["slurm", "local"]),
        default=None,
        help="slurm: 'slurm' (default) queues the jobs; 'local' runs the same jobs here through submitit's local executor (to try "
        "a setup before queueing it).",
    ),
] + [opt for name, opt in TRAIN_OPTIONS_BY_FIELD.items() if name not in EXCLUDED_TRAIN_OPTIONS]


def compare_options(func: Callable) -> Callable:
    for option in reversed(COMPARE_OPTIONS):
        func = option(func)
    return func
