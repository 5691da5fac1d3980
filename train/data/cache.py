"""Decoded-image cache for small datasets: decode and letterbox every image once, up front.

PNG/JPEG decoding and resizing cost more than a tiny model's step on a few CPU cores. The cache
is one (N, S, S, 3) uint8 array filled in the main process before the DataLoader forks its
workers, so the workers share its pages instead of each decoding (and caching) its own copy.
Random augmentation (the flip) still runs per sample, after the cache.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from common.errors import InputError
from train.data.coco import CocoDetection, _ImageEntry

log = logging.getLogger(__name__)


class CachedCocoDetection(CocoDetection):
    """CocoDetection whose letterboxed images come from memory after `fill_cache()`.

    An image that cannot be read is remembered with its error, which `_load` raises again each
    time, so skipping / --strict behave exactly as without the cache.
    """

    def fill_cache(self, threads: int = 4) -> None:
        """Decode every image (in threads: PIL releases the GIL while decoding)."""
        size = self.img_size
        self._canvases = np.empty((len(self._entries), size, size, 3), dtype=np.uint8)
        self._scales = np.zeros(len(self._entries), dtype=np.float64)
        self._errors: dict[int, InputError] = {}
        self._row = {entry.image_id: row for row, entry in enumerate(self._entries)}
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for row, outcome in enumerate(pool.map(self._decode, self._entries)):
                if isinstance(outcome, InputError):
                    self._errors[row] = outcome
                else:
                    self._canvases[row], self._scales[row] = outcome
        log.info(
            "%s: cached %d decoded images (%.0f MB)",
            Path(self.img_dir),
            len(self._entries) - len(self._errors),
            self._canvases.nbytes / 2**20,
        )

    def _decode(self, entry: _ImageEntry) -> tuple[np.ndarray, float] | InputError:
        try:
            return super()._load(entry)
        except InputError as exc:
            return exc

    def _load(self, entry: _ImageEntry) -> tuple[np.ndarray, float]:
        row = getattr(self, "_row", {}).get(entry.image_id)
        if row is None:  # cache not filled
            return super()._load(entry)
        if row in self._errors:
            raise self._errors[row]
        return self._canvases[row], float(self._scales[row])
