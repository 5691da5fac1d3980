"""The two-stage detector's training RoIAlign against torchvision's, side by side in one run.

Forward + backward of the head's RoI pooling on the FPN levels of a training batch (defaults:
16 images of 192 px, 512 sampled RoIs each, 128 channels: the study's settings), with
torchvision's `MultiScaleRoIAlign` (its CPU backward runs on one thread) and with
`train.model.roi_align.TrainingRoIAlign` (one embedding_bag). Rounds alternate the two so a
busy machine slows both alike; the median is reported with the ratio, and the largest
difference of their outputs (they compute the same values).

    python bench/roi_align.py                  # 5 rounds
    python bench/roi_align.py --img-size 128 --rois 128
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torchvision.ops import MultiScaleRoIAlign  # noqa: E402

from deploy.evaluate import cpu_name  # noqa: E402
from train.model.faster_rcnn import ROI_LEVELS, ROI_SIZE, roi_canonical_scale  # noqa: E402
from train.model.roi_align import TrainingRoIAlign  # noqa: E402


def _inputs(args: argparse.Namespace) -> tuple[dict, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    features = {
        name: torch.randn(args.batch, args.channels, -(-args.img_size // stride),
                          -(-args.img_size // stride), generator=generator, requires_grad=True)
        for name, stride in zip(ROI_LEVELS, (8, 16, 32), strict=True)
    }  # fmt: skip
    boxes = []
    for _ in range(args.batch):
        corner = torch.rand(args.rois, 2, generator=generator) * args.img_size * 0.8
        extent = torch.rand(args.rois, 2, generator=generator) * args.img_size * 0.5 + 2
        boxes.append(torch.cat([corner, (corner + extent).clamp(max=args.img_size)], 1))
    return features, boxes


def _time(pool: torch.nn.Module, features: dict, boxes: list, size: int) -> float:
    start = time.perf_counter()
    pooled = pool(features, boxes, [(size, size)] * len(boxes))
    pooled.sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rois", type=int, default=512, help="RoIs per image")
    parser.add_argument("--channels", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    features, boxes = _inputs(args)
    scale = roi_canonical_scale(args.img_size)
    pools = {
        "torchvision MultiScaleRoIAlign": MultiScaleRoIAlign(list(ROI_LEVELS), ROI_SIZE, 2,
                                                             canonical_scale=scale),
        "TrainingRoIAlign (embedding_bag)": TrainingRoIAlign(list(ROI_LEVELS), ROI_SIZE, 2,
                                                              canonical_scale=scale).train(),
    }  # fmt: skip
    # with gradients on: TrainingRoIAlign pools with torchvision's own op without them
    outputs = [pool(features, boxes, [(args.img_size, args.img_size)] * args.batch).detach()
               for pool in pools.values()]  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in pools}
    for _ in range(args.rounds):
        for name, pool in pools.items():
            times[name].append(_time(pool, features, boxes, args.img_size))
    cpu = cpu_name()
    print(f"{args.batch} images x {args.rois} RoIs, {args.img_size} px, {args.channels} channels, "
          f"{torch.get_num_threads()} threads, {cpu}")  # fmt: skip
    base = statistics.median(times[next(iter(pools))])
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"  {name:34s} {median * 1000:8.1f} ms  {median / base:5.2f}x")
    print(f"  largest output difference: {float((outputs[0] - outputs[1]).abs().max()):.2e}")


if __name__ == "__main__":
    main()
