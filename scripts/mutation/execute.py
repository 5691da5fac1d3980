"""Run mutants: each in its worker's private copy of the tree, each in a new pytest process.

A fresh interpreter per mutant (no fork) is the point: forking a process that already holds
torch's thread pool is what made mutmut hang here.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mutation.operators import Mutant, apply_mutant
from mutation.workspace import child_environment

RUNNER_HOME = Path(__file__).resolve().parent.parent  # the folder holding `mutation` (plugins)
_FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - |$)", re.MULTILINE)  # ids may hold spaces


@dataclass(frozen=True)
class Outcome:
    status: str  # killed | timeout | survived | error
    seconds: float
    killed_by: str = ""
    detail: str = ""


@dataclass(frozen=True)
class Job:
    mutant: Mutant
    tests: tuple[str, ...]
    timeout: float
    # Node ids without their [parameters], for a mutant that renames the parametrized cases
    # (tests parametrized with values from the mutated module): every case of those functions.
    broad_tests: tuple[str, ...] = ()
    broad_timeout: float = 0.0


def without_parameters(tests: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(test.split("[", 1)[0] for test in tests))


def _ids_not_found(outcome: Outcome) -> bool:
    return outcome.status == "error" and (
        "not found:" in outcome.detail or "found no collectors" in outcome.detail
    )


def outcome_of(returncode: int, output: str, seconds: float) -> Outcome:
    """pytest's exit status -> outcome. 1 failed, 2 collection/import error, <0 crash: killed."""
    if returncode == 0:
        return Outcome("survived", seconds)
    # rc 4 after "ERROR collecting": the mutant broke an import; with -x pytest then reports the
    # remaining node ids as not found, which is a usage error (4) rather than 2.
    broke_collection = returncode == 4 and "ERROR collecting" in output
    if returncode in (1, 2, 3) or returncode < 0 or broke_collection:
        match = _FAILED_LINE.search(output)
        return Outcome("killed", seconds, killed_by=match.group(1) if match else f"rc {returncode}")
    last_lines = [line for line in output.splitlines() if line.strip()][-3:]
    return Outcome("error", seconds, detail=f"pytest rc {returncode}: " + " | ".join(last_lines))


class _LiveProcesses:
    """Process groups started here, so an interrupt can end exactly those."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pids: set[int] = set()

    def add(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)

    def discard(self, pid: int) -> None:
        with self._lock:
            self._pids.discard(pid)

    def kill_all(self) -> None:
        with self._lock:
            for pid in self._pids:
                _kill_group(pid)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def run_pytest(
    workspace: Path, tests: Iterable[str], timeout: float, live: _LiveProcesses | None = None
) -> Outcome:
    """`python -m pytest -x` on `tests` inside `workspace`, killed (with its children) on timeout."""
    command = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
    command += ["-p", "mutation.child_plugin", *tests]
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=workspace,
        env=child_environment(workspace, extra_path=RUNNER_HOME),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: a timeout kills torchrun children too
    )
    if live:
        live.add(process.pid)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(process.pid)  # still unreaped, so the group id cannot belong to anyone else
        process.communicate()
        return Outcome("timeout", time.monotonic() - started)
    finally:
        if live:
            live.discard(process.pid)
    return outcome_of(process.returncode, output, time.monotonic() - started)


def run_jobs(
    jobs: list[Job],
    workspaces: list[Path],
    sources: dict[str, str],
    on_done: Callable[[Job, Outcome], None],
) -> None:
    """Run `jobs` on as many threads as workspaces; each thread owns one workspace at a time."""
    free: queue.Queue[Path] = queue.Queue()
    for workspace in workspaces:
        free.put(workspace)
    live = _LiveProcesses()
    done_lock = threading.Lock()

    def run_one(job: Job) -> None:
        workspace = free.get()
        try:
            outcome = _run_in(workspace, job, sources[job.mutant.path], live)
        finally:
            free.put(workspace)
        with done_lock:
            on_done(job, outcome)

    pool = ThreadPoolExecutor(max_workers=len(workspaces))
    try:
        for future in [pool.submit(run_one, job) for job in jobs]:
            future.result()
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        live.kill_all()
        raise
    pool.shutdown(wait=True)


def _run_in(workspace: Path, job: Job, source: str, live: _LiveProcesses) -> Outcome:
    target = workspace / job.mutant.path
    target.write_bytes(apply_mutant(source, job.mutant).encode())
    try:
        outcome = run_pytest(workspace, job.tests, job.timeout, live)
        if _ids_not_found(outcome) and job.broad_tests:
            outcome = run_pytest(workspace, job.broad_tests, job.broad_timeout, live)
        return outcome
    finally:
        target.write_bytes(source.encode())
