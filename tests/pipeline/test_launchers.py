"""`compare --launcher local|ray|slurm`: the same study wherever its runs execute.

One two-run study (ce and focal, 2 epochs on 48 images of the easy colour-coded dataset, starting
from the session's detecting model with --init-from: the models detect, AP about 0.8, at a third
of the training that reached AP 0.3 from scratch) is run back to back with one thread, the
reference. Then the same study runs two processes at once here (--parallel 2), as Ray tasks on a
real local Ray cluster, and as jobs of submitit's local executor (the Slurm launcher's code path
minus sbatch): each must write the same numbers, and the parallel ones must overlap in time. In the Ray study one task's process is
killed mid-training: Ray starts it again and it resumes from last.pt, exactly (the numbers still
match the uninterrupted reference).

Every study runs in a subprocess (`python -m pipeline`), since a run sets its process's torch
thread count and a Ray driver owns its process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import PipelineError
from pipeline.study.launch_slurm import torchrun_command
from pipeline.study.launchers import launch_from_options, threads_per_run
from pipeline.study.spec import CompareSpec, LaunchSpec
from tests.detecting_model import detecting_run, write_easy_dataset
from train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]
LOSSES = ("ce", "focal")
STUDY = ["--losses", ",".join(LOSSES), "--seeds", "1", "--resamples", "20", "--img-size", "72",
         "--epochs", "2", "--batch-size", "8", "--lr", "0.001", "--warmup-iters", "10",
         "--fpn-channels", "32", "--head-convs", "1", "--workers", "0", "--device", "cpu",
         "--threads", "1"]  # fmt: skip


@dataclass(frozen=True)
class Study:
    """The launcher studies' data and the detector their runs start from."""

    data: Path
    init_from: Path


def compare(study: Study, out: Path, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "pipeline", "compare", "--out", str(out), "--data",
               str(study.data), "--init-from", str(study.init_from), *STUDY, *extra]  # fmt: skip
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)  # fmt: skip


def finish(process: subprocess.Popen, timeout: float = 600) -> str:
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-3000:]
    return output


def numbers(out: Path) -> dict[str, Any]:
    """What the report says about the losses, without the timings (wall clock differs)."""
    report = json.loads((out / "report.json").read_text())
    metrics = {
        loss: {
            engine: row["metrics"] for engine, row in report["per_loss"][loss]["engines"].items()
        }
        for loss in LOSSES
    }
    return {"metrics": metrics, "effects": report["effects"], "pr_curves": report["pr_curves"]}


def span(out: Path, loss: str) -> tuple[float, float]:
    """When a run's (last) process started, and when its run.json was written."""
    started = json.loads((out / "launcher" / f"{loss}-s0.json").read_text())["started"]
    return started, (out / "runs" / f"{loss}-s0" / "run.json").stat().st_mtime


def assert_overlap(out: Path) -> None:
    (start_a, end_a), (start_b, end_b) = span(out, "ce"), span(out, "focal")
    assert start_a < end_b and start_b < end_a, "the two runs ran one after the other"


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Study:
    data = write_easy_dataset(tmp_path_factory.mktemp("launchers") / "easy", num_train=48)
    return Study(data, detecting_run(tmp_path_factory).weights)


@pytest.fixture(scope="module")
def back_to_back(study, tmp_path_factory) -> Path:
    """The reference: the local launcher, one run at a time."""
    out = tmp_path_factory.mktemp("launchers") / "local"
    finish(compare(study, out))
    report = json.loads((out / "report.json").read_text())
    assert report["did_not_learn"] == []  # the comparison below is between models that detect
    for loss in LOSSES:
        assert report["per_loss"][loss]["engines"]["onnx"]["metrics"]["AP"]["mean"] > 0.5
    return out


@pytest.mark.slow
def test_two_local_processes_write_the_same_report_at_the_same_time(study, back_to_back, tmp_path):
    out = tmp_path / "parallel"
    finish(compare(study, out, "--parallel", "2"))
    assert numbers(out) == numbers(back_to_back)
    assert_overlap(out)
    pids = {
        json.loads((out / "launcher" / f"{loss}-s0.json").read_text())["pid"] for loss in LOSSES
    }
    assert len(pids) == 2


