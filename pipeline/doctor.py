"""`pipeline doctor`: what this machine can run (and the Docker image's health check)."""

from __future__ import annotations

import importlib
import platform
import shutil
from typing import Any

from common.engines import ENGINES


def _version(module_name: str) -> str | None:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # an installed-but-broken GPU package must not crash the doctor
        return None
    return str(getattr(module, "__version__", "installed"))


def _onnxruntime() -> tuple[str, list[str]]:
    """(version, providers), or the one line saying which extra installs it."""
    try:
        import onnxruntime
    except ImportError:
        from deploy.backends.onnxruntime import NO_ONNXRUNTIME

        return NO_ONNXRUNTIME, []
    return onnxruntime.__version__, onnxruntime.get_available_providers()


def _openvino() -> tuple[str | None, str | None]:
    """(version, the CPU plugin's capabilities, e.g. "FP32 BF16 INT8"), or Nones."""
    try:
        from deploy.backends.openvino import cpu_capabilities

        found = cpu_capabilities()
    except Exception:  # not installed (DeployError) or a broken install: not available
        return None, None
    return found["version"], " ".join(found["capabilities"])


def machine_report() -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    ort_version, ort_providers = _onnxruntime()
    openvino_version, openvino_cpu = _openvino()
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": cuda,
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cpu_bf16_autocast": torch.backends.mkldnn.is_available(),
        "onnxruntime": ort_version,
        "onnxruntime_providers": ort_providers,
        "openvino": openvino_version,
        "openvino_cpu": openvino_cpu,
        "tensorrt": _version("tensorrt"),
        "cuda_python": _version("cuda.bindings") or _version("cuda"),
        "pycuda": _version("pycuda"),
        # compare --launcher ray|slurm (pip install '.[ray]' / '.[slurm]'); sbatch: a Slurm node
        "ray": _version("ray"),
        "submitit": _version("submitit"),
        "sbatch": shutil.which("sbatch"),
    }


def engine_lines(torch_cuda: bool) -> dict[str, str]:
    """One line per row of the engine table: its files and precisions, and whether it runs here."""
    lines = {}
    for engine in ENGINES:
        installed = _version(engine.python_module) is not None
        runs = installed and (torch_cuda or not engine.needs_gpu)
        why = "" if runs else " (not installed)" if not installed else " (needs an NVIDIA GPU)"
        lines[f"engine {engine.name}"] = (
            f"{engine.runtime}, *{engine.suffix}, {' '.join(engine.precisions)}: "
            f"{'yes' if runs else 'no'}{why}"
        )
    return lines


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"{key:24s} {value if value is not None else 'not available'}"
        for key, value in report.items()
    ]
    lines += [f"{key:24s} {line}" for key, line in engine_lines(report["torch_cuda"]).items()]
    can_trt = report["tensorrt"] is not None and report["torch_cuda"]
    lines.append(
        f"{'can build TensorRT':24s} {'yes' if can_trt else 'no (needs an NVIDIA GPU and pip install .[gpu])'}"
    )
    return "\n".join(lines)
