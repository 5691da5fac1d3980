"""The pieces distributed training and exact resume rest on, checked without training."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from train.data.cache import CachedCocoDetection
from train.data.coco import CocoDetection
from train.data.loader import EpochSampler, SeededSamples
from train.data.synthetic import generate_synthetic_dataset
from train.ema import RAMP_STEPS, ModelEma
from train.resume import capture_rng_state, restore_rng_state


def _batches(size: int, batch: int, rank: int, world: int, epoch: int) -> list[list[int]]:
    sampler = EpochSampler(size, rank, world, seed=3)
    sampler.set_epoch(epoch)
    keys = list(sampler)
    assert all(e == epoch for e, _ in keys)
    indices = [i for _, i in keys]
    return [indices[i : i + batch] for i in range(0, len(indices), batch)]


def test_two_ranks_see_the_images_of_the_one_process_batches() -> None:
    single = _batches(12, 4, 0, 1, epoch=2)
    ranks = [_batches(12, 2, r, 2, epoch=2) for r in range(2)]
    for step, batch in enumerate(single):
        assert sorted(batch) == sorted(ranks[0][step] + ranks[1][step])
    assert single != _batches(12, 4, 0, 1, epoch=3)  # reshuffled every epoch


class _Noise:
    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int) -> torch.Tensor:
        return torch.rand(3)


def test_augmentation_depends_on_seed_epoch_and_index_only() -> None:
    samples = SeededSamples(_Noise(), seed=7)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    first = samples[(1, 4)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched
    samples[(1, 2)]
    assert torch.equal(samples[(1, 4)], first)
    assert not torch.equal(samples[(2, 4)], first)
    assert not torch.equal(SeededSamples(_Noise(), seed=8)[(1, 4)], first)


def test_cached_images_equal_decoded_ones(tmp_path: Path) -> None:
    root = generate_synthetic_dataset(tmp_path / "data", num_train=3, num_val=1)
    args = (root / "annotations" / "instances_train.json", root / "train", 64)
    plain, cached = CocoDetection(*args), CachedCocoDetection(*args)
    cached.fill_cache(threads=2)
    for index in range(len(plain)):
        (image, target), (cached_image, cached_target) = plain[index], cached[index]
        assert torch.equal(image, cached_image)
        assert torch.equal(target["boxes"], cached_target["boxes"])


def test_ema_follows_the_weights_with_a_ramped_decay() -> None:
    model = nn.Linear(2, 1)
    nn.init.zeros_(model.weight)
    ema = ModelEma(model, decay=0.5)
    nn.init.ones_(model.weight)
    ema.update(model)
    decay = 0.5 * (1 - math.exp(-1 / RAMP_STEPS))
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 1 - decay))
    restored = ModelEma(model, decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert restored.updates == 1 and torch.equal(restored.module.weight, ema.module.weight)


def test_rng_states_survive_a_weights_only_checkpoint(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), np.random.rand(), torch.rand(1))
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(1), expected[2])