@pytest.mark.slow
def test_ray_tasks_overlap_and_a_killed_task_resumes_exactly(study, back_to_back, tmp_path):
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    process = compare(study, out, "--launcher", "ray", "--parallel", "2")
    record, last = out / "launcher" / "focal-s0.json", out / "runs" / "focal-s0" / "last.pt"
    deadline = time.monotonic() + 300
    while not (record.is_file() and last.is_file()):  # focal's first epoch is done
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "focal's first epoch never finished"
        time.sleep(0.1)
    os.kill(json.loads(record.read_text())["pid"], signal.SIGKILL)
    finish(process)
    assert json.loads(record.read_text())["attempt"] == 2  # Ray started it again
    assert json.loads((out / "launcher" / "ce-s0.json").read_text())["attempt"] == 1
    assert numbers(out) == numbers(back_to_back)  # resumed exactly from last.pt
    assert_overlap(out)


@pytest.mark.slow
def test_submitit_local_executor_runs_the_study_end_to_end(study, back_to_back, tmp_path):
    pytest.importorskip("submitit")
    out = tmp_path / "slurm"
    finish(compare(study, out, "--launcher", "slurm", "--slurm-cluster", "local"))
    assert numbers(out) == numbers(back_to_back)
    jobs = json.loads((out / "slurm" / "jobs.json").read_text())
    assert sorted(jobs) == ["ce-s0", "focal-s0"] and len(set(jobs.values())) == 2
    for job_id in jobs.values():  # each run was a job of its own, with its own log
        assert list((out / "slurm" / job_id).glob("*_log.out"))


def test_options_of_another_launcher_are_refused():
    with pytest.raises(PipelineError, match="--ray-address: not an option of --launcher slurm"):
        launch_from_options({"launcher": "slurm", "ray_address": "host:6379"})
    with pytest.raises(PipelineError, match="--retries, --nodes-per-run: .* --launcher local"):
        launch_from_options({"launcher": "local", "retries": 3, "nodes_per_run": 2})
    launch = launch_from_options({"launcher": "slurm", "slurm_time": 30, "nodes_per_run": 2})
    assert (launch.slurm_time_min, launch.nodes_per_run, launch.retries) == (30, 2, 2)


def spec_with(launch: LaunchSpec, threads: int | None = None, out: Path = Path("o")) -> CompareSpec:
    base = TrainConfig(out=out, threads=threads)
    return CompareSpec(out, ["ce"], [0], ["onnx"], "ce", 10, base, launch=launch)


@pytest.mark.parametrize(
    ("launch", "threads", "expected"),
    [
        (LaunchSpec(), None, None),  # back to back: torch's own choice, as before
        (LaunchSpec(parallel=2), None, 4),  # 8 cores shared by 2 runs
        (LaunchSpec(parallel=3), None, 2),
        (LaunchSpec(parallel=16), None, 1),
        (LaunchSpec(parallel=2), 3, 3),  # --threads given wins
        (LaunchSpec("ray", parallel=4), None, 2),  # a Ray cluster started here
        (LaunchSpec("ray", ray_address="head:6379"), None, 1),  # another cluster: declared 1
        (LaunchSpec("slurm"), None, 1),
    ],
)
def test_threads_per_run_shares_this_machines_cores(launch, threads, expected):
    assert threads_per_run(spec_with(launch, threads), cpus=8).base.threads == expected


def test_each_node_of_a_multi_node_run_starts_torchrun_against_the_first_host():
    command = torchrun_command(Path("/s/.ce-s0.config.json"), 2, 1, ["gpu07", "gpu08"], 8, "123_4")
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    options = dict(a.split("=", 1) for a in command[3:8])
    assert options == {"--nnodes": "2", "--node-rank": "1", "--nproc-per-node": "8",
                       "--master-addr": "gpu07", "--master-port": options["--master-port"]}  # fmt: skip
    assert command[8:] == ["-m", "pipeline.study.node_train", "/s/.ce-s0.config.json"]
    port = int(options["--master-port"])
    assert 20000 <= port < 40000
    # every node of one job agrees on the port; another job (another array task) gets another
    assert torchrun_command(Path("x"), 2, 0, ["gpu07"], 8, "123_4")[7] == f"--master-port={port}"
    assert torchrun_command(Path("x"), 2, 0, ["gpu07"], 8, "123_5")[7] != f"--master-port={port}"


