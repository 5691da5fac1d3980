"""Build a TensorRT engine from the exported ONNX with TensorRT's Python API (10.x and 11.x).

Precision has two routes, chosen by the installed major version (`plan_build`):
- TensorRT 10: the network is parsed as is and the builder flags ask for reduced precision
  (FP16; INT8 + FP16 with an entropy calibrator fed by dataset images). The post-processing
  layers (named "post/..." by export/graph_postprocess.py) are pinned to FP32 with precision
  constraints, so decoding and NMS never run in 8 or 16 bits.
- TensorRT 11 removed those flags and the implicit INT8 calibrators: networks are strongly typed,
  so precision comes from the ONNX file itself: a mixed FP16 conversion, or explicit Q/DQ INT8
  (export/quantize.py, symmetric int8, calibrated on the same images). The tail stays FP32 there.

Every build gets an optimization profile (batch min 1 / opt / max), a workspace limit, and a
timing cache kept beside the engine and reused by the next build. `tensorrt` and torch's CUDA are
imported only here, inside functions, so the module imports anywhere.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from common.contract import INPUT_NAME, EngineInfo
from common.engine_files import SIDECAR_FORMAT, sidecar_path
from common.engines import ENGINES_BY_NAME
from common.errors import InputError
from common.files import write_bytes_atomic, write_json_atomic
from export.compat import check_tensorrt_compat
from export.engine_job import EngineJob
from export.errors import ExportError
from export.trt_calibrator import attach_calibrator

log = logging.getLogger(__name__)

TAIL_PREFIX = "post/"  # export/graph_postprocess.py names every tail node and constant so
TIMING_CACHE_NAME = "trt_timing.cache"
TENSORRT_PRECISIONS = ENGINES_BY_NAME["tensorrt"].precisions
INSTALL_HINT = "pip install '.[gpu]', or use the Docker image"


@dataclass(frozen=True)
class EngineOptions:
    """What to build. `opt_batch` defaults to `max_batch` (the batch the engine is tuned for)."""

    precision: str = "fp32"
    max_batch: int = 1
    opt_batch: int | None = None
    workspace_gb: float = 4.0
    timing_cache: Path | None = None  # default: TIMING_CACHE_NAME beside the engine
    # int8: None is each route's usual (TensorRT 10's entropy calibrator; minmax Q/DQ on 11)
    calibration: str | None = None


@dataclass(frozen=True)
class BuildPlan:
    """How one TensorRT version reaches a precision (see the module docstring)."""

    onnx_conversion: str  # "none" | "fp16" | "int8-qdq"
    builder_flags: tuple[str, ...]  # trt.BuilderFlag member names
    strongly_typed: bool
    int8_calibrator: bool
    pin_tail_fp32: bool
    # TensorRT lets float32 convolutions run in TF32 unless told not to; an fp32 engine must
    # compute in float32 to match ONNX Runtime as closely as ONNX Runtime matches PyTorch.
    allow_tf32: bool = True


def tensorrt_major(version: str) -> int:
    """10 for "10.3.0", 11 for "11.0.1.2"."""
    try:
        return int(version.split(".")[0])
    except ValueError as exc:
        raise ExportError(f"cannot read the TensorRT version {version!r}") from exc


def plan_build(major: int, precision: str) -> BuildPlan:
    """The route to `precision` on TensorRT `major` (10 and 11 supported)."""
    if precision not in TENSORRT_PRECISIONS:
        raise InputError(
            f"precision: must be one of {', '.join(TENSORRT_PRECISIONS)}, got {precision!r}"
        )
    if major < 10:
        raise ExportError(f"TensorRT {major}.x is too old: 10 or newer is needed ({INSTALL_HINT})")
    if major >= 11:
        conversion = {"fp32": "none", "fp16": "fp16", "int8": "int8-qdq"}[precision]
        return BuildPlan(conversion, (), True, False, False, allow_tf32=precision != "fp32")
    flags = {"fp32": (), "fp16": ("FP16",), "int8": ("FP16", "INT8")}[precision]
    return BuildPlan(
        "none",
        flags,
        False,
        precision == "int8",
        precision != "fp32",
        allow_tf32=precision != "fp32",
    )


def require_tensorrt() -> Any:
    """The tensorrt module on a machine with a CUDA GPU, or one ExportError saying what is missing.

    Called before any export work, so `--trt` on a CPU-only machine fails in a second.
    """
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        raise ExportError(
            f"--trt: TensorRT is not installed; building an engine needs an NVIDIA GPU with "
            f"TensorRT ({INSTALL_HINT})"
        ) from exc
    _gpu()
    return tensorrt


def _gpu() -> tuple[str, str]:
    """(GPU name, "major.minor") of device 0, through torch (export may import it)."""
    import torch

    if not torch.cuda.is_available():
        raise ExportError(
            "--trt: no CUDA GPU visible (torch.cuda.is_available() is False); building an engine "
            f"needs an NVIDIA GPU, its driver and a CUDA build of torch ({INSTALL_HINT})"
        )
    major, minor = torch.cuda.get_device_capability(0)
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def _trt_logger(trt: Any) -> Any:
    """Forward TensorRT's messages to `logging` (INFO and VERBOSE at DEBUG)."""
    levels = {
        trt.ILogger.Severity.INTERNAL_ERROR: logging.ERROR,
        trt.ILogger.Severity.ERROR: logging.ERROR,
        trt.ILogger.Severity.WARNING: logging.WARNING,
    }

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            log.log(levels.get(severity, logging.DEBUG), "TensorRT: %s", msg)

    return _Logger()


