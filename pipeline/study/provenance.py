"""Where each engine's numbers in a study come from: the engine and its version, the precision,
how an int8 model was calibrated (method, image count, a hash of the image list), and the
hardware (the CPU with the flags that decide bf16 and int8 speed, or the GPUs and driver).

Read from the eval reports a run wrote, so a study row carries what its model file and machine
were, and a report mixing machines or calibrations shows it.
"""

from __future__ import annotations

from typing import Any

# eval report "backend" -> the environment key holding that engine's version
ENGINE_VERSION_KEYS = {"onnxruntime": "onnxruntime", "openvino": "openvino",
                       "tensorrt": "tensorrt", "pytorch": "torch"}  # fmt: skip
CONVERSION_KEYS = ("calibration_method", "calibration_images", "calibration_split",
                   "calibration_list_sha256")  # fmt: skip


def _engine_version(backend: str, environment: dict[str, Any]) -> str:
    """'onnxruntime-cpu' -> 'onnxruntime 1.32.0' (the engine's name before its device)."""
    engine = backend.split("-")[0]
    key = ENGINE_VERSION_KEYS.get(engine)
    return f"{engine} {environment.get(key) or '(version not recorded)'}" if key else backend


def engine_provenance(report: dict[str, Any]) -> dict[str, Any]:
    """One eval report's provenance: engine, version, precision, calibration and hardware."""
    environment = report.get("environment", {})
    backend = str(report.get("backend", "?"))
    conversion = report.get("conversion") or {}
    return {
        "backend": backend,
        "engine_version": _engine_version(backend, environment),
        "precision": report.get("precision", "fp32"),
        "calibration": {k: conversion[k] for k in CONVERSION_KEYS if k in conversion} or None,
        "cpu": environment.get("cpu"),
        "cpu_flags": environment.get("cpu_flags"),
        "gpus": environment.get("gpus") or [],
        "nvidia_driver": environment.get("nvidia_driver"),
    }


def describe(provenance: dict[str, Any]) -> str:
    """One line: 'onnxruntime 1.32.0, int8, calibration minmax on 128 images (sha256 1a2b3c4d),
    AMD EPYC [avx2]'."""
    parts = [provenance["engine_version"], provenance["precision"]]
    calibration = provenance.get("calibration")
    if calibration:
        digest = str(calibration.get("calibration_list_sha256", ""))[:8]
        parts.append(
            f"calibration {calibration.get('calibration_method', '?')} on "
            f"{calibration.get('calibration_images', '?')} images (list sha256 {digest})"
        )
    flags = provenance.get("cpu_flags")  # None: scored before reports recorded them
    listed = "flags not recorded" if flags is None else " ".join(flags) or "none of the listed"
    hardware = f"{provenance.get('cpu') or '?'} [{listed}]"
    if provenance.get("gpus"):
        hardware += f", {', '.join(provenance['gpus'])} (driver {provenance['nvidia_driver']})"
    parts.append(hardware)
    return ", ".join(parts)
