"""Turn a model file (.pt, .onnx, .engine) into a predictor the one evaluator can score."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploy.errors import DeployError
from deploy.metadata import ModelMetadata
from pipeline.errors import PipelineError

MODEL_SUFFIXES = (".pt", ".onnx", ".engine", ".xml")


def metadata_from_checkpoint(payload: dict[str, Any]) -> ModelMetadata:
    """The metadata an exported model will carry, taken from a checkpoint dict."""
    train_config = payload.get("train_config") or {}
    return ModelMetadata(
        class_names=list(payload["class_names"]),
        category_ids=[int(c) for c in payload["category_ids"]],
        img_size=int(payload["img_size"]),
        pad_value=int(payload.get("pad_value", 114)),
        input_format=payload.get("input_format", "rgb-0-255-letterbox-topleft"),
        loss=str(payload.get("loss", "unknown")),
        extra={
            "backbone": payload["model_config"].get("backbone", ""),
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
    """Dispatch on the file suffix; a wrong type is one clear error.

    `provider` applies to .onnx, `device` to .pt, `cuda_api` ("auto", "cuda-python", "pycuda")
    and `cuda_graph` (replay batch-1 launches from a CUDA graph) to .engine files,
    `openvino_hint` ("latency" or "throughput") to OpenVINO's .xml.
    """
    path = Path(path)
    if not path.exists():
        raise PipelineError(f"{path}: model file not found")
    suffix = path.suffix.lower()
    if suffix == ".pt":
        return load_torch_predictor(path, device)
    if suffix == ".onnx":
        from deploy.backends.onnxruntime import OnnxRuntimePredictor

        return OnnxRuntimePredictor(path, provider=provider)
    if suffix == ".engine":
        return _load_engine(path, cuda_api, cuda_graph)
    if suffix == ".xml":
        from deploy.backends.openvino import OpenVinoPredictor

        return OpenVinoPredictor(path, hint=openvino_hint)
    raise PipelineError(
        f"{path}: unsupported model file type {suffix or '(none)'!r}; expected one of "
        + ", ".join(MODEL_SUFFIXES)
    )


def _load_engine(path: Path, cuda_api: str, cuda_graph: bool) -> Any:
    """The module imports without TensorRT; the constructor says what is missing (DeployError)."""
    from deploy.backends.tensorrt import TensorRTPredictor

    try:
        return TensorRTPredictor(path, cuda_api=cuda_api, cuda_graph=cuda_graph)
    except DeployError as exc:  # every line names the file, even "TensorRT is not installed"
        if str(path) in str(exc):
            raise
        raise DeployError(f"{path}: {exc}") from exc
