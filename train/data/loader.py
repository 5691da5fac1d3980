"""The training DataLoader: a data order and augmentation that depend on (seed, epoch) only.

Two properties follow, and the trainer relies on both:
- exact resume: epoch e after a restart sees the same batches, flipped the same way, as epoch e
  of an uninterrupted run, whatever RNG state the process had;
- rank invariance: N ranks with a per-rank batch of B/N see, step by step, the same images (and
  flips) as one process with batch B, because every rank shards one DistributedSampler
  permutation and a sample's augmentation is seeded by its own index, not by a worker's stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, Sampler

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9)  # odd 64-bit constants (splitmix64)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A distinct 63-bit seed per (run seed, epoch, dataset index)."""
    return (seed * _MIX[0] + epoch * _MIX[1] + index) % (2**63)


class EpochSampler(Sampler[tuple[int, int]]):
    """This rank's share of DistributedSampler's (seed + epoch)-seeded permutation.

    Yields (epoch, index) keys, so the dataset wrapper below can seed augmentation per sample
    even inside persistent DataLoader workers that never see `set_epoch`.
    """

    def __init__(self, size: int, rank: int, world_size: int, seed: int) -> None:
        self.inner = DistributedSampler(
            range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed
        )

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.inner.epoch
        return ((epoch, index) for index in self.inner)

    def __len__(self) -> int:
        return len(self.inner)


class SeededSamples(Dataset):
    """dataset[(epoch, index)] drawn with torch's RNG seeded from (seed, epoch, index).

    The caller's RNG is left as it was (fork_rng), so loading data never shifts the random
    stream the losses (random sampling) or anything else draw from.
    """

    def __init__(self, dataset: Any, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(self.seed, epoch, index))
            return self.dataset[index]


def build_train_loader(
    dataset: Sized,
    batch_size: int,
    context: tuple[int, int],
    seed: int,
    workers: int,
    collate_fn: Callable,
    pin_memory: bool,
) -> tuple[DataLoader, EpochSampler]:
    """The loader and its sampler (call `sampler.set_epoch(e)` before each epoch).

    `batch_size` is per rank; `context` is (rank, world size). The last short batch is dropped
    when the rank has more than one batch, as before distributed training existed.
    """
    rank, world_size = context
    sampler = EpochSampler(len(dataset), rank, world_size, seed)
    batches = BatchSampler(sampler, batch_size, drop_last=len(sampler) > batch_size)
    loader = DataLoader(
        SeededSamples(dataset, seed),
        batch_sampler=batches,
        num_workers=workers,
        collate_fn=collate_fn,
        persistent_workers=workers > 0,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers > 0 else None,
    )
    return loader, sampler