def describe_parser_error(error: Any, model: onnx.ModelProto) -> str:
    """One line for a TensorRT ONNX parser error, naming the failing node and its op."""
    index = int(error.node())
    name = error.node_name() if hasattr(error, "node_name") else ""
    op = error.node_operator() if hasattr(error, "node_operator") else ""
    if 0 <= index < len(model.graph.node):
        name = name or model.graph.node[index].name
        op = op or model.graph.node[index].op_type
    where = f"node {name or index} ({op or '?'})" if index >= 0 else "the graph"
    return f"{where}: {error.desc()}"


def _parse(trt: Any, network: Any, logger: Any, model: onnx.ModelProto, source: Path) -> Any:
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.SerializeToString(), str(source)):
        errors = [
            describe_parser_error(parser.get_error(i), model) for i in range(parser.num_errors)
        ]
        first = errors[0] if errors else "an unreported place (see the TensorRT log)"
        more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ExportError(f"{source}: TensorRT's ONNX parser failed at {first}{more}")
    return parser


def pin_tail_fp32(trt: Any, network: Any, config: Any) -> int:
    """Ask for FP32 on every float post-processing layer; returns how many were pinned."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not layer.name.startswith(TAIL_PREFIX):
            continue
        outputs = [j for j in range(layer.num_outputs) if layer.get_output(j).dtype == trt.float32]
        if not outputs:
            continue
        layer.precision = trt.float32
        for j in outputs:
            layer.set_output_type(j, trt.float32)
        pinned += 1
    config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    if pinned == 0:
        log.warning(
            "no %s* layers found: post-processing may run in reduced precision", TAIL_PREFIX
        )
    return pinned


def _add_profile(builder: Any, network: Any, config: Any, batches: tuple[int, int, int]) -> None:
    tensor = network.get_input(0)
    if network.num_inputs != 1 or tensor.name != INPUT_NAME:
        raise InputError(f"expected one network input {INPUT_NAME!r}, got {tensor.name!r}")
    rest = tuple(tensor.shape)[1:]
    profile = builder.create_optimization_profile()
    profile.set_shape(INPUT_NAME, *[(b, *rest) for b in batches])
    if config.add_optimization_profile(profile) < 0:
        raise ExportError(f"TensorRT rejected the optimization profile batch {batches}")


def _timing_cache(config: Any, path: Path) -> Any:
    """Attach the cache at `path` (a new one if absent or made by another GPU/TensorRT)."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is not None and config.set_timing_cache(cache, False):
        log.info("timing cache %s: %s", path, "reused" if data else "new")
        return cache
    log.warning("%s: timing cache unusable here (other GPU or TensorRT?); starting a new one", path)
    cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, False)
    return cache


