#!/usr/bin/env python3
"""Plan a loss study from measured per-step times: runs, machine-hours, wall-clock on N nodes.

Reads a finished study (`pipeline compare --out DIR`): for every run, its optimizer steps and
training-loop seconds (history.json) give seconds per step, and the time from its config.json to
its run.json gives the whole run (validation, export, scoring included); what is not the
training loop is that run's overhead. A planned run takes
    steps x seconds-per-step (the median of the measured runs) + overhead (their median),
and N nodes running K runs at once each finish `runs` runs in ceil(runs / (N x K)) waves.

    scripts/plan_study.py runs/real/raccoon                        # the measured study itself
    scripts/plan_study.py runs/real/raccoon --losses 9 --seeds 3 --nodes 1,2,4 --runs-per-node 2
    scripts/plan_study.py runs/gpu-probe --steps 90000 --losses 9 --seeds 3 --gpus-per-run 8

The last line is the papers' scale (12 epochs of COCO at batch 16: 90k steps) from a short
probe study measured on the cluster's own GPUs (`pipeline compare --max-steps 200 ...` there):
the numbers are only as good as the probe, which is the point.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def measure_run(run: Path) -> dict[str, float] | None:
    """Steps, training-loop seconds and whole-run seconds of one finished run (None: unfinished)."""
    summary, history = run / "run.json", run / "history.json"
    if not (summary.is_file() and history.is_file()):
        return None
    epochs = json.loads(history.read_text())
    if not epochs or json.loads(summary.read_text()).get("status") != "ok":
        return None
    steps = max(int(e.get("step", 0)) for e in epochs)
    loop = sum(float(e.get("seconds", 0.0)) for e in epochs)
    start = run.parent.parent / "launcher" / f"{run.name}.json"
    started = (
        json.loads(start.read_text())["started"] if start.is_file()
        else (run / "config.json").stat().st_mtime
    )  # fmt: skip
    whole = summary.stat().st_mtime - started
    if steps <= 0 or loop <= 0 or whole < loop:  # resumed or copied runs: times do not add up
        return None
    return {"steps": steps, "loop_seconds": loop, "run_seconds": whole}


def plan_rows(
    step_seconds: float, overhead: float, steps: int, runs: int, nodes: list[int],
    runs_per_node: int, gpus_per_run: int,
) -> list[dict[str, float]]:  # fmt: skip
    """One row per node count: waves, wall-clock hours and machine-hours of the whole study."""
    run_hours = (steps * step_seconds + overhead) / 3600
    rows = []
    for count in nodes:
        waves = math.ceil(runs / (count * runs_per_node))
        rows.append({
            "nodes": count, "runs": runs, "run_hours": run_hours, "waves": waves,
            "wall_hours": waves * run_hours, "machine_hours": runs * run_hours * max(1, gpus_per_run),
        })  # fmt: skip
    return rows


def hours_minutes(hours: float) -> str:
    """2.5 -> '2 h 30 min'; under an hour, minutes only."""
    minutes = round(hours * 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study", type=Path, help="A finished `pipeline compare --out` folder.")
    parser.add_argument("--losses", type=int, help="Losses to plan for (default: the study's).")
    parser.add_argument("--seeds", type=int, help="Seeds per loss (default: the study's).")
    parser.add_argument("--steps", type=int, help="Optimizer steps per run (default: measured).")
    parser.add_argument("--nodes", default="1,2,4,8", help="Node counts to plan for.")
    parser.add_argument("--runs-per-node", type=int, default=1, help="Runs at once per node.")
    parser.add_argument("--gpus-per-run", type=int, default=0, help="0: CPU runs.")
    args = parser.parse_args(argv)
    measured = [m for run in sorted((args.study / "runs").glob("*-s*")) if (m := measure_run(run))]
    if not measured:
        print(f"{args.study}: no finished run with consistent times to measure", file=sys.stderr)
        return 2
    report = json.loads((args.study / "report.json").read_text())
    step_seconds = statistics.median(m["loop_seconds"] / m["steps"] for m in measured)
    overhead = statistics.median(m["run_seconds"] - m["loop_seconds"] for m in measured)
    steps = args.steps or round(statistics.median(m["steps"] for m in measured))
    runs = (args.losses or len(report["losses"])) * (args.seeds or len(report["seeds"]))
    nodes = [int(n) for n in args.nodes.split(",")]
    unit = "GPU-hours" if args.gpus_per_run else "run-hours"
    print(f"measured on {len(measured)} runs of {args.study}: {step_seconds:.3f} s per step, "
          f"{overhead:.0f} s per run outside the training loop")  # fmt: skip
    print(f"plan: {runs} runs x {steps} steps, {args.runs_per_node} run(s) at once per node")
    print(f"| nodes | runs | one run | waves | wall-clock | {unit} |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    for row in plan_rows(step_seconds, overhead, steps, runs, nodes, args.runs_per_node,
                         args.gpus_per_run):  # fmt: skip
        print(f"| {row['nodes']} | {row['runs']} | {hours_minutes(row['run_hours'])} | "
              f"{row['waves']} | {hours_minutes(row['wall_hours'])} | "
              f"{row['machine_hours']:.1f} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
