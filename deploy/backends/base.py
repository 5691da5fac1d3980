"""What every deployed-model runtime shares: how it is opened, and the checks of the graph's
names and of the input's shape, written once for ONNX Runtime, OpenVINO and TensorRT."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from common.contract import INPUT_NAME, OUTPUT_NAMES
from deploy.errors import DeployError
from deploy.metadata import ModelMetadata


@dataclass(frozen=True)
class RuntimeSettings:
    """How to run a model file; each backend reads the settings that apply to it."""

    provider: str = "auto"  # ONNX Runtime's execution provider: auto, cpu, cuda, tensorrt
    cuda_api: str = "auto"  # TensorRT: auto, cuda-python, pycuda
    cuda_graph: bool = False  # TensorRT: replay batch-1 launches from a captured CUDA graph
    openvino_hint: str = "latency"  # OpenVINO: latency or throughput


class EngineBackend:
    """Base of the deploy backends: `path` and `metadata` are set by the subclass's constructor."""

    path: Path
    metadata: ModelMetadata

    @classmethod
    def open(cls, path: Path, settings: RuntimeSettings) -> EngineBackend:
        """The backend for `path` with the settings that apply to this engine."""
        raise NotImplementedError

    def check_io(self, inputs: list[str], outputs: list[str]) -> None:
        """The model must expose the exporter's tensor names, or its outputs would be misread."""
        if inputs != [INPUT_NAME]:
            raise DeployError(f"{self.path}: expected one input named {INPUT_NAME!r}, got {inputs}")
        missing = [name for name in OUTPUT_NAMES if name not in outputs]
        if missing:
            raise DeployError(f"{self.path}: missing outputs {missing} (the model has {outputs})")

    def check_input(self, images: Any) -> None:
        """images must be (B, 3, S, S) at the model's input size S."""
        size = self.metadata.img_size
        if np.ndim(images) != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise DeployError(
                f"{self.path}: expected input (B, 3, {size}, {size}), got {tuple(images.shape)}"
            )
