"""DDP on CPU (gloo, 2 processes): training and validation give what one process gives.

Training: `--nproc-per-node 2` with the same global batch must end at the weights of a
1-process run. BatchNorm is frozen (gloo has no SyncBatchNorm, and per-rank batch statistics
would legitimately differ) and the optimizer is SGD: AdamW divides by sqrt(v), which turns
rounding-level differences of near-zero gradients into visible ones (9e-5 after 6 steps here),
a property of Adam, not of the data parallelism being tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from common.contract import Detections
from common.image import letterbox
from deploy.errors import DeployError
from deploy.evaluate import evaluate
from deploy.metadata import ModelMetadata
from deploy.preprocess import load_image, to_batch
from pipeline.sharded_eval import evaluate_sharded
from tests.cli_support import free_port
from train.builders import build_model, seed_everything
from train.config import TrainConfig
from train.data.synthetic import generate_synthetic_dataset

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--img-size", "64", "--fpn-channels", "16", "--head-convs", "1", "--workers", "0",
        "--warmup-iters", "1", "--batch-size", "4", "--epochs", "1"]  # fmt: skip
WORLD = 2


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_dataset(
        tmp_path_factory.mktemp("ddp") / "data", num_train=12, num_val=4
    )


def shadowing_folder(parent: Path) -> Path:
    """A folder whose train.py, export.py, deploy.py and common.py would shadow the project's
    packages of those names for `python -m` started there (it puts the folder on sys.path)."""
    folder = parent / "my-project"
    folder.mkdir()
    for name in ("train", "export", "deploy", "common"):
        (folder / f"{name}.py").write_text(f"raise SystemExit('imported ./{name}.py')\n")
    return folder


def _train(
    data: Path, out: Path, *extra: str, launcher: tuple[str, ...] = (), cwd: Path = ROOT
) -> dict:
    """`python -m pipeline train` in a fresh process (1 thread: same kernels in every run);
    `launcher` goes before `-m pipeline` (torchrun's own options)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, *launcher, "-m", "pipeline", "train", "--data", str(data),
               "--out", str(out)]  # fmt: skip
    done = subprocess.run(
        command + TINY + list(extra), cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return torch.load(out / "last.pt", map_location="cpu", weights_only=True)


@pytest.mark.slow
def test_two_processes_train_like_one(tiny_data: Path, tmp_path: Path) -> None:
    common = ["--freeze-bn", "--no-amp", "--optimizer", "sgd", "--lr", "0.01", "--keep-state"]
    one = _train(tiny_data, tmp_path / "one", *common)
    # The launchers, started from a folder holding a train.py (and friends) of its own.
    hostile = shadowing_folder(tmp_path)
    two = _train(tiny_data, tmp_path / "two", *common, "--nproc-per-node", "2", cwd=hostile)
    torchrun = ("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2")
    launched = _train(tiny_data, tmp_path / "torchrun", *common, launcher=torchrun, cwd=hostile)
    assert one["history"][-1]["step"] == two["history"][-1]["step"] == 3
    assert two["resume"]["world_size"] == launched["resume"]["world_size"] == 2
    # torchrun itself runs the same workers as --nproc-per-node: the very same weights.
    for name, value in two["state_dict"].items():
        assert torch.equal(launched["state_dict"][name], value), name
    config = TrainConfig(out=tmp_path, img_size=64, fpn_channels=16, head_convs=1)
    seed_everything(0)
    initial = build_model(config, len(one["category_ids"]), torch.device("cpu")).state_dict()
    moved = max((one["state_dict"][k] - v).abs().max().item() for k, v in initial.items())
    differ = max(
        (one["state_dict"][k] - v).abs().max().item() for k, v in two["state_dict"].items()
    )
    assert moved > 1e-3  # the comparison below is about weights that did train
    assert differ < 1e-5
    assert one["history"][-1]["AP"] == pytest.approx(two["history"][-1]["AP"], abs=1e-6)


class GroundTruthPredictor:
    """Jittered ground truth plus one false positive per image, keyed by the image's pixels.

    A stand-in model with a non-trivial AP (a tiny trained model scores 0), so the sharded and
    single-process evaluations have something to disagree about.
    """

    backend_name, precision = "ground-truth", "fp32"

    def __init__(self, ann_file: Path, img_dir: Path, metadata: ModelMetadata) -> None:
        self.metadata = metadata
        data = json.loads(Path(ann_file).read_text())
        class_of = {c: i for i, c in enumerate(metadata.category_ids)}
        self.table: dict[bytes, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        for info in data["images"]:
            array, scale = letterbox(load_image(img_dir / info["file_name"]), metadata.img_size)
            rng = np.random.default_rng(info["id"])
            anns = [a for a in data["annotations"] if a["image_id"] == info["id"]]
            boxes = [np.array(a["bbox"]) * scale for a in anns] + [rng.uniform(0, 40, 4)]
            boxes = [np.r_[b[:2], b[:2] + b[2:]] + rng.normal(0, 1.5, 4) for b in boxes]
            labels = [class_of[a["category_id"]] for a in anns] + [0]
            scores = rng.uniform(0.1, 1.0, len(boxes))
            key = to_batch([array]).tobytes()
            self.table[key] = (np.array(boxes, np.float32), scores.astype(np.float32), labels)

    def __call__(self, batch: np.ndarray) -> Detections:
        rows = [self.table[image[None].tobytes()] for image in batch]
        size = max(len(r[1]) for r in rows)
        out = Detections(
            num_dets=np.array([len(r[1]) for r in rows], np.int64),
            boxes=np.zeros((len(rows), size, 4), np.float32),
            scores=np.zeros((len(rows), size), np.float32),
            labels=np.full((len(rows), size), -1, np.int64),
        )
        for i, (boxes, scores, labels) in enumerate(rows):
            out.boxes[i, : len(scores)], out.scores[i, : len(scores)] = boxes, scores
            out.labels[i, : len(scores)] = labels
        return out


def _predictor(root: Path) -> GroundTruthPredictor:
    ann = root / "annotations" / "instances_val.json"
    categories = json.loads(ann.read_text())["categories"]
    metadata = ModelMetadata(
        class_names=[c["name"] for c in categories],
        category_ids=[c["id"] for c in categories],
        img_size=64,
    )
    return GroundTruthPredictor(ann, root / "val", metadata)


def _eval_worker(rank: int, port: int, root: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        root_path = Path(root)
        metrics = evaluate_sharded(
            _predictor(root_path), root_path / "annotations" / "instances_val.json",
            root_path / "val", batch_size=3,
        )  # fmt: skip
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sharded_validation_equals_one_process(tiny_data: Path, tmp_path: Path) -> None:
    predictor = _predictor(tiny_data)
    ann, img_dir = tiny_data / "annotations" / "instances_val.json", tiny_data / "val"
    single = evaluate(predictor, ann, img_dir, batch_size=3, warmup=0)["metrics"]
    assert 0.05 < single["AP"] < 0.95  # non-trivial: both matches and misses
    mp.start_processes(
        _eval_worker, args=(free_port(), str(tiny_data), str(tmp_path)), nprocs=WORLD,
        start_method="spawn",
    )  # fmt: skip
    for rank in range(WORLD):  # rank 0 scored, every rank received the metrics
        sharded = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert sharded == pytest.approx(single, abs=1e-9)


def _strict_eval_worker(rank: int, port: int, intact: str, root: str, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        root_path = Path(root)
        evaluate_sharded(
            _predictor(Path(intact)), root_path / "annotations" / "instances_val.json",
            root_path / "val", batch_size=3, strict=True,
        )  # fmt: skip
        outcome = "no error"
    except DeployError as exc:
        outcome = f"DeployError: {exc}"
    finally:
        dist.destroy_process_group()
    (Path(out_dir) / f"rank{rank}.txt").write_text(outcome)


@pytest.mark.slow
def test_an_error_on_one_rank_stops_every_rank(tiny_data: Path, tmp_path: Path) -> None:
    """A --strict failure on rank 1 only must reach rank 0 too, not leave it waiting."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    infos = sorted(
        json.loads((root / "annotations" / "instances_val.json").read_text())["images"],
        key=lambda info: info["id"],
    )
    broken = root / "val" / infos[1]["file_name"]  # rank 1 of 2 takes images 1, 3, 5, ...
    broken.write_bytes(b"not a png")
    context = mp.start_processes(
        _strict_eval_worker, args=(free_port(), str(tiny_data), str(root), str(tmp_path)),
        nprocs=WORLD,
        start_method="spawn", join=False,
    )  # fmt: skip
    deadline = time.monotonic() + 90
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail("a rank hung after another rank's error")
    for rank in range(WORLD):
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert outcome.startswith("DeployError") and broken.name in outcome
