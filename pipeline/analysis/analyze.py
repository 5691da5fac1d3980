"""`pipeline analyze`: the papers' analyses of a trained model on the validation set.

Writes analysis.json (every number behind the figures) and three PNGs: focal_loss_cdf.png,
ghm_gradients.png and pisa_samples.png. The computations live in train/paper_analyses.py.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from deploy.eval_report import write_json_atomic
from pipeline.analysis.plots import plot_focal_cdf, plot_ghm_gradients, plot_pisa_samples
from pipeline.datasets import model_split
from pipeline.errors import PipelineError
from pipeline.models import metadata_from_checkpoint
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.data.coco import CocoDetection
from train.model.detectors import is_two_stage
from train.paper_analyses import (
    collect_samples,
    focal_loss_cdfs,
    ghm_gradient_stats,
    ghm_r_gradient_stats,
    pisa_sample_groups,
)

log = logging.getLogger(__name__)

FIGURES = {
    "focal_loss_cdf": "focal_loss_cdf.png",
    "ghm_gradients": "ghm_gradients.png",
    "pisa_samples": "pisa_samples.png",
}


def analyze_checkpoint(
    weights: Path,
    data: Path | None,
    max_images: int | None,
    batch_size: int = 8,
    device: str = "cpu",
) -> dict[str, Any]:
    """Every analysis's numbers for the checkpoint `weights` on the validation split."""
    payload = load_checkpoint(weights)
    model = model_from_checkpoint(payload, weights)
    if is_two_stage(model):
        raise PipelineError(
            f"{weights}: pipeline analyze's analyses are the one-stage papers' (losses over every "
            "anchor); this is a two-stage detector (--detector faster-rcnn)"
        )
    ann_file, img_dir = model_split(data, metadata_from_checkpoint(payload).extra, "val")
    dataset = CocoDetection(
        ann_file, img_dir, int(payload["img_size"]), category_ids=payload["category_ids"]
    )
    samples = collect_samples(model, dataset, batch_size, max_images, device)
    log.info(
        "%d images: %d samples, %d positive anchors",
        samples.num_images,
        samples.logits.numel(),
        samples.pos_iou.numel(),
    )
    return {
        "weights": str(weights),
        "loss": payload.get("loss"),
        "val_annotations": str(ann_file),
        "num_images": samples.num_images,
        "focal_loss_cdf": focal_loss_cdfs(samples.logits, samples.targets),
        "ghm_gradients": ghm_gradient_stats(samples.logits, samples.targets),
        "ghm_r_gradients": ghm_r_gradient_stats(samples.pos_box_error),
        "pisa_samples": pisa_sample_groups(samples),
        "figures": dict(FIGURES),
    }


def run_analyze(
    weights: Path,
    data: Path | None,
    out: Path | None,
    max_images: int | None,
    device: str = "auto",
) -> str:
    """Compute, write analysis.json and the figures; returns a short summary for the CLI."""
    from train.distributed import resolve_device

    results = analyze_checkpoint(weights, data, max_images, device=str(resolve_device(device)))
    out = out or Path(weights).parent / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "analysis.json", results)
    plot_focal_cdf(results["focal_loss_cdf"], out / FIGURES["focal_loss_cdf"])
    plot_ghm_gradients(
        results["ghm_gradients"], results["ghm_r_gradients"], out / FIGURES["ghm_gradients"]
    )
    plot_pisa_samples(results["pisa_samples"], out / FIGURES["pisa_samples"])
    negatives = results["focal_loss_cdf"]["negatives"]["curves"]
    pisa = results["pisa_samples"]["groups"]
    lines = [
        f"wrote {out / 'analysis.json'} and {len(FIGURES)} figures",
        "share of the negatives' loss in the hardest 1%: "
        + ", ".join(
            f"gamma {g}: {c['share_of_loss_in_hardest_1pct']:.2f}" for g, c in negatives.items()
        ),
        "mean IoU of random / hard / prime positives: "
        + " / ".join(f"{pisa[n]['mean_iou'] or 0:.2f}" for n in ("random", "hard", "prime")),
        _ghm_r_summary(results["ghm_r_gradients"]),
    ]
    return "\n".join(lines)


def _ghm_r_summary(stats: dict[str, Any]) -> str:
    share = stats["gradient_share"]
    return (
        f"GHM-R top bin: {stats['distribution'][-1]:.0%} of the positives' box coordinates, "
        f"{share['asl1'][-1]:.0%} of ASL1's regression gradient, {share['ghm_r'][-1]:.0%} of GHM-R's"
    )
