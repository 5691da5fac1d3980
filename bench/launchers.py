"""One study, three launchers, side by side: back to back, two local processes, two Ray tasks.

The same small study (ce and focal, one seed each, on the easy colour-coded dataset the tests
use, so the models detect) runs with one thread per run: first back to back (`--launcher
local`), then two at once (`--parallel 2`), then as two Ray tasks on a Ray cluster started on
this machine (`--launcher ray --parallel 2`). Printed: each one's wall-clock time (the whole
command: start-up, training, export, scoring, report), its ratio to back to back, and whether
its report holds the same numbers (AP per loss and engine, the paired-bootstrap effects).

    python bench/launchers.py                 # 5 epochs per run
    python bench/launchers.py --epochs 10 --keep runs/bench-launchers
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.detecting_model import write_easy_dataset  # noqa: E402

LAUNCHERS = {
    "back to back": [],
    "local --parallel 2": ["--parallel", "2"],
    "ray --parallel 2": ["--launcher", "ray", "--parallel", "2"],
}


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    found = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
    return found.group(1) if found else platform.processor() or "unknown CPU"


def study(data: Path, out: Path, epochs: int, extra: list[str]) -> float:
    """Wall seconds of one `pipeline compare`."""
    command = [sys.executable, "-m", "pipeline", "compare", "--out", str(out), "--data",
               str(data), "--losses", "ce,focal", "--seeds", "1", "--img-size", "72",
               "--epochs", str(epochs), "--batch-size", "8", "--lr", "0.004", "--warmup-iters",
               "10", "--fpn-channels", "32", "--head-convs", "1", "--workers", "0", "--device",
               "cpu", "--threads", "1", *extra]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return wall


def numbers(out: Path) -> dict[str, Any]:
    report = json.loads((out / "report.json").read_text())
    per_loss = {loss: {e: row["metrics"] for e, row in item["engines"].items()}
                for loss, item in report["per_loss"].items()}  # fmt: skip
    return {"metrics": per_loss, "effects": report["effects"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--keep", type=Path, default=None, help="Keep the studies here.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.keep or Path(scratch)
        data = write_easy_dataset(root / "easy")
        walls, reports = {}, {}
        for name, extra in LAUNCHERS.items():
            out = root / name.replace(" ", "-")
            if out.exists():
                raise SystemExit(f"{out}: exists; pick another --keep folder")
            walls[name] = study(data, out, args.epochs, extra)
            reports[name] = numbers(out)
    base = walls["back to back"]
    print(f"{cpu_name()}, 2 runs x {args.epochs} epochs, 1 thread per run")
    print(f"{'launcher':22s} {'wall s':>8s} {'vs back to back':>16s}  same numbers")
    for name, wall in walls.items():
        same = reports[name] == reports["back to back"]
        print(f"{name:22s} {wall:8.1f} {wall / base:15.2f}x  {'yes' if same else 'NO'}")
    aps = {loss: round(100 * m["onnx"]["AP"]["mean"], 1)
           for loss, m in reports["back to back"]["metrics"].items()}  # fmt: skip
    print(f"AP on ONNX Runtime (points): {aps}")


if __name__ == "__main__":
    main()
