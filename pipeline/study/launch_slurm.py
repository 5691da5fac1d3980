"""`compare --launcher slurm`: the runs as one Slurm job array, through submitit.

One job per run, `--parallel` of them at once (the array's %N), each with its CPUs (--threads),
GPUs (--gpus-per-run) and nodes (--nodes-per-run: one torchrun per node, one DDP training over
all of them; node 0 then deploys and scores). A job stopped at its time limit or preempted is
requeued by submitit and continues from its last.pt. The driver waits and writes the report;
stopped early (Ctrl-C, a closed login shell), the jobs go on, and running the same compare again
waits for the jobs still queued or running instead of submitting them twice (OUT/slurm/jobs.json).

`--slurm-cluster local` runs the same jobs through submitit's local executor: the same code
path minus sbatch, for trying a study's setup before queueing it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Any

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from deploy.eval_report import write_json_atomic
from pipeline.errors import PipelineError
from pipeline.launch import WorkerError
from pipeline.study.launchers import Job, record_start, run_in_worker, unwrap
from pipeline.study.spec import CompareSpec, run_dir
from train.config import TrainConfig

log = logging.getLogger(__name__)

ALIVE = {"PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED"}


class SlurmRun(Checkpointable):
    """One run as a job; requeued (same arguments) when Slurm stops it early."""

    def __call__(
        self, spec: CompareSpec, loss: str, seed: int, cwd: str, log_level: int
    ) -> dict[str, Any] | WorkerError | None:
        if spec.launch.nodes_per_run == 1:
            return run_in_worker(spec, loss, seed, cwd, log_level)
        return _multi_node_run(spec, loss, seed, cwd, log_level)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        return DelayedSubmission(self, *args, **kwargs)  # the run resumes from its own files


def torchrun_command(
    config_file: Path, num_nodes: int, node: int, hosts: list[str], nproc: int, job_id: str
) -> list[str]:
    """One node's torchrun for a multi-node run: node 0 (the first host) holds the store."""
    port = 20000 + zlib.crc32(job_id.encode()) % 20000  # two arrays on one node do not collide
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={num_nodes}",
            f"--node-rank={node}", f"--nproc-per-node={nproc}", f"--master-addr={hosts[0]}",
            f"--master-port={port}", "-m", "pipeline.study.node_train", str(config_file)]  # fmt: skip


def _multi_node_run(
    spec: CompareSpec, loss: str, seed: int, cwd: str, log_level: int
) -> dict[str, Any] | WorkerError | None:
    """Every node trains (torchrun); node 0 decides nothing the others do not, then scores."""
    from pipeline.launch import catch_user_errors
    from pipeline.study.compare import ensure_run, training_plan

    if Path(cwd).is_dir():
        os.chdir(cwd)
    logging.basicConfig(level=log_level)
    env = submitit.JobEnvironment()

    def train_with_torchrun(config: TrainConfig) -> None:
        config_file = Path(config.out).parent / f".{Path(config.out).name}.config.json"
        if env.node == 0:
            write_json_atomic(config_file, config.to_dict())
        command = torchrun_command(config_file, env.num_nodes, env.node, list(env.hostnames),
                                   config.nproc_per_node, str(env.job_id))  # fmt: skip
        subprocess.run(command, check=True)

    if env.node == 0:
        record_start(spec, loss, seed)
        return catch_user_errors(ensure_run, spec, loss, seed, train_with_torchrun)
    planned = training_plan(spec.run_config(loss, seed))
    if planned is not None:  # the same plan node 0 made, from the same files
        train_with_torchrun(planned)
    return None


