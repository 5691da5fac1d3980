"""The comparison's report: per-loss statistics over seeds, effects against the baseline, plots.

Everything here is recomputed from the runs' files (run.json, history.json, detections), so a
resumed comparison writes the same report as an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from deploy.errors import DeployError
from deploy.evaluate import environment_info, load_coco
from deploy.preprocess import load_image
from deploy.report import write_json_atomic
from pipeline.coco_bootstrap import (
    METHOD,
    RunMatches,
    match_run,
    mean_precision_curve,
    paired_bootstrap,
)
from pipeline.compare import CompareSpec, run_dir
from pipeline.compare_markdown import format_markdown
from pipeline.compare_plots import plot_ap_bars, plot_pr_curves, plot_training_curves
from train.data.layout import resolve_split
from train.trainer import data_root

log = logging.getLogger(__name__)

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
PR_IOUS = (0.5, 0.75)
PLOTS = {
    "ap_bars": "ap_bars.png",
    "pr_curves": "pr_curves.png",
    "training_curves": "training_curves.png",
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


def _loss_stats(runs: list[dict[str, Any]], backend: str) -> dict[str, Any]:
    """One loss's table row: engine metrics, PyTorch parity, latency and training cost."""
    ok = [r for r in runs if r.get("status") == "ok"]
    engine = [r["metrics"][backend] for r in ok]
    torch_ap = [r["metrics"]["pytorch"]["AP"] for r in ok]
    return {
        "runs": len(ok),
        "failed": [{"seed": r["seed"], "error": r.get("error", "")} for r in runs if r not in ok],
        "engine": {m: stat([e.get(m) for e in engine]) for m in METRICS},
        "pytorch_AP": stat(torch_ap),
        "engine_minus_pytorch_AP": stat(
            [e["AP"] - t for e, t in zip(engine, torch_ap, strict=True)]
        ),
        "latency_p50_ms": stat([r["latency_ms"][backend]["p50"] for r in ok]),
        "train_seconds": stat([r["train_seconds"] for r in ok]),
        "train_images_per_second": stat([r["train_images_per_second"] for r in ok]),
    }


def _skipped_images(spec: CompareSpec, run: dict[str, Any]) -> int:
    """How many unreadable images the evaluator left out of a run's engine score."""
    path = run_dir(spec.out, run["loss"], run["seed"]) / f"report_{spec.backend}.json"
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


def _matches(spec: CompareSpec, runs: list[dict[str, Any]]) -> dict[tuple[str, int], RunMatches]:
    """COCO matching of every finished run's deployed-engine detections (one COCOeval each),
    over the images the evaluator scored (unreadable ones, which it skips, are left out)."""
    ann_file, img_dir = resolve_split(data_root(spec.base), "val")
    coco_gt = load_coco(ann_file)
    infos = sorted(coco_gt.dataset["images"], key=lambda info: info["id"])
    infos = infos[: spec.base.max_val_images]
    if any(_skipped_images(spec, run) for run in runs):
        infos = [info for info in infos if _readable(img_dir / info["file_name"])]
    image_ids = [info["id"] for info in infos]
    matches = {}
    for run in runs:
        if run.get("status") != "ok":
            continue
        path = run_dir(spec.out, run["loss"], run["seed"]) / f"detections_{spec.backend}.json"
        detections = json.loads(path.read_text())
        matches[(run["loss"], run["seed"])] = match_run(coco_gt, detections, image_ids)
    return matches


def _effects(
    spec: CompareSpec, matches: dict[tuple[str, int], RunMatches]
) -> dict[str, dict[str, Any]]:
    """Each loss against the baseline, paired on the seeds both finished."""
    effects = {}
    for loss in spec.losses:
        if loss == spec.baseline:
            continue
        seeds = [s for s in spec.seeds if (loss, s) in matches and (spec.baseline, s) in matches]
        if not seeds:
            effects[loss] = {"error": "no seed finished for both this loss and the baseline"}
            continue
        pairs = [(matches[(loss, s)], matches[(spec.baseline, s)]) for s in seeds]
        effects[loss] = {
            "metric": "AP",
            "seeds": seeds,
            **paired_bootstrap(pairs, spec.resamples, seed=0),
        }
    return effects


def _pr_curves(
    spec: CompareSpec, matches: dict[tuple[str, int], RunMatches]
) -> dict[str, dict[str, Any]]:
    curves: dict[str, dict[str, Any]] = {}
    for loss in spec.losses:
        runs = [m for (name, _), m in matches.items() if name == loss]
        if not runs:
            continue
        curves[loss] = {}
        for iou in PR_IOUS:
            recall, precision = mean_precision_curve(runs, iou)
            curves[loss][f"{iou:g}"] = {"recall": recall.tolist(), "precision": precision.tolist()}
    return curves


def _histories(spec: CompareSpec, runs: list[dict[str, Any]]) -> dict[str, list[list[dict]]]:
    histories: dict[str, list[list[dict]]] = {loss: [] for loss in spec.losses}
    for run in runs:
        path = run_dir(spec.out, run["loss"], run["seed"]) / "history.json"
        if run.get("status") == "ok" and path.is_file():
            histories[run["loss"]].append(json.loads(path.read_text()))
    return histories


def build_report(spec: CompareSpec, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The report.json content (plots are referenced by file name)."""
    matches = _matches(spec, runs)
    training = {
        k: v
        for k, v in spec.base.to_dict().items()
        if k not in ("out", "loss", "seed", "overwrite")
    }
    num_images = len(next(iter(matches.values())).image_ids) if matches else 0
    return {
        "backend": spec.backend,
        "baseline": spec.baseline,
        "losses": spec.losses,
        "seeds": spec.seeds,
        "training": {**training, "loss_options": spec.loss_options},
        "num_val_images": num_images,
        "per_loss": {
            loss: _loss_stats([r for r in runs if r["loss"] == loss], spec.backend)
            for loss in spec.losses
        },
        "effects": _effects(spec, matches),
        "method": METHOD,
        "resamples": spec.resamples,
        "pr_curves": _pr_curves(spec, matches),
        "runs": [{k: v for k, v in run.items() if k != "train_config"} for run in runs],
        "plots": dict(PLOTS),
        "environment": environment_info(),
    }


def write_report(spec: CompareSpec, runs: list[dict[str, Any]]) -> Path:
    """report.json, the plots and report.md into spec.out; returns report.md's path."""
    report = build_report(spec, runs)
    out = Path(spec.out)
    plot_ap_bars(report["per_loss"], spec.backend, out / PLOTS["ap_bars"])
    plot_pr_curves(report["pr_curves"], spec.backend, out / PLOTS["pr_curves"])
    plot_training_curves(_histories(spec, runs), out / PLOTS["training_curves"])
    write_json_atomic(out / "report.json", report)
    markdown = out / "report.md"
    markdown.write_text(format_markdown(report))
    log.info("wrote %s, %s and %d plots", markdown, out / "report.json", len(PLOTS))
    return markdown
