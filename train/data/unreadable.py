"""Skip images that turn out unreadable only when a training batch is loaded.

A truncated file or one whose size disagrees with the json is found when it is decoded, mid-epoch,
possibly in a DataLoader worker. Raising there would end the run (and a worker's exception reaches
the main process wrapped in a multi-line traceback), so the wrapper returns a marker instead and
the trainer decides: warn and count, or with `--strict` stop with the marker's one-line reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from common.errors import InputError


@dataclass(frozen=True)
class UnreadableImage:
    """Stands in for a sample whose image could not be decoded; `reason` names the file."""

    index: int
    reason: str


class SkipUnreadable(Dataset):
    """Wraps a dataset whose __getitem__ raises InputError for a bad image; returns a marker."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict] | UnreadableImage:
        try:
            return self.dataset[index]
        except InputError as exc:
            return UnreadableImage(index, " ".join(str(exc).split()))


def collate_skipping(
    batch: list[tuple[torch.Tensor, dict] | UnreadableImage],
) -> tuple[torch.Tensor | None, list[dict], list[UnreadableImage]]:
    """(B, 3, S, S) uint8 images of the readable samples (None if none), their targets, and the
    markers of the unreadable ones."""
    good = [item for item in batch if not isinstance(item, UnreadableImage)]
    bad = [item for item in batch if isinstance(item, UnreadableImage)]
    images = torch.stack([image for image, _ in good]) if good else None
    return images, [target for _, target in good], bad
