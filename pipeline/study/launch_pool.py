"""`compare --parallel N`: N runs at once on this machine, each in a process of its own.

Processes, not threads: each run sets its own torch thread count (cores / N) and its own RNG,
and a run that crashes takes only its process down. Spawned, not forked, so no worker inherits
the driver's torch state.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from typing import Any

from pipeline.errors import PipelineError
from pipeline.launch import WorkerError
from pipeline.study.launchers import Job, run_in_worker, unwrap
from pipeline.study.spec import CompareSpec

log = logging.getLogger(__name__)


@contextmanager
def _omp_threads(threads: int | None) -> Iterator[None]:
    """OMP_NUM_THREADS for the workers started meanwhile (they read it when torch loads)."""
    saved = os.environ.get("OMP_NUM_THREADS")
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved


def run_in_pool(spec: CompareSpec, jobs: list[Job]) -> list[dict[str, Any]]:
    """Every job's run.json content in job order; the first user error stops the study."""
    parallel = spec.launch.parallel or 1
    log.info(
        "%d runs, %d at once, %s threads each", len(jobs), parallel, spec.base.threads or "torch's"
    )
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    cwd = os.getcwd()
    with _omp_threads(spec.base.threads), ProcessPoolExecutor(parallel, mp_context=context) as pool:
        futures: list[Future] = [
            pool.submit(run_in_worker, spec, loss, seed, cwd, level) for loss, seed in jobs
        ]
        try:
            return _collect(futures, jobs)
        except BaseException:
            for future in futures:
                future.cancel()  # runs not started yet; the ones running finish (they resume)
            raise


def _collect(futures: list[Future], jobs: list[Job]) -> list[dict[str, Any]]:
    pending, finished = set(futures), 0
    while pending:
        done, pending = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            loss, seed = jobs[futures.index(future)]
            try:
                result = future.result()
            except BrokenProcessPool as exc:
                raise PipelineError(
                    f"the process of run {loss} seed {seed} died (killed, or out of memory); "
                    "run the same compare again: finished runs are reused, unfinished ones resume"
                ) from exc
            if isinstance(result, WorkerError):
                result.reraise()
            finished += 1
            log.info("%s seed %d done (%d of %d)", loss, seed, finished, len(futures))
    return [unwrap(f.result()) for f in futures]
