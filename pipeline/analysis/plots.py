"""PNG figures of `pipeline analyze`, redrawn from the numbers in analysis.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.figures import new_figure, save

GROUP_COLOURS = {"random": "tab:gray", "hard": "tab:red", "prime": "tab:blue"}


def plot_focal_cdf(cdfs: dict[str, Any], path: Path) -> None:
    """Focal Loss Figure 4 (cumulative normalized loss vs fraction of samples, per gamma), and
    the negatives' tail on a log axis: the share of their loss the hardest fraction carries."""
    figure = new_figure(14.0, 4.4)
    for i, group in enumerate(("positives", "negatives")):
        axes = figure.add_subplot(1, 3, i + 1)
        for gamma, curve in cdfs[group]["curves"].items():
            axes.plot(cdfs["fractions"], curve["cdf"], label=f"gamma = {gamma}")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel(f"fraction of {group} (sorted by loss, easiest first)")
        axes.set_ylabel("cumulative normalized loss")
        axes.set_title(f"{group} ({cdfs[group]['count']:,} samples)")
        axes.legend(loc="upper left")
    tail = figure.add_subplot(1, 3, 3)
    for gamma, curve in cdfs["negatives"]["curves"].items():
        tail.plot(cdfs["hardest_fractions"], curve["share_in_hardest"], label=f"gamma = {gamma}")
    tail.set_xscale("log")
    tail.set_ylim(0, 1.02)
    tail.set_xlabel("hardest fraction of the negatives (log scale)")
    tail.set_ylabel("share of the negatives' loss")
    tail.set_title("the tail: how few negatives carry the loss")
    tail.grid(alpha=0.3)
    tail.legend(loc="lower right")
    save(figure, path)


def _bin_centres(ghm: dict[str, Any]) -> np.ndarray:
    edges = np.asarray(ghm["edges"])
    return (edges[:-1] + edges[1:]) / 2


def same_total_as_ce(ghm: dict[str, Any]) -> dict[str, list[float | None]]:
    """Each loss's per-sample gradient norm per bin, scaled so that summed over all samples it
    equals CE's: the losses then differ only in where they put the gradient, not in its size
    (GHM-C's raw weights N / GD(g) are about 1e3 times CE's)."""
    distribution = np.asarray(ghm["distribution"])

    def total(values: list[float | None]) -> float:
        return float(sum(d * v for d, v in zip(distribution, values, strict=True) if v))

    ce_total = total(ghm["reweighted"]["ce"])
    scaled = {}
    for name, values in ghm["reweighted"].items():
        factor = ce_total / total(values) if total(values) > 0 else 0.0
        scaled[name] = [v * factor if v is not None else None for v in values]
    return scaled


def plot_ghm_gradients(ghm: dict[str, Any], ghm_r: dict[str, Any], path: Path) -> None:
    """GHM Figures 1-2 (samples per gradient norm; the gradient norm each loss gives a sample,
    all losses scaled to the same total) and GHM-R: where the box-regression gradient goes."""
    figure = new_figure(15.0, 4.4)
    centres = _bin_centres(ghm)
    left = figure.add_subplot(1, 3, 1)
    distribution = np.asarray(ghm["distribution"])
    shown = distribution > 0
    left.bar(centres[shown], distribution[shown], width=1.0 / ghm["bins"])
    left.set_yscale("log")
    left.set_xlabel("gradient norm g = |p - y|")
    left.set_ylabel("fraction of samples")
    left.set_title(f"GHM-C: g of {ghm['num_samples']:,} samples")
    middle = figure.add_subplot(1, 3, 2)
    for name, values in same_total_as_ce(ghm).items():
        points = [(c, v) for c, v in zip(centres, values, strict=True) if v]
        if points:
            middle.plot(*zip(*points, strict=True), marker=".", label=name)
    middle.set_yscale("log")
    middle.set_xlabel("original gradient norm g (CE)")
    middle.set_ylabel("gradient norm per sample (same total as CE)")
    middle.set_title("where each loss puts the classification gradient")
    middle.legend(loc="lower right")
    right = figure.add_subplot(1, 3, 3)
    edges = np.linspace(0, 1, ghm_r["bins"] + 1)
    r_centres = (edges[:-1] + edges[1:]) / 2
    width = 0.8 / ghm_r["bins"] / 3
    bars = (
        ("box coordinates", ghm_r["distribution"]),
        ("gradient under ASL1", ghm_r["gradient_share"]["asl1"]),
        ("gradient under GHM-R", ghm_r["gradient_share"]["ghm_r"]),
    )
    for i, (label, values) in enumerate(bars):
        right.bar(r_centres + (i - 1) * width, values, width, label=label)
    right.set_xlabel(f"GHM-R bin of g = |d| / sqrt(d^2 + mu^2), mu = {ghm_r['mu']:g}")
    right.set_ylabel("share")
    right.set_ylim(0, 1)
    right.set_title(f"GHM-R on {ghm_r['num_coordinates']:,} box coordinates")
    right.legend(loc="upper left")
    save(figure, path)


def plot_pisa_samples(pisa: dict[str, Any], path: Path) -> None:
    """PISA Figure 4: IoU against classification loss of random, hard and prime positives."""
    figure = new_figure(7.0, 4.8)
    axes = figure.add_subplot()
    for name in ("random", "hard", "prime"):
        group = pisa["groups"].get(name)
        if group is None:
            continue
        axes.scatter(
            group["iou"],
            group["loss"],
            s=10,
            alpha=0.35,
            linewidths=0,
            color=GROUP_COLOURS.get(name),
            label=f"{name} (mean IoU {group['mean_iou'] or 0:.2f})",
        )
    axes.set_xlabel("IoU of the regressed box with its object")
    axes.set_ylabel("classification loss (sigmoid CE)")
    axes.set_title(
        "One dot per positive box: how well it is localized (x) and its loss (y)\n"
        f"{pisa['k']} of {pisa['num_positives']} positives per group: random, hardest loss, "
        "PISA's prime (top IoU-HLR)",
        fontsize=10,
    )
    axes.set_xlim(0, 1)
    axes.set_ylim(bottom=0)
    axes.grid(alpha=0.3)
    legend = axes.legend(loc="upper left", framealpha=0.9)
    for handle in legend.legend_handles:
        handle.set_alpha(1.0)
    save(figure, path)