def test_missing_engines_are_one_line_each(monkeypatch, tmp_path):
    from pipeline.study import launch_ray, launchers

    spec = spec_with(LaunchSpec("ray"), out=tmp_path)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails as if not installed
    with pytest.raises(PipelineError, match=r"^--launcher ray: Ray is not installed: pip"):
        launch_ray.run_on_ray(spec, [("ce", 0)])
    monkeypatch.setitem(sys.modules, "submitit", None)
    monkeypatch.delitem(sys.modules, "pipeline.study.launch_slurm")
    with pytest.raises(PipelineError, match=r"^--launcher slurm: submitit is not installed"):
        launchers.launch_runs(spec_with(LaunchSpec("slurm"), out=tmp_path), [("ce", 0)])


def test_slurm_without_sbatch_says_where_to_run(monkeypatch, tmp_path):
    from pipeline.study import launch_slurm

    monkeypatch.setattr(launch_slurm.shutil, "which", lambda name: None)
    spec = spec_with(LaunchSpec("slurm"), out=tmp_path)
    with pytest.raises(PipelineError, match="sbatch is not on this machine's PATH.*login node"):
        launch_slurm.run_on_slurm(spec, [("ce", 0)])
    assert not (tmp_path / "slurm").exists()


class FakeJob:
    """A submitit job handle: an id, a Slurm state, and the run.json content as its result."""

    def __init__(self, job_id: str, state: str = "RUNNING", result: Any = None) -> None:
        self.job_id, self.state, self._result = job_id, state, result

    def result(self) -> Any:
        return self._result


def test_a_second_compare_waits_for_queued_jobs_instead_of_submitting_them_again(
    monkeypatch, tmp_path
):
    from pipeline.study import launch_slurm

    spec = CompareSpec(tmp_path, ["ce", "focal", "ghm"], [0], ["onnx"], "ce", 10,
                       TrainConfig(out=tmp_path, threads=1), launch=LaunchSpec("slurm"))  # fmt: skip
    (tmp_path / "slurm").mkdir()
    # An earlier compare submitted all three; ce is still running, focal's job was cancelled
    # while pending, ghm's finished (its run.json exists).
    jobs = {"ce-s0": "100_0", "focal-s0": "100_1", "ghm-s0": "100_2"}
    (tmp_path / "slurm" / "jobs.json").write_text(json.dumps(jobs))
    finished = {"loss": "ghm", "seed": 0, "status": "ok", "metrics": {"onnx": {}},
                "train_config": spec.run_config("ghm", 0).to_dict()}  # fmt: skip
    (tmp_path / "runs" / "ghm-s0").mkdir(parents=True)
    (tmp_path / "runs" / "ghm-s0" / "run.json").write_text(json.dumps(finished))
    states = {"100_0": "RUNNING", "100_1": "CANCELLED by 0", "100_2": "COMPLETED"}
    monkeypatch.setattr(launch_slurm.submitit, "SlurmJob",
                        lambda folder, job_id, tasks: FakeJob(job_id, states[job_id],
                                                              {"loss": "ce"}))  # fmt: skip
    submitted = []

    class Executor:
        def map_array(self, fn, specs, losses, seeds, cwds, levels):
            submitted.extend(zip(losses, seeds, strict=True))
            return [FakeJob(f"200_{i}", result={"loss": loss}) for i, loss in enumerate(losses)]

    monkeypatch.setattr(launch_slurm, "_executor", lambda spec, count: Executor())
    runs = launch_slurm.run_on_slurm(spec, [("ce", 0), ("focal", 0), ("ghm", 0)])
    assert submitted == [("focal", 0)]  # ce is waited for, ghm read from its run.json
    assert [r["loss"] for r in runs] == ["ce", "focal", "ghm"]
    recorded = json.loads((tmp_path / "slurm" / "jobs.json").read_text())
    assert recorded == {"ce-s0": "100_0", "focal-s0": "200_0", "ghm-s0": "100_2"}