TRT_QDQ_OPS = ("Conv", "Add")  # TensorRT fuses Q/DQ into convolutions and residual adds


def _source_model(
    onnx_path: Path,
    plan: BuildPlan,
    tmp: Path,
    images: Iterable[np.ndarray] | None,
    calibration_method: str | None = None,
) -> tuple[onnx.ModelProto, Path, int]:
    """The ONNX TensorRT parses: the export itself, or (TensorRT 11) its FP16 / Q/DQ INT8 copy.

    Returns (model, its path, calibration images used).
    """
    if plan.onnx_conversion == "none":
        return onnx.load(str(onnx_path)), onnx_path, 0
    from export.quantize import QuantizeOptions, convert_fp16, quantize_int8

    out = tmp / f"{onnx_path.stem}.{plan.onnx_conversion}.onnx"
    used = 0
    if plan.onnx_conversion == "fp16":
        convert_fp16(onnx_path, out)
    else:
        if images is None:
            raise InputError("--precision int8: calibration images are needed (--data)")
        options = QuantizeOptions(target="tensorrt", op_types=TRT_QDQ_OPS,
                                  method=calibration_method or "minmax")  # fmt: skip
        used = quantize_int8(onnx_path, out, images, options)["calibration_images"]
    problems = check_tensorrt_compat(out)
    if problems:
        raise InputError(f"{out.name}: converted model not TensorRT-compatible: {problems[0]}")
    return onnx.load(str(out)), out, used


def _build_serialized(
    trt: Any,
    source: tuple[onnx.ModelProto, Path],
    plan: BuildPlan,
    options: EngineOptions,
    batches: tuple[int, int, int],
    cache_path: Path,
    images: Iterable[np.ndarray] | None,
) -> tuple[bytes, int]:
    """Parse, configure and build; returns (plan bytes, images the TensorRT 10 calibrator saw)."""
    model, path = source
    logger = _trt_logger(trt)
    builder = _start_builder(trt, logger)
    network = builder.create_network(0)  # explicit batch; strongly typed by default on 11
    parser = _parse(trt, network, logger, model, path)
    config = builder.create_builder_config()
    workspace = int(options.workspace_gb * (1 << 30))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    for flag in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if not plan.allow_tf32 and hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)
    if plan.pin_tail_fp32:
        log.info("pinned %d post-processing layers to FP32", pin_tail_fp32(trt, network, config))
    _add_profile(builder, network, config, batches)
    calibrator = None
    if plan.int8_calibrator:
        calibrator = attach_calibrator(trt, builder, network, config, images, options.calibration)
    cache = _timing_cache(config, cache_path)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"{path}: TensorRT could not build the engine (its errors are logged above)"
        )
    write_bytes_atomic(cache_path, bytes(cache.serialize()))
    calibrated = calibrator.count if calibrator is not None else 0
    if plan.int8_calibrator and calibrated == 0:
        raise InputError("--precision int8: the calibrator got no images (is the dataset empty?)")
    del parser  # the parser owns weights the network used until the build finished
    return bytes(serialized), calibrated


def _start_builder(trt: Any, logger: Any) -> Any:
    """trt.Builder, or one ExportError line when TensorRT cannot initialize CUDA (exit 2).

    pybind says only "factory function returned nullptr" (a TypeError); nearly always the driver
    is missing or too old for the CUDA this TensorRT was built with. (deploy's runtime says the
    same for trt.Runtime; export may not import deploy.)
    """
    # the two-stage graph's RoiAlign is built from TensorRT's ROIAlign_TRT plugin
    trt.init_libnvinfer_plugins(logger, "")
    try:
        builder = trt.Builder(logger)
    except TypeError as exc:
        said = " ".join(str(exc).split()) or type(exc).__name__
        builder, failure = None, f"Builder() failed ({said})"
    else:
        failure = "Builder() failed"
    if builder is None:
        raise ExportError(
            f"--trt: TensorRT {trt.__version__} could not start: {failure}; likely cause: no "
            "usable NVIDIA driver, or one too old for this CUDA (TensorRT's cu13 wheels need "
            "driver >= 580; see nvidia-smi)"
        )
    return builder


