"""The comparison's report: per-loss statistics over seeds, effects against the baseline, plots.

Everything here is recomputed from the runs' files (run.json, history.json, detections), so a
resumed comparison writes the same report as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import DeployError
from deploy.eval_report import write_json_atomic
from deploy.evaluate import environment_info, load_coco
from deploy.preprocess import load_image
from pipeline.evaluation import run_val_split, scored_files
from pipeline.study.bootstrap import (
    METHOD,
    Matches,
    RunMatches,
    match_run,
    mean_precision_curve,
    paired_bootstrap,
)
from pipeline.study.markdown import format_markdown
from pipeline.study.plots import (
    plot_ap_bars,
    plot_pr_curves,
    plot_score_distributions,
    plot_training_curves,
)
from pipeline.study.provenance import describe, engine_provenance
from pipeline.study.reference_study import versus_reference
from pipeline.study.scores import score_report
from pipeline.study.spec import CompareSpec, run_dir

log = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
PR_IOUS = (0.5, 0.75)
PLOTS = {
    "ap_bars": "ap_bars.png",
    "pr_curves": "pr_curves.png",
    "training_curves": "training_curves.png",
    "score_distributions": "score_distributions.png",
}


def stat(values: list[float | None]) -> dict[str, Any]:
    """mean and sample std over seeds; COCO's -1 (no ground truth in that size range) and
    missing values are left out. std is None with fewer than two values."""
    kept = [float(v) for v in values if v is not None and v >= 0 and np.isfinite(v)]
    return {
        "mean": float(np.mean(kept)) if kept else None,
        "std": float(np.std(kept, ddof=1)) if len(kept) > 1 else None,
        "n": len(kept),
        "values": kept,
    }


# A run whose PyTorch AP is below this learned nothing (AP 0, no useful detection): it gets
# "did not learn", not a verdict.
LEARNED_AP = 0.001


def learned(run: dict[str, Any]) -> bool:
    return run.get("status") == "ok" and run["metrics"]["pytorch"]["AP"] >= LEARNED_AP


def _engine_stats(ok: list[dict[str, Any]], engine: str) -> dict[str, Any]:
    """One engine's metrics, its AP minus PyTorch's, and its latency, over a loss's runs."""
    scored = [r for r in ok if engine in r["metrics"]]
    metrics = [r["metrics"][engine] for r in scored]
    return {
        "metrics": {m: stat([e.get(m) for e in metrics]) for m in METRICS},
        "minus_pytorch_AP": stat(
            [r["metrics"][engine]["AP"] - r["metrics"]["pytorch"]["AP"] for r in scored]
        ),
        "latency_p50_ms": stat([r["latency_ms"][engine]["p50"] for r in scored]),
    }


def _loss_stats(runs: list[dict[str, Any]], engines: list[str]) -> dict[str, Any]:
    """One loss's row: per engine (PyTorch first) metrics and latency, NMS load, training cost."""
    ok = [r for r in runs if r.get("status") == "ok"]
    return {
        "runs": len(ok),
        "failed": [{"seed": r["seed"], "error": r.get("error", "")} for r in runs if r not in ok],
        "did_not_learn": [r["seed"] for r in ok if not learned(r)],
        "engines": {engine: _engine_stats(ok, engine) for engine in ["pytorch", *engines]},
        "nms_candidates_per_image": stat([r.get("nms_candidates_per_image") for r in ok]),
        "train_seconds": stat([r["train_seconds"] for r in ok]),
        "train_images_per_second": stat([r["train_images_per_second"] for r in ok]),
    }


def _skipped_images(spec: CompareSpec, run: dict[str, Any], engine: str) -> int:
    """How many unreadable images the evaluator left out of a run's score on `engine`."""
    path = scored_files(run_dir(spec.out, run["loss"], run["seed"]), engine)[0]
    if run.get("status") != "ok" or not path.is_file():
        return 0
    return int(json.loads(path.read_text()).get("skipped_images", 0))


def _readable(path: Path) -> bool:
    """The evaluator's rule for an image it scores: load_image succeeds."""
    try:
        load_image(path)
    except DeployError:
        return False
    return True


