"""TensorRT 10's implicit INT8 route: an entropy calibrator fed by dataset images.

TensorRT 11 removed implicit quantization (export/tensorrt.py builds Q/DQ models there instead);
on 10 this is the builder-flag path. Device memory for the batches comes from torch, which the
export side may import.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from common.contract import INPUT_NAME
from common.errors import InputError

CALIBRATION_BATCH = 1  # any image count works, and the calibration profile stays fixed


def _batches(images: Iterable[np.ndarray], batch: int) -> Iterator[np.ndarray]:
    """Full (batch, 3, S, S) batches (a short last batch is dropped: the profile is fixed)."""
    group: list[np.ndarray] = []
    for image in images:
        group.append(image)
        if len(group) == batch:
            yield np.ascontiguousarray(np.stack(group), dtype=np.float32)
            group = []


# --calibration -> TensorRT 10's calibrator class (it has no percentile calibrator).
TRT_CALIBRATORS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


def make_calibrator(
    trt: Any, images: Iterable[np.ndarray], batch: int, method: str = "entropy"
) -> Any:
    """A TensorRT 10 calibrator of `method` over dataset images (device buffer from torch)."""
    import torch

    if method not in TRT_CALIBRATORS:
        raise InputError(
            f"--calibration {method}: TensorRT 10's calibrators are "
            f"{', '.join(TRT_CALIBRATORS)} (percentile: export --precision int8 without --trt, "
            "or TensorRT 11, which builds from the Q/DQ model)"
        )
    base = getattr(trt, TRT_CALIBRATORS[method])

    class _Calibrator(base):
        def __init__(self) -> None:
            base.__init__(self)
            self.batches = _batches(images, batch)
            self.device: torch.Tensor | None = None
            self.count = 0

        def get_batch_size(self) -> int:
            return batch

        def get_batch(self, names: list[str]) -> list[int] | None:
            array = next(self.batches, None)
            if array is None:
                return None
            self.device = torch.from_numpy(array).cuda()
            self.count += len(array)
            return [int(self.device.data_ptr())]

        def read_calibration_cache(self) -> None:
            return None  # always calibrate: a stale cache would silently apply old ranges

        def write_calibration_cache(self, cache: Any) -> None:
            return None

    return _Calibrator()


def attach_calibrator(
    trt: Any,
    builder: Any,
    network: Any,
    config: Any,
    images: Iterable[np.ndarray] | None,
    method: str | None = None,
) -> Any:
    """TensorRT 10 implicit INT8: a calibrator (entropy unless asked) plus a fixed-shape
    calibration profile."""
    if images is None:
        raise InputError("--precision int8: calibration images are needed (--data/--calib-images)")
    calibrator = make_calibrator(trt, images, CALIBRATION_BATCH, method or "entropy")
    config.int8_calibrator = calibrator
    shape = (CALIBRATION_BATCH, *tuple(network.get_input(0).shape)[1:])
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, shape, shape, shape)
    config.set_calibration_profile(profile)
    return calibrator
