"""results.png: drawn from metrics.csv when there is something to draw, and its moving average."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.results_plot import moving_average, plot_results


def test_moving_average_is_the_mean_of_the_last_window_values() -> None:
    values = np.array([4.0, 2.0, 6.0, 0.0, 8.0])
    expected = [np.mean(values[max(0, i - 2) : i + 1]) for i in range(len(values))]
    assert moving_average(values, 3).tolist() == pytest.approx(expected)
    assert moving_average(values, 1).tolist() == values.tolist()
    assert len(moving_average(np.zeros(0), 3)) == 0


def test_a_png_is_drawn_from_steps_and_epochs(tmp_path: Path) -> None:
    lines = ["kind,epoch,step,loss_cls,loss_reg,loss,lr,grad_norm,images_per_second,AP"]
    lines += [f"step,1,{s},{1 / s},{0.5 / s},{1.5 / s},0.01,{10 / s},30," for s in range(1, 9)]
    lines += ["epoch,1,8,0.2,0.1,,,,30,0.25"]
    (tmp_path / "metrics.csv").write_text("\n".join(lines) + "\n")
    assert plot_results(tmp_path / "metrics.csv", tmp_path / "results.png")
    with Image.open(tmp_path / "results.png") as image:
        assert image.format == "PNG" and image.width > 800


def test_nothing_is_drawn_before_the_first_step(tmp_path: Path) -> None:
    assert not plot_results(tmp_path / "metrics.csv", tmp_path / "results.png")  # no file
    (tmp_path / "metrics.csv").write_text("kind,epoch,step\n")
    assert not plot_results(tmp_path / "metrics.csv", tmp_path / "results.png")
    assert not (tmp_path / "results.png").exists()
