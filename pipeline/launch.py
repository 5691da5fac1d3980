"""`pipeline train --nproc-per-node N`: start N training processes through torch's elastic launcher.

The same launcher `torchrun --standalone` uses (c10d rendezvous on a free local port), called
with a function instead of a script, so the workers get the already-resolved TrainConfig and
rank 0's TrainResult comes back to this process. User errors raised in a worker (bad data, a run
folder that exists) travel back as values and are raised here again, so the CLI still prints
one line and exits 2. For several machines use torchrun itself (README, "Distributed training").
"""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Callable
from typing import Any

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

from common.errors import UserError
from pipeline.errors import PipelineError

log = logging.getLogger(__name__)


class WorkerError:
    """A user error raised in a worker, carried back to the launching process."""

    def __init__(self, exc: BaseException) -> None:
        self.type, self.message = type(exc), str(exc)

    def reraise(self) -> None:
        try:
            error = self.type(self.message)
        except TypeError:  # a constructor with another signature: the message is what counts
            error = PipelineError(self.message)
        raise error


def catch_user_errors(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args), or a WorkerError in place of one of our user-facing exceptions."""
    try:
        return fn(*args)
    except UserError as exc:
        return WorkerError(exc)


def _threads_per_process(nproc: int) -> str:
    """OMP_NUM_THREADS for each worker: the CPU cores shared out (torchrun would say 1)."""
    return os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // nproc))


def launch_local(nproc: int, worker: Callable[..., Any], *args: Any) -> Any:
    """Run worker(*args) in `nproc` processes on this machine; returns rank 0's result."""
    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"pipeline-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.5,
        start_method="spawn",
    )
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = _threads_per_process(nproc)
    log.info("launching %d training processes", nproc)
    try:
        results = elastic_launch(config, worker)(*args)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        raise PipelineError(
            f"training process {rank} failed (exit code {failure.exitcode}): "
            f"{' '.join(str(failure.message).split())[:500]}"
        ) from exc
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    errors = [r for _, r in sorted(results.items()) if isinstance(r, WorkerError)]
    if errors:
        errors[0].reraise()
    return results[0]
