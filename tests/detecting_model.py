"""A model that really detects, trained once per test session on an easy, colour-coded dataset.

Parity and end-to-end checks are only as strong as the detections they compare: on a model
that finds nothing, PyTorch and ONNX Runtime agree trivially (0 vs 0 boxes). This module writes
a small COCO dataset whose two classes differ only by colour (red and blue squares on a grey
background), so a runtime that feeds BGR instead of RGB swaps the labels and loses AP; whose
images are wider or taller than square and of several sizes, so the letterbox and the mapping
back to original pixels matter; and whose category ids (3, 8) are not the class indices (0, 1).
A small resnet18 RetinaNet learns it to a high AP in under a minute on two CPU cores.

In a whole-suite pytest-xdist run (`make test`) the controller starts training it in a process
of its own before the workers start (start_background_training); otherwise the first test that
asks trains it. Either way it lands in the session's temp folder (shared by the workers), and a
lock file keeps anyone from training it twice: a test that needs it waits for the lock.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.cli_support import invoke

CATEGORIES = [{"id": 3, "name": "red"}, {"id": 8, "name": "blue"}]
COLOURS = {3: (220, 30, 30), 8: (30, 30, 220)}
BACKGROUND = (128, 128, 128)
# (width, height) of the images: landscape, portrait and square, none equal to the model size.
SIZES = ((96, 64), (64, 96), (80, 80), (112, 72))
NUM_TRAIN, NUM_VAL = 96, 24
TRAIN_ARGS = [
    "--img-size", "72", "--epochs", "20", "--batch-size", "8", "--lr", "0.004",
    "--warmup-iters", "10", "--fpn-channels", "32", "--head-convs", "1", "--workers", "0",
    "--seed", "0", "--device", "cpu",
]  # fmt: skip
# The model's input size is not a multiple of the largest stride (128) nor of 16, so feature
# maps round up and every image is letterboxed. Trained with these settings the model reached
# validation AP 0.86 (AP50 1.00) in 20 epochs, 40 s on two idle CPU cores; the tests ask for less.
MIN_VAL_AP = 0.7


@dataclass(frozen=True)
class DetectingRun:
    """The easy dataset and the run folder `pipeline run` made on it (best.pt, last.pt,
    history.json, model.onnx, report.json)."""

    data: Path
    run: Path

    @property
    def weights(self) -> Path:
        return self.run / "best.pt"

    @property
    def val_ann(self) -> Path:
        return self.data / "annotations" / "instances_val.json"

    @property
    def val_images(self) -> Path:
        return self.data / "val"

    @property
    def main_job_output(self) -> Path:
        """What `pipeline run` printed: the PyTorch / ONNX Runtime table."""
        return self.run / "main_job_output.txt"

    def history(self) -> list[dict]:
        return json.loads((self.run / "history.json").read_text())


def _draw_image(rng: np.random.Generator, size: tuple[int, int]) -> tuple[Image.Image, list]:
    """One image with 1-2 non-overlapping squares; returns it and [(category_id, x, y, w, h)]."""
    w, h = size
    pixels = np.empty((h, w, 3), dtype=np.uint8)
    pixels[:] = BACKGROUND
    pixels = np.clip(pixels + rng.integers(-12, 13, pixels.shape), 0, 255).astype(np.uint8)
    boxes: list[tuple[int, int, int, int, int]] = []
    for _ in range(int(rng.integers(1, 3))):
        side = int(rng.integers(28, 42))
        for _attempt in range(20):
            x, y = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
            if all(x + side <= bx or bx + bw <= x or y + side <= by or by + bh <= y
                   for _, bx, by, bw, bh in boxes):  # fmt: skip
                category = int(rng.choice(list(COLOURS)))
                pixels[y : y + side, x : x + side] = COLOURS[category]
                boxes.append((category, x, y, side, side))
                break
    return Image.fromarray(pixels), boxes


def write_easy_dataset(root: Path, num_train: int = NUM_TRAIN, num_val: int = NUM_VAL) -> Path:
    """The colour-coded squares dataset in the built-in layout under `root`; returns root."""
    for split, count, seed in (("train", num_train, 0), ("val", num_val, 1)):
        rng = np.random.default_rng(seed)
        images, annotations = [], []
        (root / split).mkdir(parents=True, exist_ok=True)
        for image_id in range(1, count + 1):
            size = SIZES[image_id % len(SIZES)]
            image, boxes = _draw_image(rng, size)
            name = f"{image_id:04d}.png"
            image.save(root / split / name)
            images.append({"id": image_id, "file_name": name, "width": size[0], "height": size[1]})
            for category, x, y, bw, bh in boxes:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "bbox": [x, y, bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                    }
                )
        ann = {"images": images, "annotations": annotations, "categories": CATEGORIES}
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(ann))
    return root


def shared_temp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's temp folder, the same for every pytest-xdist worker (each worker's own
    base temp lies in it), so the workers train the model once between them."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _train_unless_done(home: Path) -> DetectingRun:
    """Train the model into `home` unless a finished one is there; the caller holds the lock."""
    found = DetectingRun(data=home / "data", run=home / "run")
    if not (home / "done").exists():
        write_easy_dataset(found.data)
        result = invoke("run", "--data", found.data, "--out", found.run, "--overwrite",
                        *TRAIN_ARGS)  # fmt: skip
        assert result.exit_code == 0, result.output
        found.main_job_output.write_text(result.output)
        (home / "done").touch()
    return found


def detecting_run(tmp_path_factory: pytest.TempPathFactory) -> DetectingRun:
    """The session's trained easy-dataset model, made on first use by `pipeline run` (the main
    job: train, export model.onnx, evaluate both formats into report.json), unless the
    background trainer (start_background_training) holds the lock: then it waits for that one."""
    home = shared_temp(tmp_path_factory) / "detecting-model"
    home.mkdir(exist_ok=True)
    with open(home / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _train_unless_done(home)


def start_background_training(session_temp: Path) -> subprocess.Popen:
    """Train the session's model in a process of its own, started before the pytest-xdist
    workers, which meanwhile run the tests that do not need it (trained inside a worker, the
    other worker sat idle for two minutes whenever it reached a test that needs the model). One
    thread, like the workers: with two, on two cores shared with both workers, its epochs took
    5-10 times longer than alone (threads spinning for a core). The lock is taken here and
    handed over, so no worker can start a second training meanwhile."""
    home = session_temp / "detecting-model"
    home.mkdir(exist_ok=True)
    lock = os.open(home / "lock", os.O_WRONLY | os.O_CREAT)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        command = [sys.executable, "-m", "tests.detecting_model", str(home), str(lock)]
        root = Path(__file__).resolve().parent.parent
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        with open(home / "background.log", "w") as log:  # the child keeps its own copy
            return subprocess.Popen(command, cwd=root, env=env, stdout=log,
                                    stderr=subprocess.STDOUT, pass_fds=(lock,))  # fmt: skip
    finally:
        os.close(lock)  # the child's copy of the descriptor keeps the lock until it exits


if __name__ == "__main__":  # python -m tests.detecting_model HOME LOCK_FD (the background trainer)
    import torch

    torch.set_num_threads(1)
    _train_unless_done(Path(sys.argv[1]))
