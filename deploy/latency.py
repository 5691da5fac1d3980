"""Per-stage wall-clock timing and the percentile summary every report uses.

Times come from time.perf_counter around calls that return host numpy arrays, so GPU work is
finished (synchronized) by the time a stage's clock stops; a backend that returned device buffers
would have to synchronize inside its __call__.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

STAGES = ("preprocess_ms", "inference_ms", "postprocess_ms", "total_ms")


def summarize_latency(samples_ms: list[float]) -> dict[str, float]:
    """mean, p50, p90, p99 (numpy's default linear-interpolated percentiles) of samples in ms."""
    if len(samples_ms) == 0:
        raise ValueError("summarize_latency needs at least one sample")
    values = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99)}


class StageTimer:
    """Collects per-image milliseconds for each stage of each timed batch.

    A batch of B images that took t ms in a stage contributes one sample t / B (B = the real
    images in it), so batch sizes compare as per-image cost. `total_ms` is the sum of the stages.
    """

    def __init__(self) -> None:
        self.samples_ms: dict[str, list[float]] = {stage: [] for stage in STAGES}
        self.images = 0
        self.seconds = 0.0
        self._batch_ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time one stage of the current batch: `with timer.stage("inference_ms"): ...`."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self._batch_ms[name] = (time.perf_counter() - start) * 1000.0

    def end_batch(self, num_images: int) -> None:
        """Record the stages timed since the last end_batch as one per-image sample each."""
        batch_total = sum(self._batch_ms.get(s, 0.0) for s in STAGES[:-1])
        for name in STAGES[:-1]:
            self.samples_ms[name].append(self._batch_ms.get(name, 0.0) / num_images)
        self.samples_ms["total_ms"].append(batch_total / num_images)
        self.images += num_images
        self.seconds += batch_total / 1000.0
        self._batch_ms = {}

    def discard_batch(self) -> None:
        """Forget the stages timed since the last end_batch (a warm-up batch)."""
        self._batch_ms = {}

    def summary(self) -> dict[str, dict[str, float]]:
        """{stage: summarize_latency(samples)} for every stage."""
        return {name: summarize_latency(samples) for name, samples in self.samples_ms.items()}

    def throughput_ips(self) -> float:
        """Images per second over the timed stages (file reading and decoding excluded)."""
        return self.images / self.seconds if self.seconds > 0 else 0.0
