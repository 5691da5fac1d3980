"""`compare --reference OTHER_STUDY`: each loss's AP change from an earlier study, image by image.

A study that changes the training data (20% of the labels flipped, say) and keeps the validation
images asks how much each loss loses: its runs are paired seed by seed with the reference
study's runs of the same loss, scored on the same images, and the change gets a bootstrap
interval. Each loss's change is also set against the baseline's change (does GHM lose less than
focal?), on the seeds all four runs finished.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError
from pipeline.evaluation import run_val_split, scored_files
from pipeline.study.bootstrap import Matches, RunMatches, contrast_bootstrap, match_run
from pipeline.study.spec import CompareSpec, run_dir
from train.config import TrainConfig


def check_reference(reference: Path, spec: CompareSpec) -> None:
    """The reference is a finished study that validated on the very images this one does."""
    report = reference / "report.json"
    if not report.is_file():
        raise PipelineError(f"--reference {reference}: no report.json (not a finished study)")
    training = json.loads(report.read_text())["training"]
    names = {f.name for f in fields(TrainConfig)} - {"out", "loss", "seed", "loss_options"}
    config = TrainConfig(out=reference, **{k: v for k, v in training.items() if k in names})
    theirs, ours = (
        _val_content(run_val_split(config).ann),
        _val_content(run_val_split(spec.base).ann),
    )
    if theirs != ours:
        raise PipelineError(
            f"--reference {reference}: it validated on other images or annotations than this "
            "study, so their APs cannot be paired"
        )


def _val_content(path: Path) -> tuple[str, str]:
    data = json.loads(path.read_text())
    return json.dumps(data.get("images"), sort_keys=True), json.dumps(
        data.get("annotations"), sort_keys=True
    )


def versus_reference(
    spec: CompareSpec, matches: Matches, coco_gt: Any, image_ids: list[int]
) -> dict[str, dict[str, dict[str, Any]]]:
    """Per engine and loss: `change` (this study's AP minus the reference's, paired by seed)
    and `change_vs_baseline` (that change minus the baseline loss's change)."""
    assert spec.reference is not None
    result: dict[str, dict[str, dict[str, Any]]] = {}
    for engine, ours in matches.items():
        theirs = _reference_matches(spec, engine, coco_gt, image_ids)
        per_loss: dict[str, dict[str, Any]] = {}
        for loss in spec.losses:
            seeds = [s for s in spec.seeds if (loss, s) in ours and (loss, s) in theirs]
            if not seeds:
                per_loss[loss] = {"error": "no seed finished in both studies"}
                continue
            groups = [(ours[(loss, s)], theirs[(loss, s)]) for s in seeds]
            entry = {
                "seeds": seeds,
                "change": contrast_bootstrap(groups, (1.0, -1.0), spec.resamples),
            }
            base = spec.baseline
            both = [s for s in seeds if (base, s) in ours and (base, s) in theirs]
            if loss != base and both:
                four = [
                    (ours[(loss, s)], theirs[(loss, s)], ours[(base, s)], theirs[(base, s)])
                    for s in both
                ]
                entry["change_vs_baseline"] = {
                    "seeds": both,
                    **contrast_bootstrap(four, (1.0, -1.0, -1.0, 1.0), spec.resamples),
                }
            per_loss[loss] = entry
        result[engine] = per_loss
    return result


def _reference_matches(
    spec: CompareSpec, engine: str, coco_gt: Any, image_ids: list[int]
) -> dict[tuple[str, int], RunMatches]:
    found = {}
    for loss in spec.losses:
        for seed in spec.seeds:
            path = scored_files(run_dir(spec.reference, loss, seed), engine)[1]
            if path.is_file():
                found[(loss, seed)] = match_run(coco_gt, json.loads(path.read_text()), image_ids)
    return found
