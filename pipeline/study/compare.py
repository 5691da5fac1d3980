"""`pipeline compare`: every loss x seed trained, deployed and scored, then one report.

Layout: OUT/runs/{loss}-s{seed}/ per run (best.pt, history.json, trained.json once training
returned, model.onnx, report_*.json, detections_*.json and run.json last), OUT/report.md,
report.json and the PNG plots.

Resuming: a run is finished when its run.json exists; finished runs are reused as they are and
never deleted or retrained. An unfinished run continues from its last finished stage. Training
is finished when trained.json exists (the trainer's own files appear epoch by epoch, so they
cannot say it); an interrupted training resumes exactly from its last.pt. A finished run trained with other
options than the ones asked for is an error, not a silent mix of budgets.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from common.errors import InputError
from deploy.eval_report import write_json_atomic
from pipeline.errors import PipelineError
from pipeline.evaluation import eval_in_run, scored_files
from pipeline.options import config_from_options
from pipeline.study.backends import (
    build_deployed_model,
    check_backend,
    parse_backends,
    parse_names,
)
from pipeline.study.launchers import launch_from_options, launch_runs
from pipeline.study.provenance import engine_provenance
from pipeline.study.reference_study import check_reference
from pipeline.study.report import write_report
from pipeline.study.spec import CompareSpec
from pipeline.training import run_training
from train.checkpoint import load_checkpoint
from train.config import RUNTIME_FIELDS, TrainConfig
from train.errors import NonFiniteLossError
from train.losses import resolve_options
from train.losses.registry import LOSS_TABLES

log = logging.getLogger(__name__)

# Fields that do not change what a run learns, so a resumed run may differ in them: the
# runtime ones (train/config.py) and where and how a run is started.
NOT_COMPARED = (*RUNTIME_FIELDS, "out", "overwrite", "resume")
DEFAULT_BASELINE = "focal"
TRAINED_MARKER = "trained.json"


def parse_losses(text: str, variants: Iterable[str] = (), detector: str = "retinanet") -> list[str]:
    """'ce, focal,ghm' -> ['ce', 'focal', 'ghm'] (order kept, repeats dropped, names checked
    against `detector`'s losses: the two-stage detector's are its head's samplers)."""
    return parse_names(text, [*LOSS_TABLES[detector], *variants], "--losses")


@dataclass(frozen=True)
class Variant:
    """A named setting of a registry loss, compared as if it were a loss of its own."""

    name: str
    loss: str
    options: dict[str, str]


def parse_variant(text: str, detector: str = "retinanet") -> Variant:
    """'ghm-r-alone=ghm:ghm_c=false,reg_weight=1' -> Variant (options checked now)."""
    name, eq, rest = text.partition("=")
    loss, _, pairs = rest.partition(":")
    name, loss = name.strip(), loss.strip()
    if not eq or not name or not loss:
        raise PipelineError(f"--variant {text!r}: expected NAME=LOSS:KEY=VALUE,...")
    table = LOSS_TABLES[detector]
    if name in table:
        raise PipelineError(f"--variant {text!r}: {name!r} is already a loss; pick another name")
    if loss not in table:
        raise PipelineError(f"--variant {text!r}: unknown loss {loss!r}; valid: {', '.join(table)}")
    options = {}
    for pair in filter(None, (p.strip() for p in pairs.split(","))):
        key, eq, value = pair.partition("=")
        if not eq:
            raise PipelineError(f"--variant {text!r}: expected KEY=VALUE, got {pair!r}")
        options[key.strip()] = value.strip()
    if not options:
        raise PipelineError(f"--variant {text!r}: a variant needs at least one KEY=VALUE")
    try:
        resolve_options(loss, options, detector)
    except ValueError as exc:
        raise PipelineError(f"--variant {text!r}: {exc}") from exc
    return Variant(name, loss, options)


def split_loss_options(
    raw: dict[str, str],
    losses: list[str],
    variants: dict[str, Variant] | None = None,
    detector: str = "retinanet",
) -> dict[str, dict[str, str]]:
    """`loss.key=value` applies to that loss, `key=value` to every compared loss that has `key`.

    A variant starts from its own options; --loss-opt then applies to it as to its loss. Each
    loss's options are checked against the registry now, before anything trains.
    """
    variants = variants or {}
    registry = {n: variants[n].loss if n in variants else n for n in losses}
    per_loss = {n: dict(variants[n].options) if n in variants else {} for n in losses}
    for key, value in raw.items():
        scope, dot, option = key.rpartition(".")
        if dot and scope not in per_loss:
            raise PipelineError(f"--loss-opt {key}={value}: {scope!r} is not a compared loss")
        table = LOSS_TABLES[detector]
        targets = [scope] if dot else [n for n in losses if option in table[registry[n]].defaults]
        if not targets:
            raise PipelineError(f"--loss-opt {key}={value}: no compared loss has option {key!r}")
        for loss in targets:
            per_loss[loss][option] = value
    for loss, options in per_loss.items():
        resolve_options(registry[loss], options, detector)
    return per_loss


def spec_from_options(options: dict[str, Any]) -> CompareSpec:
    """CompareSpec from the click options of `pipeline compare`."""
    detector = str(options.get("detector") or "retinanet")
    parsed = [parse_variant(text, detector) for text in options.get("variants") or ()]
    variants = {v.name: v for v in parsed}
    losses = parse_losses(str(options["losses"]), variants, detector)
    unused = [name for name in variants if name not in losses]
    if unused:
        raise PipelineError(
            f"--variant {', '.join(unused)}: not in --losses, so it would not run; add it there"
        )
    default = DEFAULT_BASELINE if detector == "retinanet" else "random"
    baseline = options["baseline"] or (default if default in losses else losses[0])
    if baseline not in losses:
        raise PipelineError(f"--baseline {baseline!r} is not one of --losses {', '.join(losses)}")
    out = Path(options["out"])
    # The shared options compare leaves out (compare_options.py), at their neutral values.
    first = variants[losses[0]].loss if losses[0] in variants else losses[0]
    left_out = {"loss": first, "overwrite": False, "resume": None}
    base = config_from_options(out, {**options, **left_out})
    first_seed = int(options["seed"])
    return CompareSpec(
        out=out,
        losses=losses,
        seeds=list(range(first_seed, first_seed + int(options["seeds"]))),
        backends=parse_backends(str(options["backend"])),
        baseline=baseline,
        resamples=int(options["resamples"]),
        base=replace(base, loss_options={}),
        loss_options=split_loss_options(base.loss_options, losses, variants, detector),
        variants={name: v.loss for name, v in variants.items()},
        reference=options.get("reference"),
        launch=launch_from_options(options),
    )


def _comparable(config: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in NOT_COMPARED}


def _config_diff(stored: dict[str, Any], wanted: TrainConfig) -> list[str]:
    """'field: stored there, wanted now' for every training option that differs."""
    stored_c, wanted_c = _comparable(stored), _comparable(wanted.to_dict())
    # Only fields both know: a field added to TrainConfig later had its default value before.
    keys = sorted(k for k in set(stored_c) & set(wanted_c) if stored_c[k] != wanted_c[k])
    return [f"{k}: {stored_c[k]!r} there, {wanted_c[k]!r} now" for k in keys]


def _check_same_config(where: Path, stored: dict[str, Any], wanted: TrainConfig) -> None:
    diff = _config_diff(stored, wanted)
    if diff:
        raise PipelineError(
            f"{where}: this run was trained with other options ({', '.join(diff)}); finished "
            "runs are never replaced, so compare into a new --out"
        )


def _resumable(out: Path, config: TrainConfig) -> bool:
    """last.pt holds the training state of this very config (an exact --resume is possible)."""
    try:
        payload = load_checkpoint(out / "last.pt")
    except InputError:
        return False
    stored = payload.get("train_config")
    return "resume" in payload and stored is not None and not _config_diff(stored, config)


def training_plan(config: TrainConfig) -> TrainConfig | None:
    """The config to train with, or None when trained.json says training finished.

    An interrupted training continues exactly from its last.pt when that holds this config's
    training state; otherwise (no state, other options) it starts again: unfinished runs are
    not protected. Reads files only, so every node of a multi-node run decides alike.
    """
    out = Path(config.out)
    if (out / TRAINED_MARKER).is_file() and (out / "best.pt").is_file():
        _check_same_config(out, load_checkpoint(out / "best.pt")["train_config"], config)
        return None
    if (out / "last.pt").is_file() and _resumable(out, config):
        log.info("%s: unfinished training found; resuming it from last.pt", out)
        return replace(config, resume=out)
    if (out / "best.pt").exists() or (out / "last.pt").exists():
        log.info("%s: unfinished training found; training again from the start", out)
        return replace(config, overwrite=True)
    return config


def _train(config: TrainConfig, train: Callable[[TrainConfig], Any] | None = None) -> float:
    """Train unless finished (training_plan); the training's wall seconds."""
    train = train or run_training  # looked up now: tests replace it on the module
    out = Path(config.out)
    planned = training_plan(config)
    if planned is None:
        log.info("%s: training already finished, reusing it", out)
        return float(json.loads((out / TRAINED_MARKER).read_text())["train_wall_seconds"])
    for stale in [*out.glob("report_*.json"), *out.glob("detections_*.json")]:
        stale.unlink()  # scores of weights that are about to be replaced
    started = time.perf_counter()
    train(planned)
    wall = time.perf_counter() - started
    write_json_atomic(out / TRAINED_MARKER, {"train_wall_seconds": wall})
    return wall


def _evaluate(name: str, model: Callable[[], Path], config: TrainConfig) -> dict[str, Any]:
    """Score the model `model()` builds, once: a report and detections on disk are reused."""
    report_path, dets_path = scored_files(Path(config.out), name)
    if report_path.is_file() and dets_path.is_file():
        return json.loads(report_path.read_text())
    return eval_in_run(name, model(), config)


def training_summary(history: list[dict[str, Any]]) -> dict[str, float]:
    """Training-loop seconds (validation excluded) and images per second over all epochs."""
    seconds = sum(float(r.get("seconds", 0.0)) for r in history)
    images = sum(
        float(r.get("seconds", 0.0)) * float(r.get("images_per_second", 0.0)) for r in history
    )
    return {
        "train_seconds": seconds,
        "train_images_per_second": images / seconds if seconds else 0.0,
    }


def _score(
    spec: CompareSpec, config: TrainConfig, backends: list[str]
) -> dict[str, dict[str, Any]]:
    """The eval reports of best.pt on PyTorch and on each of `backends`."""
    out = Path(config.out)
    weights = out / "best.pt"
    reports = {"pytorch": _evaluate("pytorch", lambda: weights, config)}
    for backend in backends:
        reports[backend] = _evaluate(
            backend,
            lambda backend=backend: build_deployed_model(backend, weights, out),
            config,
        )
    return reports


def _add_scores(summary: dict[str, Any], reports: dict[str, dict[str, Any]]) -> None:
    for name, report in reports.items():
        summary.setdefault("metrics", {})[name] = report["metrics"]
        summary.setdefault("latency_ms", {})[name] = report["latency"]["total_ms"]
        summary.setdefault("provenance", {})[name] = engine_provenance(report)
        if "nms_candidates_per_image" in report:
            summary["nms_candidates_per_image"] = report["nms_candidates_per_image"]


def ensure_run(
    spec: CompareSpec,
    loss: str,
    seed: int,
    train: Callable[[TrainConfig], Any] | None = None,
) -> dict[str, Any]:
    """Train, deploy and score one (loss, seed) unless finished; returns its run.json content.

    A finished run asked for an engine it was not scored on is scored on it (nothing retrains).
    `train` runs the training (default run_training; a multi-node Slurm job passes one that
    starts torchrun).
    """
    config = spec.run_config(loss, seed)
    out = Path(config.out)
    summary_path = out / "run.json"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        _check_same_config(out, summary["train_config"], config)
        missing = [b for b in spec.backends if b not in summary.get("metrics", {})]
        if summary.get("status") != "ok" or not missing:
            log.info("%s: finished earlier, reused", out)
            return summary
        log.info("%s: finished earlier; scoring it on %s too", out, ", ".join(missing))
        _add_scores(summary, _score(spec, config, missing))
        write_json_atomic(summary_path, summary)
        return summary
    summary: dict[str, Any] = {"loss": loss, "seed": seed, "train_config": config.to_dict()}
    try:
        wall = _train(config, train)
    except NonFiniteLossError as exc:  # a diverged loss is a result of the study, not a crash
        log.warning("%s: %s", out, exc)
        summary.update(status="failed", error=str(exc))
        write_json_atomic(summary_path, summary)
        return summary
    reports = _score(spec, config, spec.backends)
    history = json.loads((out / "history.json").read_text())
    summary.update(status="ok", train_wall_seconds=wall, **training_summary(history))
    _add_scores(summary, reports)
    write_json_atomic(summary_path, summary)
    return summary


def run_compare(spec: CompareSpec) -> Path:
    """Every run, then the report; returns the path of report.md."""
    if spec.reference is not None:  # before any training: a wrong reference fails now
        check_reference(spec.reference, spec)
    for backend in spec.backends:
        check_backend(backend)
    # Seed-major: a grid stopped part-way has the same number of seeds for every loss.
    jobs = [(loss, seed) for seed in spec.seeds for loss in spec.losses]
    return write_report(spec, launch_runs(spec, jobs))
