"""Training-step throughput and peak memory: our step vs torchvision's RetinaNet, side by side.

Both sides train the same network on the same random batch: a resnet18 backbone cut at C3-C5,
torchvision's FPN with P6/P7, RetinaNet heads with 4 GroupNorm convs per tower (torchvision's
fixed depth; ours is set to match), the same anchors, focal loss, AdamW. torchvision runs its
own training step as shipped (`model(images, targets)`: resize/normalize transform, a Python
loop over images for matching and for the loss, NCHW, AdamW's default implementation), in fp32
and, for an apples-to-apples precision comparison, under the same autocast as ours.
Ours is `train.step.TrainStep`, the trainer's step: channels-last, batched anchor assignment and
loss with no per-image loop, fused AdamW, gradient clipping; in fp32 and under `--amp` autocast.

Each variant lives in its own worker process (so memory is measured per variant and nothing is
shared); the parent drives them in alternating rounds so slow phases of a busy machine hit all
variants alike, and reports the median time per step. Peak memory per step: on CPU, the rise of
the process's resident set above its level between steps (VmHWM after resetting it through
/proc/self/clear_refs; glibc is told to return freed blocks to the OS so that level is the live
memory), on CUDA torch.cuda.max_memory_allocated above the allocation before the step.
A "loss only" row times anchor matching + loss + the loss's backward on fixed head outputs.

    python bench/train_throughput.py                       # img 192, batch 8, 4 rounds x 2 steps
    python bench/train_throughput.py --threads 1 --compile # also time torch.compile'd ours
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch import nn  # noqa: E402

VARIANTS = ("torchvision", "torchvision-amp", "ours-fp32", "ours-amp")  # amp: bf16 CPU, fp16 CUDA
NUM_CLASSES, HEAD_CONVS = 5, 4


def synthetic_batch(batch: int, size: int, seed: int = 0) -> tuple[torch.Tensor, list[dict]]:
    """(B, 3, S, S) pixels 0..255 and 1-6 random boxes per image (xyxy, class index)."""
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=gen) * 255
    targets = []
    for _ in range(batch):
        count = int(torch.randint(1, 7, (), generator=gen))
        xy = torch.rand(count, 2, generator=gen) * size * 0.7
        wh = (torch.rand(count, 2, generator=gen) * 0.25 + 0.05) * size
        boxes = torch.cat([xy, (xy + wh).clamp(max=size)], dim=1)
        labels = torch.randint(0, NUM_CLASSES, (count,), generator=gen)
        targets.append({"boxes": boxes, "labels": labels, "crowd_boxes": torch.zeros(0, 4)})
    return images, targets


def torchvision_model(size: int, fpn: int) -> nn.Module:
    """torchvision.models.detection.RetinaNet with our backbone, FPN, head depth and anchors."""
    import torchvision
    from torchvision.models.detection import RetinaNet
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.retinanet import RetinaNetHead
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7

    from train.model.anchors import ASPECT_RATIOS, SCALES_PER_OCTAVE, default_anchor_scale

    layers = {"layer2": "0", "layer3": "1", "layer4": "2"}
    backbone = BackboneWithFPN(
        torchvision.models.resnet18(), layers, [128, 256, 512], fpn, LastLevelP6P7(fpn, fpn)
    )
    base = default_anchor_scale(size)
    sizes = tuple(tuple(base * s * k for k in SCALES_PER_OCTAVE) for s in (8, 16, 32, 64, 128))
    anchors = AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(sizes))
    head = RetinaNetHead(fpn, 9, NUM_CLASSES, norm_layer=partial(nn.GroupNorm, min(32, fpn // 4)))
    return RetinaNet(
        backbone, NUM_CLASSES, min_size=size, max_size=size, anchor_generator=anchors, head=head
    )


def torchvision_step(size: int, fpn: int, device: torch.device, amp: bool, images, targets):
    """torchvision's own training step (model(images, targets) -> losses), and its loss alone."""
    from train.step import autocast_dtype

    model = torchvision_model(size, fpn).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    tv_images = [image.to(device) / 255 for image in images]
    tv_targets = [
        {"boxes": t["boxes"].to(device), "labels": t["labels"].to(device)} for t in targets
    ]
    dtype = autocast_dtype(device, amp)

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = sum(model(tv_images, tv_targets).values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    with torch.no_grad():
        batched, _ = model.transform(tv_images, tv_targets)
        features = list(model.backbone(batched.tensors).values())
        outputs = {k: v.detach() for k, v in model.head(features).items()}
        anchor_list = model.anchor_generator(batched, features)

    def loss_only() -> None:
        head_outputs = {k: v.clone().requires_grad_() for k, v in outputs.items()}
        sum(model.compute_loss(tv_targets, head_outputs, anchor_list).values()).backward()

    return step, loss_only


def ours_step(size: int, fpn: int, device: torch.device, amp: bool, compile_model: bool,
              images, targets):  # fmt: skip
    """train.step.TrainStep around the model the trainer builds."""
    from train.assign import assign_anchors
    from train.builders import build_model, build_optimizer, grad_clip_for
    from train.config import TrainConfig
    from train.losses import build_loss, resolve_options
    from train.step import TrainStep

    config = TrainConfig(out=Path("unused"), img_size=size, fpn_channels=fpn, head_convs=HEAD_CONVS)
    model = build_model(config, NUM_CLASSES, device).train()
    loss_fn = build_loss(config.loss, resolve_options(config.loss, {}))
    forward = torch.compile(model) if compile_model else model
    train_step = TrainStep(
        model, forward, loss_fn, build_optimizer(model, config), grad_clip_for(config), amp
    )
    with torch.no_grad():
        logits, deltas = model(images.to(device).contiguous(memory_format=torch.channels_last))

    def loss_only() -> None:
        cls, box = logits.clone().requires_grad_(), deltas.clone().requires_grad_()
        boxes = [t["boxes"].to(device) for t in targets]
        labels = [t["labels"].to(device) for t in targets]
        assignment = assign_anchors(model.anchors, boxes, labels)
        sum(loss_fn(cls, box, assignment).values()).backward()

    return (lambda: train_step(images, targets)), loss_only


class MemoryProbe:
    """Peak memory of one call above the level before it (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.libc = ctypes.CDLL("libc.so.6") if device.type == "cpu" else None

    @staticmethod
    def _status_kb(field: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise RuntimeError(f"{field} not in /proc/self/status")

    def measure(self, fn) -> tuple[float, int]:
        """(seconds, peak bytes above the starting level) of fn()."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            start = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            began = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            return time.perf_counter() - began, torch.cuda.max_memory_allocated() - start
        self.libc.malloc_trim(0)
        start = self._status_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        began = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - began
        return elapsed, (self._status_kb("VmHWM") - start) * 1024


def worker(args: argparse.Namespace) -> None:
    """Build one variant, warm it up, then answer "run N" lines with JSON timings."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    images, targets = synthetic_batch(args.batch_size, args.img_size)
    amp = "amp" in args.worker
    if args.worker.startswith("torchvision"):
        step, loss_only = torchvision_step(
            args.img_size, args.fpn_channels, device, amp, images, targets
        )
    else:
        compiled = args.worker.endswith("compile")
        step, loss_only = ours_step(
            args.img_size, args.fpn_channels, device, amp, compiled, images, targets
        )
    probe = MemoryProbe(device)
    for _ in range(args.warmup):
        step()
        loss_only()
    print("ready", flush=True)
    for line in sys.stdin:
        count = int(line.split()[1])
        steps = [probe.measure(step) for _ in range(count)]
        losses = [probe.measure(loss_only)[0] for _ in range(count)]
        reply = {"step_s": [s for s, _ in steps], "peak": max(m for _, m in steps),
                 "loss_s": losses}  # fmt: skip
        print(json.dumps(reply), flush=True)


def _start(variant: str, args: argparse.Namespace) -> subprocess.Popen:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    command = [sys.executable, __file__, "--worker", variant] + [
        f"--{k.replace('_', '-')}={v}"
        for k, v in vars(args).items()
        if k not in ("worker", "compile") and v is not None
    ]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:  # wait until built and warmed up
        if line.strip() == "ready":
            return proc
    raise RuntimeError(f"{variant}: worker exited before it was ready")


def main(args: argparse.Namespace) -> None:
    variants = list(VARIANTS) + (["ours-fp32-compile"] if args.compile else [])
    workers = {v: _start(v, args) for v in variants}
    samples = {v: {"step_s": [], "loss_s": [], "peak": 0} for v in variants}
    for _ in range(args.rounds):
        for variant, proc in workers.items():
            proc.stdin.write(f"run {args.steps}\n")
            proc.stdin.flush()
            reply = json.loads(proc.stdout.readline())
            samples[variant]["step_s"] += reply["step_s"]
            samples[variant]["loss_s"] += reply["loss_s"]
            samples[variant]["peak"] = max(samples[variant]["peak"], reply["peak"])
    for proc in workers.values():
        proc.stdin.close()
        proc.wait()
    report(samples, args)


def report(samples: dict, args: argparse.Namespace) -> None:
    threads = args.threads or torch.get_num_threads()
    print(f"resnet18 RetinaNet, img {args.img_size}, batch {args.batch_size}, fpn "
          f"{args.fpn_channels}, {HEAD_CONVS} head convs, {args.device}, {threads} threads, "
          f"{args.rounds} rounds x {args.steps} steps (median)")  # fmt: skip
    base = samples["torchvision"]
    base_ips = args.batch_size / statistics.median(base["step_s"])
    base_loss = statistics.median(base["loss_s"])
    print(f"{'variant':<20} {'img/s':>8} {'vs tv':>7} {'peak MB/step':>13} {'loss ms':>8} "
          f"{'loss vs tv':>10}")  # fmt: skip
    for variant, data in samples.items():
        ips = args.batch_size / statistics.median(data["step_s"])
        loss = statistics.median(data["loss_s"])
        print(f"{variant:<20} {ips:8.2f} {ips / base_ips:6.2f}x {data['peak'] / 2**20:13.0f} "
              f"{loss * 1e3:8.1f} {base_loss / loss:9.2f}x")  # fmt: skip
    ips = {v: args.batch_size / statistics.median(d["step_s"]) for v, d in samples.items()}
    print(f"ours-amp / torchvision (its own fp32 step): {ips['ours-amp'] / ips['torchvision']:.2f}x;"
          f" same autocast on both: {ips['ours-amp'] / ips['torchvision-amp']:.2f}x;"
          f" both fp32: {ips['ours-fp32'] / ips['torchvision']:.2f}x")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--img-size", type=int, default=192)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--fpn-channels", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile'd ours")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.worker:
        worker(arguments)
    else:
        main(arguments)