def _matches(spec: CompareSpec, runs: list[dict[str, Any]]) -> tuple[Matches, Any, list[int]]:
    """COCO matching of every finished run's detections on PyTorch and each engine (one
    COCOeval each), over the images the evaluator scored (unreadable ones are left out); with
    the ground truth and those image ids."""
    val = run_val_split(spec.base)
    img_dir = val.images
    coco_gt = load_coco(val.ann)
    infos = sorted(coco_gt.dataset["images"], key=lambda info: info["id"])
    infos = infos[: spec.base.max_val_images]
    engines = ["pytorch", *spec.backends]
    if any(_skipped_images(spec, run, engine) for run in runs for engine in engines):
        infos = [info for info in infos if _readable(img_dir / info["file_name"])]
    image_ids = [info["id"] for info in infos]
    matches: Matches = {engine: {} for engine in engines}
    for run in runs:
        if run.get("status") != "ok":
            continue
        for engine in engines:
            path = scored_files(run_dir(spec.out, run["loss"], run["seed"]), engine)[1]
            if path.is_file():
                detections = json.loads(path.read_text())
                matches[engine][(run["loss"], run["seed"])] = match_run(
                    coco_gt, detections, image_ids
                )
    return matches, coco_gt, image_ids


def _bootstrap(
    pairs: list[tuple[RunMatches, RunMatches]], seeds: list[int], resamples: int
) -> dict[str, Any]:
    if not pairs:
        return {"error": "no seed finished for both"}
    return {"metric": "AP", "seeds": seeds, **paired_bootstrap(pairs, resamples, seed=0)}


