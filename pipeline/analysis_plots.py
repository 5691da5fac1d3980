"""PNG figures of `pipeline analyze`, redrawn from the numbers in analysis.json."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.compare_plots import new_figure, save

GROUP_COLOURS = {"random": "tab:gray", "hard": "tab:red", "prime": "tab:blue"}


def plot_focal_cdf(cdfs: dict[str, Any], path: Path) -> None:
    """Focal Loss Figure 4: cumulative normalized loss vs fraction of samples, per gamma."""
    figure = new_figure(10.0, 4.0)
    for i, group in enumerate(("positives", "negatives")):
        axes = figure.add_subplot(1, 2, i + 1)
        for gamma, curve in cdfs[group]["curves"].items():
            axes.plot(cdfs["fractions"], curve["cdf"], label=f"gamma = {gamma}")
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_xlabel(f"fraction of {group}")
        axes.set_ylabel("cumulative normalized loss")
        axes.set_title(f"{group} ({cdfs[group]['count']:,} samples)")
        axes.legend(loc="upper left")
    save(figure, path)


def _bin_centres(ghm: dict[str, Any]) -> np.ndarray:
    edges = np.asarray(ghm["edges"])
    return (edges[:-1] + edges[1:]) / 2


def plot_ghm_gradients(ghm: dict[str, Any], path: Path) -> None:
    """GHM Figures 1-2: fraction of samples per gradient norm, and each loss's gradient norm."""
    figure = new_figure(10.0, 4.0)
    centres = _bin_centres(ghm)
    left = figure.add_subplot(1, 2, 1)
    distribution = np.asarray(ghm["distribution"])
    shown = distribution > 0
    left.bar(centres[shown], distribution[shown], width=1.0 / ghm["bins"])
    left.set_yscale("log")
    left.set_xlabel("gradient norm g = |p - y|")
    left.set_ylabel("fraction of samples")
    left.set_title(f"g distribution ({ghm['num_samples']:,} samples)")
    right = figure.add_subplot(1, 2, 2)
    for name, values in ghm["reweighted"].items():
        points = [(c, v) for c, v in zip(centres, values, strict=True) if v]
        if points:
            right.plot(*zip(*points, strict=True), marker=".", label=name)
    right.set_yscale("log")
    right.set_xlabel("original gradient norm g (CE)")
    right.set_ylabel("reweighted gradient norm per sample")
    right.set_title("gradient norm each loss gives a sample")
    right.legend()
    save(figure, path)


def plot_pisa_samples(pisa: dict[str, Any], path: Path) -> None:
    """PISA Figure 4: IoU against classification loss of random, hard and prime positives."""
    figure = new_figure(6.0, 4.5)
    axes = figure.add_subplot()
    for name, group in pisa["groups"].items():
        axes.scatter(
            group["iou"],
            group["loss"],
            s=8,
            alpha=0.6,
            color=GROUP_COLOURS.get(name),
            label=f"{name} (mean IoU {group['mean_iou'] or 0:.2f})",
        )
    axes.set_xlabel("IoU of the regressed box with its object")
    axes.set_ylabel("classification loss (sigmoid CE)")
    axes.set_title(f"{pisa['k']} of {pisa['num_positives']} positives per group")
    axes.set_xlim(0, 1)
    axes.legend()
    save(figure, path)
