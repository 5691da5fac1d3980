"""`compare --launcher ray`: each run a Ray task that declares its CPUs and GPUs.

Connects to the cluster at --ray-address (or RAY_ADDRESS), else starts one on this machine and
stops it at the end. A task whose process dies (a node lost, a kill, out of memory) is started
again by Ray, up to --retries times, and continues from its last.pt like any resumed run; an
error raised by the run itself is not retried (it would fail the same way).
"""

from __future__ import annotations

import importlib
import logging
import os
from typing import Any

from pipeline.errors import PipelineError
from pipeline.launch import WorkerError
from pipeline.study.launchers import Job, run_in_worker, unwrap
from pipeline.study.spec import CompareSpec

log = logging.getLogger(__name__)

NO_RAY = "--launcher ray: Ray is not installed: pip install '.[ray]'"


def import_ray() -> Any:
    try:
        return importlib.import_module("ray")
    except ImportError:
        raise PipelineError(NO_RAY) from None


def _connect(ray: Any, address: str | None, threads: int) -> bool:
    """Join the cluster (True when this call started it, so it is stopped at the end)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    # Workers read OMP_NUM_THREADS when torch loads; each run also sets its torch threads.
    runtime_env = {"env_vars": {"OMP_NUM_THREADS": str(threads)}}
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, configure_logging=False)
        else:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, runtime_env=runtime_env,
                     configure_logging=False)  # fmt: skip
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
        raise PipelineError(f"--launcher ray: cannot connect to {where}: {exc}") from exc
    return True


def run_on_ray(spec: CompareSpec, jobs: list[Job]) -> list[dict[str, Any]]:
    """Every job's run.json content in job order; at most --parallel tasks in flight."""
    ray = import_ray()
    launch = spec.launch
    threads = spec.base.threads or 1
    started_here = _connect(ray, launch.ray_address, threads)
    task = ray.remote(run_in_worker).options(
        num_cpus=threads, num_gpus=launch.gpus_per_run, max_retries=launch.retries,
        retry_exceptions=False,
    )  # fmt: skip
    limit = launch.parallel or len(jobs)
    log.info("%d runs as Ray tasks, %d CPU(s) and %d GPU(s) each, at most %d at once",
             len(jobs), threads, launch.gpus_per_run, limit)  # fmt: skip
    level = logging.getLogger().getEffectiveLevel()
    cwd = os.getcwd()
    results: dict[int, Any] = {}
    in_flight: dict[Any, int] = {}
    queue = list(enumerate(jobs))
    try:
        while queue or in_flight:
            while queue and len(in_flight) < limit:
                index, (loss, seed) = queue.pop(0)
                in_flight[task.remote(spec, loss, seed, cwd, level)] = index
            done, _ = ray.wait(list(in_flight), num_returns=1)
            index = in_flight.pop(done[0])
            results[index] = _result(ray, done[0], jobs[index])
            log.info("%s seed %d done (%d of %d)", *jobs[index], len(results), len(jobs))
    finally:
        for ref in in_flight:
            ray.cancel(ref)
        if started_here:
            ray.shutdown()
    return [unwrap(results[i]) for i in range(len(jobs))]


def _result(ray: Any, ref: Any, job: Job) -> Any:
    from ray.exceptions import RayError, RayTaskError

    try:
        result = ray.get(ref)
    except RayTaskError as exc:  # the run raised (not a user error: those come back as values)
        raise exc.as_instanceof_cause() from None
    except RayError as exc:  # retries used up: the task's process kept dying
        raise PipelineError(
            f"run {job[0]} seed {job[1]} failed as a Ray task ({type(exc).__name__}: "
            f"{' '.join(str(exc).split())[:300]}); run the same compare again to resume it"
        ) from exc
    if isinstance(result, WorkerError):
        result.reraise()
    return result