def _effects(
    spec: CompareSpec, matches: Matches, silent: set[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per engine, each loss against the baseline, paired on the seeds both finished.

    A loss (or baseline) none of whose runs learned anything gets no interval: comparing two
    APs of 0 says nothing about the loss.
    """
    effects: dict[str, dict[str, dict[str, Any]]] = {}
    for engine in spec.backends:
        on_engine = matches[engine]
        effects[engine] = {}
        for loss in spec.losses:
            if loss == spec.baseline:
                continue
            if {loss, spec.baseline} & silent:
                who = loss if loss in silent else f"the baseline {spec.baseline}"
                effects[engine][loss] = {"did_not_learn": True, "error": f"{who} did not learn"}
                continue
            seeds = [
                s for s in spec.seeds if (loss, s) in on_engine and (spec.baseline, s) in on_engine
            ]
            pairs = [(on_engine[(loss, s)], on_engine[(spec.baseline, s)]) for s in seeds]
            effects[engine][loss] = _bootstrap(pairs, seeds, spec.resamples)
    return effects


def _deployment(spec: CompareSpec, matches: Matches) -> dict[str, dict[str, dict[str, Any]]]:
    """Per engine and loss: engine AP minus PyTorch AP of the same weights, paired bootstrap.

    Does a loss change how well its model survives the engine (int8 above all)?
    """
    deployment: dict[str, dict[str, dict[str, Any]]] = {}
    for engine in spec.backends:
        deployment[engine] = {}
        for loss in spec.losses:
            seeds = [
                s
                for s in spec.seeds
                if (loss, s) in matches[engine] and (loss, s) in matches["pytorch"]
            ]
            pairs = [(matches[engine][(loss, s)], matches["pytorch"][(loss, s)]) for s in seeds]
            deployment[engine][loss] = _bootstrap(pairs, seeds, spec.resamples)
    return deployment


def _runs_of(on_engine: dict[tuple[str, int], RunMatches], loss: str) -> list[RunMatches]:
    """One loss's matched runs (every seed) on one engine."""
    return [m for (name, _), m in on_engine.items() if name == loss]


def _pr_curves(
    spec: CompareSpec, on_engine: dict[tuple[str, int], RunMatches]
) -> dict[str, dict[str, Any]]:
    curves: dict[str, dict[str, Any]] = {}
    for loss in spec.losses:
        runs = _runs_of(on_engine, loss)
        if not runs:
            continue
        curves[loss] = {}
        for iou in PR_IOUS:
            recall, precision = mean_precision_curve(runs, iou)
            curves[loss][f"{iou:g}"] = {"recall": recall.tolist(), "precision": precision.tolist()}
    return curves


def _scores(spec: CompareSpec, matches: Matches) -> dict[str, dict[str, Any]]:
    """Per engine (PyTorch first) and loss: score histograms, AP by threshold, best F1."""
    return {
        engine: score_report({loss: _runs_of(matches[engine], loss) for loss in spec.losses})
        for engine in ["pytorch", *spec.backends]
    }


def _run_provenance(spec: CompareSpec, run: dict[str, Any], engine: str) -> str | None:
    """A run's engine provenance line, from its eval report (the source of truth), else from
    what run.json kept of it."""
    path = scored_files(run_dir(spec.out, run["loss"], run["seed"]), engine)[0]
    if run.get("status") == "ok" and path.is_file():
        return describe(engine_provenance(json.loads(path.read_text())))
    stored = run.get("provenance", {}).get(engine)
    return describe(stored) if stored is not None else None


def _provenance(spec: CompareSpec, runs: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per engine: each distinct provenance line and how many runs have it (one line when every
    run was scored alike; more show a study that mixed machines, versions or calibrations)."""
    return {
        engine: dict(Counter(filter(None, (_run_provenance(spec, run, engine) for run in runs))))
        for engine in ["pytorch", *spec.backends]
    }


def _histories(spec: CompareSpec, runs: list[dict[str, Any]]) -> dict[str, list[list[dict]]]:
    histories: dict[str, list[list[dict]]] = {loss: [] for loss in spec.losses}
    for run in runs:
        path = run_dir(spec.out, run["loss"], run["seed"]) / "history.json"
        if run.get("status") == "ok" and path.is_file():
            histories[run["loss"]].append(json.loads(path.read_text()))
    return histories


def build_report(spec: CompareSpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The report.json content (plots are referenced by file name)."""
    matches, coco_gt, image_ids = _matches(spec, runs)
    training = {
        k: v
        for k, v in spec.base.to_dict().items()
        if k not in ("out", "loss", "seed", "overwrite")
    }
    primary = spec.backends[0]
    scored = next(iter(matches[primary].values()), None)
    per_loss = {
        loss: _loss_stats([r for r in runs if r["loss"] == loss], spec.backends)
        for loss in spec.losses
    }
    silent = {loss for loss, row in per_loss.items() if row["runs"] and not _learned_any(row)}
    return {
        "backends": spec.backends,
        "primary_backend": primary,
        "baseline": spec.baseline,
        "losses": spec.losses,
        "variants": {
            name: {"loss": loss, "options": spec.loss_options.get(name, {})}
            for name, loss in spec.variants.items()
        },
        "seeds": spec.seeds,
        "training": {**training, "loss_options": spec.loss_options},
        "num_val_images": len(scored.image_ids) if scored else 0,
        "per_loss": per_loss,
        "did_not_learn": sorted(silent, key=spec.losses.index),
        "effects": _effects(spec, matches, silent),
        "deployment": _deployment(spec, matches),
        **_reference_part(spec, matches, coco_gt, image_ids),
        "method": METHOD,
        "resamples": spec.resamples,
        "pr_curves": _pr_curves(spec, matches[primary]),
        "scores": _scores(spec, matches),
        "provenance": _provenance(spec, runs),
        "runs": [{k: v for k, v in run.items() if k != "train_config"} for run in runs],
        "plots": dict(PLOTS),
        "environment": environment_info(),
    }


def _reference_part(
    spec: CompareSpec, matches: Matches, coco_gt: Any, image_ids: list[int]
) -> dict[str, Any]:
    if spec.reference is None:
        return {}
    engines = {engine: matches[engine] for engine in spec.backends}
    return {
        "reference": str(spec.reference),
        "versus_reference": versus_reference(spec, engines, coco_gt, image_ids),
    }


def _learned_any(row: dict[str, Any]) -> bool:
    return len(row["did_not_learn"]) < row["runs"]


def write_report(spec: CompareSpec, runs: list[dict[str, Any]]) -> Path:
    """report.json, the plots and report.md into spec.out; returns report.md's path."""
    report = build_report(spec, runs)
    out = Path(spec.out)
    primary = report["primary_backend"]
    plot_ap_bars(report["per_loss"], ["pytorch", *spec.backends], out / PLOTS["ap_bars"])
    plot_pr_curves(report["pr_curves"], primary, out / PLOTS["pr_curves"])
    plot_training_curves(_histories(spec, runs), out / PLOTS["training_curves"])
    plot_score_distributions(report["scores"], primary, out / PLOTS["score_distributions"])
    write_json_atomic(out / "report.json", report)
    markdown = out / "report.md"
    markdown.write_text(format_markdown(report))
    log.info("wrote %s, %s and %d plots", markdown, out / "report.json", len(PLOTS))
    return markdown
