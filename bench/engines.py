"""Every CPU engine side by side in one run: ONNX Runtime fp32/int8 and OpenVINO fp32/bf16/int8.

All engines score the same model (exported here from --weights) through deploy's timed loop
(letterbox, inference with decode and NMS in the graph, and unpadding), alternating in rounds so
machine noise hits them alike; latency p50 is the median over rounds. Each also gets COCO AP on
the same validation images. For ONNX Runtime fp32 the table gives the share of the CPU's fp32
FMA peak its inference reaches (the model's GFLOP per image over the p50 inference time, against
cores x clock x FLOP per cycle). With --loaded the whole table is measured again while a second
process keeps one core busy, as on a shared server.

Targets (issue 15, demo model, quiet machine): OpenVINO bf16 <= 0.55x ONNX Runtime fp32 at
batch 1 and <= 0.35x at batch 8 with AP within 0.3 points; the best int8 engine <= 0.5x at batch
1 with AP within 1.0 point.

    python bench/engines.py --weights runs/demo/best.pt [--rounds 5] [--iterations 20] [--loaded]
        [--nncf]

--nncf adds a sixth engine: `pipeline export --openvino --precision int8 --int8-method nncf`,
the fp32 IR quantized by NNCF's post-training quantization with the post-processing kept float
(the same 128 calibration images from the training split as the QDQ export), to compare the two
int8 routes (`pip install '.[nncf]'` first).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from common.datasets.layout import resolve_split
from common.engines import BACKENDS
from deploy.backends.base import RuntimeSettings
from deploy.backends.openvino import cpu_capabilities
from deploy.evaluate import benchmark_latency, evaluate
from deploy.runtimes import open_deployed
from export.options import ExportOptions
from pipeline.exporting import run_export
from train.checkpoint import load_checkpoint, model_from_checkpoint
from train.data.synthetic import ensure_synthetic_dataset

BATCHES = (1, 8)
LOAD = "import numpy as np\na = np.random.rand(1024, 1024).astype(np.float32)\nwhile True:\n    a @ a\n"


def model_gflop(weights: Path) -> float:
    """GFLOP per image of the network (backbone, FPN, heads), counted by torch's FLOP counter;
    decode and NMS are left out (they are a small tail)."""
    model = model_from_checkpoint(load_checkpoint(weights), weights).eval()
    size = int(model.anchor_spec.img_size)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def cpu_info() -> tuple[str, set[str]]:
    """/proc/cpuinfo's text and its CPU flags (both empty where the system has none)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = re.search(r"^flags\s*:\s*(.*)$", info, re.M)
    return info, set(flags.group(1).split()) if flags else set()


