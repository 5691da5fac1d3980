"""PNG plots of a comparison: AP bars with error bars, PR curves, training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from cycler import cycler
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from pipeline.figures import new_figure

BAR_METRICS = ("AP", "AP50", "AP75")


def _legend_below(figure: Figure, axes: Any, columns: int) -> None:
    """Lay the panels out above one legend, so the legend covers no bar, curve or axis label.

    The room kept below grows with the legend's rows (about a quarter inch each)."""
    handles, labels = axes.get_legend_handles_labels()
    rows = -(-len(labels) // columns) if labels else 0
    bottom = min(0.45, (0.25 * rows + 0.2) / figure.get_figheight()) if rows else 0.0
    figure.tight_layout(rect=(0, bottom, 1, 1))
    if handles:
        figure.legend(handles, labels, loc="lower center", ncols=min(columns, len(labels)))


def _distinct_lines(axes: Any, count: int) -> None:
    """More curves than the 10 default colours: the next ten repeat them dashed, so no two
    curves look alike."""
    if count > 10:
        colours = [colormaps["tab10"](i) for i in range(10)]
        axes.set_prop_cycle(cycler(linestyle=["-", "--", ":"]) * cycler(color=colours))


def plot_ap_bars(per_loss: dict[str, dict[str, Any]], engines: list[str], path: Path) -> None:
    """AP in points per loss, one bar per engine: mean over seeds, std as error bars, seeds as
    dots."""
    losses = list(per_loss)
    figure = new_figure(max(7.0, 0.9 * len(losses) * max(1, len(engines)) / 2 + 3), 4.6)
    axes = figure.add_subplot()
    width = 0.8 / len(engines)
    x = np.arange(len(losses))
    for i, engine in enumerate(engines):
        stats = [per_loss[loss]["engines"][engine]["metrics"]["AP"] for loss in losses]
        means = [100 * s["mean"] if s["mean"] is not None else 0.0 for s in stats]
        errors = [100 * (s["std"] or 0.0) for s in stats]
        offset = x + (i - (len(engines) - 1) / 2) * width
        label = "PyTorch (fp32)" if engine == "pytorch" else engine
        axes.bar(offset, means, width, yerr=errors, capsize=3, label=label)
        for xi, s in zip(offset, stats, strict=True):
            values = [100 * v for v in s["values"]]
            axes.scatter([xi] * len(values), values, s=9, color="black", zorder=3)
    axes.set_xticks(
        x,
        losses,
        rotation=30 if len(losses) > 5 else 0,
        ha="right" if len(losses) > 5 else "center",
    )
    axes.set_ylabel("COCO AP (points)")
    axes.set_ylim(bottom=0)
    axes.grid(axis="y", alpha=0.3)
    axes.set_title("AP per loss and engine (bar: mean over seeds, line: std, dot: one seed)")
    _legend_below(figure, axes, len(engines))
    _save_laid_out(figure, path)


def plot_pr_curves(curves: dict[str, dict[str, Any]], backend: str, path: Path) -> None:
    """Precision-recall per loss at IoU 0.5 and 0.75 (COCO's interpolated precision)."""
    figure = new_figure(10.0, 4.6)
    axes = None
    for i, iou in enumerate(("0.5", "0.75")):
        axes = figure.add_subplot(1, 2, i + 1)
        _distinct_lines(axes, len(curves))
        for loss, by_iou in curves.items():
            axes.plot(by_iou[iou]["recall"], by_iou[iou]["precision"], label=loss)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1.02)
        axes.set_xlabel("recall")
        axes.set_ylabel("precision")
        axes.set_title(f"IoU {iou} on {backend} (mean over classes and seeds)")
    if axes is not None:
        _legend_below(figure, axes, 5)
    _save_laid_out(figure, path)


def _save_laid_out(figure: Figure, path: Path) -> None:
    """Save a figure whose layout (room for the legend below) is already set."""
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, format="png")


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
    """Training loss (sum of the loss's parts, each loss on its own scale) and validation AP in
    points per epoch, mean over seeds."""
    figure = new_figure(10.0, 4.6)
    panels = (
        ("loss", "training loss (own scale per loss)", True, 1.0),
        ("AP", "validation AP (points)", False, 100.0),
    )
    axes = None
    for i, (key, title, log_scale, scale) in enumerate(panels):
        axes = figure.add_subplot(1, 2, i + 1)
        _distinct_lines(axes, len(histories))
        for loss, runs in histories.items():
            epochs, means = _mean_by_epoch(runs, key)
            if epochs:
                axes.plot(epochs, [scale * m for m in means], marker="o", label=loss)
        if log_scale and axes.lines:
            axes.set_yscale("log")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title + " (mean over seeds)")
    if axes is not None:
        _legend_below(figure, axes, 5)
    _save_laid_out(figure, path)


def plot_score_distributions(scores: dict[str, dict[str, Any]], primary: str, path: Path) -> None:
    """One row per loss: its detection scores on `primary` (true and false positives per
    image, log scale) and AP against the score threshold on every engine."""
    losses = list(scores.get(primary, {}))
    rows = max(1, len(losses))
    figure = new_figure(10.0, 1.9 * rows + 1.0)
    histogram_legend = False
    for row, loss in enumerate(losses):
        histogram = scores[primary][loss]["histogram"]
        left = figure.add_subplot(rows, 2, 2 * row + 1)
        edges = histogram["edges"]
        if any(histogram["tp_per_image"]) or any(histogram["fp_per_image"]):
            tp, fp = histogram["tp_per_image"], histogram["fp_per_image"]
            left.stairs(tp, edges, label="true positives", color="tab:green")
            left.stairs(fp, edges, label="false positives", color="tab:red")
            left.set_yscale("log")
        else:
            left.set_yticks([])
            left.text(0.5, 0.5, "no detections", ha="center", va="center",
                      transform=left.transAxes)  # fmt: skip
        left.set_xlim(0, 1)
        left.set_ylabel(f"{loss}\nper image", fontsize=9)
        right = figure.add_subplot(rows, 2, 2 * row + 2)
        for engine, by_loss in scores.items():
            curve = by_loss.get(loss, {}).get("ap_by_threshold")
            if curve and curve["mean"]:
                # PyTorch wide and pale, so an engine that matches it shows on top of it
                style = {"linewidth": 4, "alpha": 0.4} if engine == "pytorch" else {}
                label = "PyTorch (fp32)" if engine == "pytorch" else engine
                means = [100 * m for m in curve["mean"]]
                right.plot(curve["thresholds"], means, marker=".", label=label, **style)
        right.set_xlim(0, 1)
        right.set_ylim(bottom=0)
        right.set_ylabel("AP (points)", fontsize=9)
        if row == 0:
            left.set_title(f"detection scores on {primary} (IoU 0.5 match)", fontsize=10)
            right.set_title("AP keeping detections scored >= threshold", fontsize=10)
            right.legend(fontsize=8, loc="upper right")  # curves fall to the right
        if not histogram_legend and left.get_legend_handles_labels()[0]:
            left.legend(fontsize=8, loc="upper center")  # on the first row with detections
            histogram_legend = True
        if row == rows - 1:
            left.set_xlabel("score")
            right.set_xlabel("score threshold")
    figure.tight_layout()
    _save_laid_out(figure, path)
