"""results.png: a run's curves drawn from its metrics.csv when training ends (or is stopped).

Four panels: each loss part per step (thin) with a moving average (bold), the learning rate,
the gradient norm (log axis: a few spikes would flatten everything else), and the validation
AP, AP50 and AP75 per epoch in points.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from matplotlib.ticker import MaxNLocator

from pipeline.figures import new_figure, save

EPOCH_METRICS = ("AP", "AP50", "AP75")


def _column(rows: list[dict[str, str]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows that have `key`."""
    pairs = [(float(r["step"]), float(r[key])) for r in rows if r.get(key)]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*pairs, strict=True)
    return np.asarray(steps), np.asarray(values)


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last `window` values at each point (fewer at the start)."""
    if len(values) == 0:
        return values
    sums = np.cumsum(np.insert(values, 0, 0.0))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


def plot_results(metrics_csv: Path, path: Path) -> bool:
    """Draw results.png from metrics.csv; False (nothing written) when there is no step yet."""
    if not metrics_csv.is_file():
        return False
    with metrics_csv.open(newline="") as f:
        rows = list(csv.DictReader(f))
    steps = [r for r in rows if r.get("kind") == "step"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    if not steps:
        return False
    parts = [k for k in steps[0] if k.startswith("loss_")]
    window = max(1, len(steps) // 20)
    figure = new_figure(13.0, 7.5)
    losses = figure.add_subplot(2, 2, 1)
    for key in parts:
        x, y = _column(steps, key)
        (line,) = losses.plot(x, y, linewidth=0.6, alpha=0.35)
        losses.plot(x, moving_average(y, window), color=line.get_color(), label=key[5:])
    losses.set_title(f"loss parts per step (bold: mean of {window} steps)")
    losses.set_xlabel("optimizer step")
    losses.legend(loc="upper right")
    for index, key, title, log in (
        (2, "lr", "learning rate", False),
        (3, "grad_norm", "gradient norm (before clipping)", True),
    ):
        axes = figure.add_subplot(2, 2, index)
        x, y = _column(steps, key)
        axes.plot(x, y, linewidth=0.8)
        if log and len(y) and (y > 0).all():
            axes.set_yscale("log")
        axes.set_title(title if len(y) else f"{title}: not logged")
        axes.set_xlabel("optimizer step")
    ap = figure.add_subplot(2, 2, 4)
    for key in EPOCH_METRICS:
        pairs = [(int(r["epoch"]), 100 * float(r[key])) for r in epochs if r.get(key)]
        if pairs:
            ap.plot(*zip(*pairs, strict=True), marker="o", label=key)
    ap.set_title("validation per epoch (COCO, points)" if epochs else "no validation yet")
    ap.set_xlabel("epoch")
    ap.xaxis.set_major_locator(MaxNLocator(integer=True))
    ap.grid(alpha=0.3)
    if ap.get_legend_handles_labels()[0]:
        ap.legend(loc="lower right")
    save(figure, path)
    return True