def _executor(spec: CompareSpec, jobs: int) -> submitit.AutoExecutor:
    launch = spec.launch
    if launch.slurm_cluster == "slurm" and shutil.which("sbatch") is None:
        raise PipelineError(
            "--launcher slurm: sbatch is not on this machine's PATH; run compare on the "
            "cluster's login node (--slurm-cluster local runs the jobs here, through submitit's "
            "local executor)"
        )
    executor = submitit.AutoExecutor(
        folder=Path(spec.out) / "slurm" / "%j", cluster=launch.slurm_cluster
    )
    executor.update_parameters(
        name=f"compare-{Path(spec.out).name}", timeout_min=launch.slurm_time_min,
        cpus_per_task=spec.base.threads or 1, gpus_per_node=launch.gpus_per_run or None,
        nodes=launch.nodes_per_run, tasks_per_node=1,
    )  # fmt: skip
    if launch.slurm_cluster == "slurm":
        executor.update_parameters(
            slurm_partition=launch.slurm_partition,
            slurm_array_parallelism=launch.parallel or jobs,
        )
    return executor


def _jobs_file(spec: CompareSpec) -> Path:
    return Path(spec.out) / "slurm" / "jobs.json"


def _still_queued(spec: CompareSpec, jobs: list[Job]) -> dict[Job, Any]:
    """Jobs an earlier compare submitted that Slurm still runs or queues: waited for, not resubmitted."""
    path = _jobs_file(spec)
    if spec.launch.slurm_cluster != "slurm" or not path.is_file():
        return {}
    recorded = json.loads(path.read_text())
    alive = {}
    for loss, seed in jobs:
        job_id = recorded.get(f"{loss}-s{seed}")
        if job_id is None or (run_dir(spec.out, loss, seed) / "run.json").is_file():
            continue
        job = submitit.SlurmJob(Path(spec.out) / "slurm" / "%j", job_id,
                                tasks=tuple(range(spec.launch.nodes_per_run)))  # fmt: skip
        if job.state.split()[0] in ALIVE:
            alive[(loss, seed)] = job
    return alive


def _finished(spec: CompareSpec, job: Job) -> dict[str, Any] | None:
    """A run with nothing left to do (trained and scored on every engine asked for)."""
    path = run_dir(spec.out, *job) / "run.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    scored = summary.get("status") != "ok" or all(
        b in summary.get("metrics", {}) for b in spec.backends
    )
    return summary if scored else None


def run_on_slurm(spec: CompareSpec, jobs: list[Job]) -> list[dict[str, Any]]:
    """Every job's run.json content in job order, once the whole array has finished.

    Finished runs are read here, not submitted; nor are runs whose job is still queued.
    """
    from pipeline.study.compare import ensure_run  # its config check on a finished run

    done = {job: ensure_run(spec, *job) for job in jobs if _finished(spec, job) is not None}
    waiting = _still_queued(spec, [job for job in jobs if job not in done])
    to_submit = [job for job in jobs if job not in waiting and job not in done]
    level = logging.getLogger().getEffectiveLevel()
    cwd = os.getcwd()
    if to_submit:
        executor = _executor(spec, len(to_submit))
        n = len(to_submit)
        losses, seeds = [loss for loss, _ in to_submit], [seed for _, seed in to_submit]
        submitted = executor.map_array(
            SlurmRun(), [spec] * n, losses, seeds, [cwd] * n, [level] * n
        )
        waiting.update(zip(to_submit, submitted, strict=True))
        recorded = json.loads(path.read_text()) if (path := _jobs_file(spec)).is_file() else {}
        recorded.update({f"{loss}-s{seed}": job.job_id for (loss, seed), job in waiting.items()})
        write_json_atomic(path, recorded)
        log.info("submitted %d runs as %s jobs %s; waiting for them (Ctrl-C leaves them "
                 "running: run this compare again to collect them)", len(to_submit),
                 spec.launch.slurm_cluster, submitted[0].job_id.split("_")[0])  # fmt: skip
    return [done[job] if job in done else unwrap(_result(waiting[job], job)) for job in jobs]


def _result(job: Any, run: Job) -> Any:
    try:
        return job.result()
    except submitit.core.utils.UncompletedJobError as exc:
        raise PipelineError(
            f"run {run[0]} seed {run[1]}: job {job.job_id} did not finish ({exc}); its log is "
            f"in {job.paths.stderr}; run the same compare again to resume it"
        ) from exc
    except submitit.core.utils.FailedJobError as exc:
        raise PipelineError(
            f"run {run[0]} seed {run[1]}: job {job.job_id} failed; its log is in {job.paths.stderr}"
        ) from exc
