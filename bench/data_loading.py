"""Does data loading keep up with the training step? Side by side in one run.

"step only" trains on one batch held in memory (no loading at all); every other row runs the
trainer's own loop pieces (its DataLoader over the built-in dataset: decode, letterbox, flip,
collate; then the same TrainStep) with a loader setting. The ratio to "step only" is what loading
costs the training loop: 1.00 means it is fully hidden. Rows alternate in rounds so a busy
machine slows all alike; the median over rounds is reported. Defaults are the demo's settings.

    python bench/data_loading.py                 # img 192, batch 16, 3 rounds x 8 steps
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from train.builders import build_datasets, build_model, build_optimizer, grad_clip_for  # noqa: E402
from train.config import TrainConfig  # noqa: E402
from train.data.loader import build_train_loader  # noqa: E402
from train.data.unreadable import SkipUnreadable, collate_skipping  # noqa: E402
from train.losses import build_loss  # noqa: E402
from train.step import TrainStep  # noqa: E402

# name -> (DataLoader workers, --cache-images); None: no loader (the step alone)
VARIANTS = {
    "step only": None,
    "workers 0": (0, False),
    "workers 1 (default)": (1, False),
    "workers 2": (2, False),
    "cache, workers 0": (0, True),
    "cache, workers 1": (1, True),
}


def make_step(config: TrainConfig, num_classes: int) -> TrainStep:
    model = build_model(config, num_classes, torch.device("cpu")).train()
    loss_fn = build_loss(config.loss)
    optimizer = build_optimizer(model, config)
    return TrainStep(model, model, loss_fn, optimizer, grad_clip_for(config), config.amp)


def batches(config: TrainConfig, workers: int, cache: bool):
    """An endless stream of the trainer's batches with this loader setting."""
    train_set, _ = build_datasets(replace(config, cache_images=cache, workers=workers))
    loader, sampler = build_train_loader(
        SkipUnreadable(train_set), config.batch_size, (0, 1), config.seed, workers,
        collate_skipping, pin_memory=False,
    )  # fmt: skip
    epoch = 0
    while True:
        sampler.set_epoch(epoch)
        for images, targets, _ in loader:  # (the built-in images are all readable)
            yield images, targets
        epoch += 1


def main(args: argparse.Namespace) -> None:
    config = TrainConfig(out=Path("unused"), img_size=args.img_size, batch_size=args.batch_size)
    streams, steps = {}, {}
    for name, setting in VARIANTS.items():
        streams[name] = batches(config, *(setting or (0, False)))
        steps[name] = make_step(config, num_classes=5)
    fixed = next(streams["step only"])
    per_round: dict[str, list[float]] = {name: [] for name in VARIANTS}
    for name in VARIANTS:  # warm-up: workers started, first batches prefetched
        for _ in range(2):
            steps[name](*(fixed if VARIANTS[name] is None else next(streams[name])))
    for _ in range(args.rounds):
        for name, setting in VARIANTS.items():
            began = time.perf_counter()
            for _ in range(args.steps):
                steps[name](*(fixed if setting is None else next(streams[name])))
            per_round[name].append(args.steps * args.batch_size / (time.perf_counter() - began))
    base = statistics.median(per_round["step only"])
    print(f"img {args.img_size}, batch {args.batch_size}, {torch.get_num_threads()} threads, "
          f"{args.rounds} rounds x {args.steps} steps (median images/s)")  # fmt: skip
    print(f"{'loop':<22} {'img/s':>7} {'vs step only':>13}")
    for name, values in per_round.items():
        ips = statistics.median(values)
        print(f"{name:<22} {ips:7.2f} {ips / base:12.2f}x")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per round and row")
    return parser.parse_args()


if __name__ == "__main__":
    main(parse_args())
