"""PNG plots of a comparison: AP bars with error bars, PR curves, training curves.

Figures are built with matplotlib's object API (Figure + Agg canvas), never pyplot: no display
is needed and no global figure state is left behind between calls.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

BAR_METRICS = ("AP", "AP50", "AP75")
DPI = 110


def new_figure(width: float, height: float) -> Figure:
    figure = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(figure)
    return figure


def save(figure: Figure, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(path, format="png")


def plot_ap_bars(per_loss: dict[str, dict[str, Any]], backend: str, path: Path) -> None:
    """Grouped bars (AP, AP50, AP75) per loss: mean over seeds, std as error bars, seeds as dots."""
    figure = new_figure(7.0, 4.0)
    axes = figure.add_subplot()
    losses = list(per_loss)
    width = 0.8 / len(BAR_METRICS)
    x = np.arange(len(losses))
    for i, metric in enumerate(BAR_METRICS):
        stats = [per_loss[loss]["engine"][metric] for loss in losses]
        means = [s["mean"] if s["mean"] is not None else 0.0 for s in stats]
        errors = [s["std"] or 0.0 for s in stats]
        offset = x + (i - (len(BAR_METRICS) - 1) / 2) * width
        axes.bar(offset, means, width, yerr=errors, capsize=3, label=metric)
        for xi, s in zip(offset, stats, strict=True):
            axes.scatter([xi] * len(s["values"]), s["values"], s=9, color="black", zorder=3)
    axes.set_xticks(x, losses)
    axes.set_ylabel("COCO AP (0..1)")
    axes.set_title(f"AP per loss on {backend} (bars: mean, error bars: std, dots: seeds)")
    axes.legend()
    save(figure, path)


def plot_pr_curves(curves: dict[str, dict[str, Any]], backend: str, path: Path) -> None:
    """Precision-recall per loss at IoU 0.5 and 0.75 (COCO's interpolated precision)."""
    figure = new_figure(10.0, 4.0)
    for i, iou in enumerate(("0.5", "0.75")):
        axes = figure.add_subplot(1, 2, i + 1)
        for loss, by_iou in curves.items():
            axes.plot(by_iou[iou]["recall"], by_iou[iou]["precision"], label=loss)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.set_xlabel("recall")
        axes.set_ylabel("precision")
        axes.set_title(f"IoU {iou}, {backend} (mean over classes and seeds)")
        if axes.lines:
            axes.legend()
    save(figure, path)


def _mean_by_epoch(histories: list[list[dict]], key: str) -> tuple[list[int], list[float]]:
    """Per epoch, the mean of `key` over the seeds that have it."""
    values: dict[int, list[float]] = {}
    for history in histories:
        for record in history:
            value = _record_value(record, key)
            if value is not None:
                values.setdefault(int(record["epoch"]), []).append(value)
    epochs = sorted(values)
    return epochs, [float(np.mean(values[e])) for e in epochs]


def _record_value(record: dict[str, Any], key: str) -> float | None:
    if key == "loss":
        parts = [v for k, v in record.items() if k.startswith("loss_")]
        return float(sum(parts)) if parts else None
    value = record.get(key)
    return float(value) if value is not None else None


def plot_training_curves(histories: dict[str, list[list[dict]]], path: Path) -> None:
    """Training loss (sum of the loss's parts, each loss on its own scale) and validation AP
    per epoch, mean over seeds."""
    figure = new_figure(10.0, 4.0)
    panels = (("loss", "training loss (own scale per loss)", True), ("AP", "validation AP", False))
    for i, (key, title, log_scale) in enumerate(panels):
        axes = figure.add_subplot(1, 2, i + 1)
        for loss, runs in histories.items():
            epochs, means = _mean_by_epoch(runs, key)
            if epochs:
                axes.plot(epochs, means, marker="o", label=loss)
        if log_scale and axes.lines:
            axes.set_yscale("log")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title + " (mean over seeds)")
        if axes.lines:
            axes.legend()
    save(figure, path)
