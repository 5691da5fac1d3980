"""Turn a model file (.pt, .onnx, .xml, .engine) into a predictor the one evaluator can score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.engines import DEPLOYED_SUFFIXES, engine_for_file
from common.image import INPUT_FORMAT, PAD_VALUE
from deploy.backends.base import RuntimeSettings
from deploy.metadata import ModelMetadata
from deploy.runtimes import open_deployed, unsupported_file
from pipeline.errors import PipelineError

MODEL_SUFFIXES = (".pt", *DEPLOYED_SUFFIXES)


def metadata_from_checkpoint(payload: dict[str, Any]) -> ModelMetadata:
    """The metadata an exported model will carry, taken from a checkpoint dict."""
    train_config = payload.get("train_config") or {}
    return ModelMetadata(
        class_names=list(payload["class_names"]),
        category_ids=[int(c) for c in payload["category_ids"]],
        img_size=int(payload["img_size"]),
        pad_value=int(payload.get("pad_value", PAD_VALUE)),
        input_format=payload.get("input_format", INPUT_FORMAT),
        loss=str(payload.get("loss", "unknown")),
        extra={
            "backbone": payload["model_config"].get("backbone", ""),
            "detector": payload["model_config"].get("detector", "retinanet"),
            "loss_options": payload.get("loss_options", {}),
            # the training dataset, so eval and export default to it (None: the built-in one)
            "data": train_config.get("data"),
            # the split files it trained and validated on (any layout, --val-fraction's carve)
            "splits": payload.get("splits") or {},
        },
    )


def load_torch_predictor(path: Path, device: str = "cpu") -> Any:
    """A .pt checkpoint as a predictor (torch is imported here only: ONNX and engines skip it)."""
    from train.checkpoint import load_checkpoint, model_from_checkpoint
    from train.distributed import resolve_device
    from train.predict import TorchPredictor

    resolved = str(resolve_device(device))  # --device cuda without CUDA: one line, not a crash
    payload = load_checkpoint(path)
    model = model_from_checkpoint(payload, path)
    return TorchPredictor(model, metadata_from_checkpoint(payload), device=resolved)


def load_predictor(
    path: Path,
    provider: str = "auto",
    device: str = "cpu",
    cuda_api: str = "auto",
    cuda_graph: bool = False,
    openvino_hint: str = "latency",
) -> Any:
    """A .pt checkpoint through torch, any other model file through the engine table
    (deploy.runtimes); a wrong type is one clear error.

    `provider` applies to .onnx, `device` to .pt, `cuda_api` ("auto", "cuda-python", "pycuda")
    and `cuda_graph` (replay batch-1 launches from a CUDA graph) to .engine files,
    `openvino_hint` ("latency" or "throughput") to OpenVINO's .xml.
    """
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: model file not found")
    if path.suffix.lower() == ".pt":
        return load_torch_predictor(path, device)
    if engine_for_file(path.suffix) is None:
        raise PipelineError(unsupported_file(path, MODEL_SUFFIXES))
    settings = RuntimeSettings(provider, cuda_api, cuda_graph, openvino_hint)
    return open_deployed(path, settings)
