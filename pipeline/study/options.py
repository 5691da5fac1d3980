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
from pipeline.study.engines import BACKENDS

EXCLUDED_TRAIN_OPTIONS = ("loss", "overwrite", "resume")
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
        help="A named loss setting to compare like a loss, repeatable; list NAME in --losses. "
        "E.g. --variant ghm-r-alone=ghm:ghm_c=false",
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
        + ". PyTorch is always scored too; the first engine is the one the losses are "
        "ranked on.",
    ),
    click.option(
        "--baseline",
        default=None,
        help="Loss the others are compared against (default: focal if compared, else the first).",
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
] + [opt for name, opt in TRAIN_OPTIONS_BY_FIELD.items() if name not in EXCLUDED_TRAIN_OPTIONS]


def compare_options(func: Callable) -> Callable:
    for option in reversed(COMPARE_OPTIONS):
        func = option(func)
    return func
