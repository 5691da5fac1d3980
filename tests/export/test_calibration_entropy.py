"""export/entropy.py: the entropy calibrator's threshold search gives ONNX Runtime's answer.

The oracle is ONNX Runtime's own HistogramCollector (its loop-by-loop search), fed the same
activations; the thresholds must be equal to the bit. The activations are shaped like a
network's: a ReLU output (no negatives, a long tail), a pre-activation with a few far outliers,
a near-constant tensor, and one collected over two batches whose second widens the range (so
the collector merges histograms and the bin count is no longer the one asked for).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest

from export.entropy import entropy_threshold

QUANTIZED_BINS = 128


def _activations() -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(7)
    relu = np.maximum(rng.normal(0.3, 1.0, 20000), 0).astype(np.float32) ** 2
    outliers = rng.normal(0.0, 0.5, 20000).astype(np.float32)
    outliers[:5] = [40.0, -35.0, 28.0, 22.0, -19.0]
    nearly_constant = (np.full(5000, 1.5) + rng.normal(0, 1e-3, 5000)).astype(np.float32)
    first = rng.laplace(0.0, 1.0, 8000).astype(np.float32)
    wider = rng.laplace(0.0, 3.0, 8000).astype(np.float32)
    return {"relu": [relu], "outliers": [outliers], "constant": [nearly_constant],
            "merged": [first, wider]}  # fmt: skip


def _collector(num_bins: int):
    from onnxruntime.quantization.calibrate import HistogramCollector

    collector = HistogramCollector("entropy", False, num_bins, QUANTIZED_BINS, 99.999, "same")
    with contextlib.redirect_stdout(io.StringIO()):
        for name, batches in _activations().items():
            for batch in batches:
                collector.collect({name: batch})
    return collector


@pytest.mark.parametrize("num_bins", [2048, 513])
def test_the_vectorized_search_is_onnxruntimes_search(num_bins: int) -> None:
    collector = _collector(num_bins)
    assert collector.histogram_dict["merged"][0].size > num_bins  # the merge really happened
    for name, histogram in collector.histogram_dict.items():
        expected = collector.get_entropy_threshold(histogram, QUANTIZED_BINS)
        found = entropy_threshold(histogram, QUANTIZED_BINS)
        assert (float(found[0]), float(found[1])) == (float(expected[0]), float(expected[1])), name
        assert found[0].dtype == expected[0].dtype and found[1].dtype == expected[1].dtype


def test_the_outliers_are_clipped_and_a_narrow_tensor_keeps_its_values() -> None:
    """What the search is for: the window leaves the 5 far outliers out, and never reaches
    past the values seen."""
    collector = _collector(2048)
    low, high = entropy_threshold(collector.histogram_dict["outliers"], QUANTIZED_BINS)
    assert -19.0 < low < -1.0 and 1.0 < high < 22.0
    constant = collector.histogram_dict["constant"]
    low, high = entropy_threshold(constant, QUANTIZED_BINS)
    assert low >= constant[2] and high <= constant[3]
