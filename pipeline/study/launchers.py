"""Where a comparison's runs execute: back to back here, N at once here, Ray tasks, Slurm jobs.

Every launcher calls the same `run_in_worker` for one (loss, seed), which is `ensure_run`: a run
trains, deploys and scores, and a run started again (a retried Ray task, a re-run compare, a
re-queued Slurm job) continues from where it stopped, because runs resume by themselves. So a
launcher only decides where and how many at once; the report is written here, from the run.json
files, exactly as the local launcher writes it.

Each start of a run is recorded in OUT/launcher/RUN.json (launcher, host, pid, attempt): which
machine ran what, and the handle a test uses to kill a run mid-way.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from deploy.eval_report import write_json_atomic
from pipeline.errors import PipelineError
from pipeline.launch import WorkerError, catch_user_errors
from pipeline.study.spec import LAUNCHER_ONLY, CompareSpec, LaunchSpec

log = logging.getLogger(__name__)

Job = tuple[str, int]  # (loss, seed)


def threads_per_run(spec: CompareSpec, cpus: int | None = None) -> CompareSpec:
    """--threads left unset: this machine's cores shared out among the runs that run at once.

    Two torch processes that each take every core slow each other many times over (measured
    15x on 2 cores), so N local runs at once get cores / N threads each. Ray and Slurm runs
    declare their CPUs: one thread unless --threads says otherwise.
    """
    if spec.base.threads is not None:
        return spec
    launch = spec.launch
    at_once = launch.parallel or 1
    if launch.launcher == "local" and at_once == 1:
        return spec  # today's behaviour: one run at a time with torch's own choice
    if launch.launcher == "local" or (launch.launcher == "ray" and not launch.ray_address):
        threads = max(1, (cpus or os.cpu_count() or 1) // at_once)
    else:
        threads = 1
    return replace(spec, base=replace(spec.base, threads=threads))


def record_start(spec: CompareSpec, loss: str, seed: int) -> None:
    """OUT/launcher/LOSS-sSEED.json: where and in which process this run (re)started."""
    from pipeline.study.spec import run_dir

    if (run_dir(spec.out, loss, seed) / "run.json").is_file():
        return  # finished: it is reused, not started
    path = Path(spec.out) / "launcher" / f"{loss}-s{seed}.json"
    try:
        attempt = int(json.loads(path.read_text())["attempt"]) + 1
    except (OSError, ValueError, KeyError):
        attempt = 1
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {
        "launcher": spec.launch.launcher, "host": socket.gethostname(), "pid": os.getpid(),
        "attempt": attempt, "started": time.time(),
    })  # fmt: skip


def run_in_worker(
    spec: CompareSpec, loss: str, seed: int, cwd: str, log_level: int
) -> dict[str, Any] | WorkerError:
    """One run in a process of its own (pool worker, Ray task, Slurm job).

    Relative paths of the study mean the driver's working folder, so the worker moves there
    when that folder exists here (a shared file system); a user error comes back as a value.
    """
    from common.logs import LOG_FORMAT
    from pipeline.study.compare import ensure_run

    # force: a pool worker runs several runs in turn, each line must name the current one
    logging.basicConfig(level=log_level, format=f"[{loss}-s{seed}] {LOG_FORMAT}", force=True)
    if Path(cwd).is_dir():
        os.chdir(cwd)
    record_start(spec, loss, seed)
    return catch_user_errors(ensure_run, spec, loss, seed)


def unwrap(result: dict[str, Any] | WorkerError) -> dict[str, Any]:
    if isinstance(result, WorkerError):
        result.reraise()
    return result  # type: ignore[return-value]


def _sequential(spec: CompareSpec, jobs: list[Job]) -> list[dict[str, Any]]:
    from pipeline.study.compare import ensure_run

    runs = []
    for loss, seed in jobs:
        log.info("run %d/%d: %s seed %d", len(runs) + 1, len(jobs), loss, seed)
        record_start(spec, loss, seed)
        runs.append(ensure_run(spec, loss, seed))
    return runs


def _local(spec: CompareSpec, jobs: list[Job]) -> list[dict[str, Any]]:
    if (spec.launch.parallel or 1) == 1:
        return _sequential(spec, jobs)
    from pipeline.study.launch_pool import run_in_pool

    return run_in_pool(spec, jobs)


def _ray(spec: CompareSpec, jobs: list[Job]) -> list[dict[str, Any]]:
    from pipeline.study.launch_ray import run_on_ray

    return run_on_ray(spec, jobs)


NO_SUBMITIT = "--launcher slurm: submitit is not installed: pip install '.[slurm]'"


def _slurm(spec: CompareSpec, jobs: list[Job]) -> list[dict[str, Any]]:
    try:
        from pipeline.study.launch_slurm import run_on_slurm
    except ImportError as exc:
        if exc.name != "submitit":
            raise
        raise PipelineError(NO_SUBMITIT) from None

    return run_on_slurm(spec, jobs)


LAUNCH: dict[str, Callable[[CompareSpec, list[Job]], list[dict[str, Any]]]] = {
    "local": _local,
    "ray": _ray,
    "slurm": _slurm,
}


def launch_from_options(options: dict[str, Any]) -> LaunchSpec:
    """LaunchSpec from compare's options; one that the chosen launcher ignores is an error."""
    launcher = str(options.get("launcher") or "local")
    given = {k: options[k] for k in LAUNCHER_ONLY if options.get(k) is not None}
    foreign = ["--" + k.replace("_", "-") for k in given if launcher not in LAUNCHER_ONLY[k]]
    if foreign:
        raise PipelineError(
            f"{', '.join(foreign)}: not an option of --launcher {launcher}, so it would change "
            "nothing"
        )
    if "slurm_time" in given:
        given["slurm_time_min"] = given.pop("slurm_time")
    return LaunchSpec(launcher=launcher, parallel=options.get("parallel"), **given)


def launch_runs(spec: CompareSpec, jobs: list[Job]) -> list[dict[str, Any]]:
    """Every job's run.json content, in the order of `jobs`, by the spec's launcher."""
    return LAUNCH[spec.launch.launcher](threads_per_run(spec), jobs)
