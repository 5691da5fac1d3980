"""torch.distributed glue: one process per device, started by torchrun or `--nproc-per-node`.

The launcher (torch.distributed.run or its elastic API) sets RANK, LOCAL_RANK and WORLD_SIZE;
`init_distributed` reads them and joins the process group (NCCL on CUDA, gloo on CPU). Without
them everything here degrades to the single-process case, so the trainer has one code path.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from common.errors import InputError

log = logging.getLogger(__name__)
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
TIMEOUT = datetime.timedelta(minutes=30)  # long validations on rank 0 must not trip the others


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among `world_size`, and the device it drives."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # this process created the group, so it tears it down

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    """True inside a process started by torchrun / torch.distributed.run with > 1 worker."""
    return all(k in os.environ for k in LAUNCH_ENV) and int(os.environ["WORLD_SIZE"]) > 1


def is_main_process() -> bool:
    """False only in a torchrun worker of rank > 0 (which must not print results or export)."""
    return int(os.environ.get("RANK", "0")) == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """`auto`/`cpu`/`cuda` -> this rank's device (cuda:LOCAL_RANK when on GPUs)."""
    if name not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device {name!r}: expected auto, cpu or cuda")
    use_cuda = name == "cuda" or (name == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available on this machine")
    if local_rank >= torch.cuda.device_count():
        raise InputError(
            f"local rank {local_rank} needs GPU {local_rank}, but this machine has "
            f"{torch.cuda.device_count()}; lower --nproc-per-node"
        )
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device_name: str) -> DistContext:
    """Join the process group the launcher describes (idempotent); a 1-process context otherwise."""
    if dist.is_available() and dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        return DistContext(
            dist.get_rank(),
            local_rank,
            dist.get_world_size(),
            resolve_device(device_name, local_rank),
        )
    if not launched_by_torchrun():
        return DistContext(device=resolve_device(device_name, 0))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    device = resolve_device(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend, timeout=TIMEOUT, **kwargs)
    log.debug("rank %d/%d joined the %s group on %s", rank, world_size, backend, device)
    return DistContext(rank, local_rank, world_size, device, owns_group=True)


def shutdown_distributed(context: DistContext) -> None:
    """Leave the process group if `init_distributed` created it."""
    if context.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def current_rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the running group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_ranks_true(flag: torch.Tensor) -> bool:
    """True when `flag` (a 0-d bool tensor) holds on every rank; one all-reduce when distributed.

    The trainer skips a step on a non-finite loss; all ranks must skip together or DDP's
    gradient all-reduce would wait forever for the rank that skipped.
    """
    value = flag.to(torch.float32).reshape(1)
    if dist.is_available() and dist.is_initialized():
        device = torch.device("cuda", torch.cuda.current_device()) if _nccl() else "cpu"
        value = value.to(device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item() > 0)


def _nccl() -> bool:
    """NCCL reduces only CUDA tensors; gloo takes CPU ones."""
    return dist.get_backend() == "nccl"


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's `obj` (picklable), in rank order; [obj] when not distributed."""
    _, world = current_rank_and_world()
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank `src`'s `obj` on every rank; `obj` itself when not distributed."""
    _, world = current_rank_and_world()
    if world == 1:
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