def _batch_range(options: EngineOptions) -> tuple[int, int, int]:
    opt = options.opt_batch or options.max_batch
    if not 1 <= opt <= options.max_batch:
        raise InputError(f"--batch: need 1 <= opt {opt} <= max {options.max_batch}")
    return 1, opt, options.max_batch


def build_engine(
    onnx_path: str | Path,
    engine_path: str | Path,
    options: EngineOptions | None = None,
    calibration: Iterable[np.ndarray] | None = None,
) -> EngineInfo:
    """Build and write `engine_path` from an exported ONNX file; returns what was built.

    `calibration` yields (3, S, S) float32 raw 0..255 letterboxed images, needed for int8.
    Raises ExportError (one line) when TensorRT or a GPU is missing, the parser fails (naming
    the node) or the build fails; InputError when the model is not TensorRT-compatible.
    """
    options = options or EngineOptions()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    trt = require_tensorrt()
    gpu_name, capability = _gpu()
    problems = check_tensorrt_compat(onnx_path)
    if problems:
        raise InputError(
            f"{onnx_path}: TensorRT would reject this model: {'; '.join(problems[:3])}"
        )
    plan = plan_build(tensorrt_major(trt.__version__), options.precision)
    batches = _batch_range(options)
    cache_path = options.timing_cache or engine_path.parent / TIMING_CACHE_NAME
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trt-build-") as tmp:
        model, source, quantized = _source_model(
            onnx_path, plan, Path(tmp), calibration, options.calibration
        )
        serialized, calibrated = _build_serialized(
            trt, (model, source), plan, options, batches, cache_path, calibration
        )
    write_bytes_atomic(engine_path, serialized)
    seconds = time.perf_counter() - start
    log.info(
        "wrote %s (%s, TensorRT %s, %s) in %.0f s",
        engine_path,
        options.precision,
        trt.__version__,
        gpu_name,
        seconds,
    )
    return EngineInfo(
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=capability,
        precision=options.precision,
        min_batch=batches[0],
        opt_batch=batches[1],
        max_batch=batches[2],
        source_onnx=onnx_path.name,
        build={
            "plan": asdict(plan),
            "build_seconds": round(seconds, 1),
            "calibration_images": quantized + calibrated,
            "timing_cache": str(cache_path),
        },
    )


def write_engine_metadata(
    engine_path: str | Path, onnx_props: dict[str, str], info: EngineInfo
) -> Path:
    """Write the engine's sidecar (atomically): the source ONNX's metadata_props plus what the
    plan is tied to, for deploy/engine_metadata.py to check before deserializing."""
    path = sidecar_path(engine_path)
    payload = {"format": SIDECAR_FORMAT, "engine": asdict(info), "onnx_props": onnx_props}
    write_json_atomic(path, payload)
    return path


def export_tensorrt(job: EngineJob) -> str:
    """model.<precision>.engine and its sidecar from the fp32 ONNX; returns the "wrote" line."""
    from export.onnx import read_metadata_props

    options, int8 = job.options, job.precision == "int8"
    engine_options = EngineOptions(job.precision, options.batch, None, options.workspace_gb,
                                   calibration=options.calibration)  # fmt: skip
    build = build_engine(job.onnx, job.target, engine_options, job.calibration() if int8 else None)
    detail = {
        "tensorrt_plan": build.build["plan"],
        "calibration_images": build.build["calibration_images"],
    }
    if int8:  # only int8 calibrates
        usual = "entropy" if build.tensorrt_version.startswith("10.") else "minmax"
        detail["calibration_method"] = options.calibration or usual
        detail |= job.fingerprint()
    props = read_metadata_props(job.onnx) | job.stamp(job.precision, detail)
    sidecar = write_engine_metadata(job.target, props, build)
    return (
        f"wrote {job.target} and {sidecar.name} (TensorRT {build.tensorrt_version}, "
        f"{build.gpu_name}, {build.precision}, batch 1..{build.max_batch}, "
        f"{build.build['build_seconds']:.0f} s)"
    )