def cpu_description() -> str:
    """The CPU's model name and the instruction sets that decide the bf16 and int8 speed-ups."""
    info, flags = cpu_info()
    name = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    wanted = ("avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
    have = [f for f in wanted if f in flags]
    ov = cpu_capabilities()
    return (f"{name.group(1) if name else 'unknown'}, {os.cpu_count()} CPUs; flags: "
            f"{' '.join(have) or 'none of ' + ' '.join(wanted)}; OpenVINO {ov['version']} "
            f"capabilities: {' '.join(ov['capabilities'])}")  # fmt: skip


def cpu_fp32_peak_gflops(fma_units: int) -> tuple[float, str]:
    """cores x GHz x FLOP/cycle (2 per FMA x fp32 lanes x FMA units), and how it was derived, at
    the clock /proc/cpuinfo reports (a VM's base clock: a boosting CPU exceeds it)."""
    info, flags = cpu_info()
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    mhz = [float(m) for m in re.findall(r"^cpu MHz\s*:\s*([\d.]+)", info, re.M)] or [2000.0]
    cores = os.cpu_count() or 1
    ghz = max(mhz) / 1000
    peak = cores * ghz * 2 * lanes * fma_units
    return peak, f"{cores} cores x {ghz:.2f} GHz x 2 x {lanes} fp32 lanes x {fma_units} FMA units"


def build_engines(weights: Path, data: Path, folder: Path, nncf: bool = False) -> dict[str, Any]:
    """Every CPU engine of the engine table at each precision compare scores (six with `nncf`),
    exported into `folder` by `pipeline export`'s own route and opened as eval opens them."""
    engines = {}
    cpu = RuntimeSettings(provider="cpu")
    for engine, precision in BACKENDS.values():
        if engine.needs_gpu:
            continue
        options = ExportOptions(openvino=engine.export_flag == "--openvino", precision=precision)
        run_export(weights, folder / "model.onnx", data, True, options)
        label = f"{engine.runtime} {precision}" + (" (QDQ)" if precision == "int8" else "")
        engines[label] = open_deployed(folder / engine.model_file(precision), cpu)
    if nncf:  # the product's route: pipeline export --openvino --precision int8 --int8-method nncf
        (folder / "nncf").mkdir()
        nncf_options = ExportOptions(openvino=True, precision="int8", int8_method="nncf")
        run_export(weights, folder / "nncf" / "model.onnx", data, True, nncf_options)
        engines["OpenVINO int8 (NNCF)"] = open_deployed(folder / "nncf" / "model.int8.xml", cpu)
    return engines


def measure(engines: dict[str, Any], rounds: int, iterations: int) -> dict[tuple[str, int], dict]:
    """p50 total and inference ms per image, median over alternating rounds, and throughput."""
    samples: dict[tuple[str, int], list[dict]] = {}
    for _ in range(rounds):
        for batch in BATCHES:
            for name, predictor in engines.items():
                report = benchmark_latency(predictor, batch, iterations, warmup=3)
                samples.setdefault((name, batch), []).append(report)
    return {
        key: {
            "total_ms": statistics.median(r["latency"]["total_ms"]["p50"] for r in reports),
            "inference_ms": statistics.median(r["latency"]["inference_ms"]["p50"] for r in reports),
            "images_per_s": statistics.median(r["throughput_ips"] for r in reports),
        }
        for key, reports in samples.items()
    }


def table(engines: dict[str, Any], timing: dict, aps: dict[str, float], flop_note: str) -> str:
    base = {b: timing[("ONNX Runtime fp32", b)]["total_ms"] for b in BATCHES}
    lines = [
        "| engine | AP | batch 1 ms | ratio | batch 8 ms | ratio | batch 8 img/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in engines:
        one, eight = timing[(name, 1)], timing[(name, 8)]
        lines.append(
            f"| {name} | {100 * aps[name]:.2f} | {one['total_ms']:.1f} | "
            f"{one['total_ms'] / base[1]:.2f} | {eight['total_ms']:.1f} | "
            f"{eight['total_ms'] / base[8]:.2f} | {eight['images_per_s']:.0f} |"
        )
    return "\n".join([*lines, "", flop_note])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=Path("runs/demo/best.pt"))
    parser.add_argument("--data", type=Path, default=None, help="default: the built-in dataset")
    parser.add_argument("--ap-images", type=int, default=200, help="validation images for AP")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--fma-units", type=int, default=2, help="FMA units per core (Xeon: 2)")
    parser.add_argument("--loaded", action="store_true", help="also measure under a second process")
    parser.add_argument("--nncf", action="store_true", help="add NNCF's int8 (pip install nncf)")
    args = parser.parse_args()
    if not args.weights.is_file():
        sys.exit(f"{args.weights}: no such checkpoint (make demo writes runs/demo/best.pt)")
    data = args.data or ensure_synthetic_dataset()
    ann, img_dir = resolve_split(data, "val")
    with tempfile.TemporaryDirectory() as tmp:
        engines = build_engines(args.weights, data, Path(tmp), args.nncf)
        aps = {
            name: evaluate(p, ann, img_dir, batch_size=8, warmup=0, max_images=args.ap_images)[
                "metrics"
            ]["AP"]
            for name, p in engines.items()
        }
        gflop = model_gflop(args.weights)
        peak, how = cpu_fp32_peak_gflops(args.fma_units)
        print(f"CPU: {cpu_description()}")
        # "own load" = nothing added by this script; the machine's load average says the rest
        passes = [("own load only", None)] + ([("loaded", LOAD)] if args.loaded else [])
        for label, load in passes:
            load_1min = os.getloadavg()[0]  # other jobs on the machine, before this pass
            busy = subprocess.Popen([sys.executable, "-c", load], env={**os.environ, "OMP_NUM_THREADS": "1"}) if load else None  # fmt: skip
            try:
                timing = measure(engines, args.rounds, args.iterations)
            finally:
                if busy is not None:
                    busy.kill()
            inference_s = timing[("ONNX Runtime fp32", 8)]["inference_ms"] / 1000
            note = (
                f"ONNX Runtime fp32 at batch 8: {gflop:.2f} GFLOP per image / "
                f"{1000 * inference_s:.1f} ms = {gflop / inference_s:.0f} GFLOP/s, "
                f"{gflop / inference_s / peak:.0%} of the fp32 FMA peak at the reported clock, "
                f"{peak:.0f} GFLOP/s ({how}); above 100%: the CPU runs faster than the clock "
                "the system reports (a VM reports its base clock, not the boost)"
            )
            print(f"\n## {label} (load average {load_1min:.1f} on {os.cpu_count()} CPUs before): "
                  f"p50 ms per image, median of {args.rounds} rounds, "
                  f"AP on {args.ap_images} val images\n")  # fmt: skip
            print(table(engines, timing, aps, note))


if __name__ == "__main__":
    main()
