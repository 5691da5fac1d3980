"""Prove which ONNX Runtime execution providers actually run, on a tiny model (no torch).

`get_available_providers()` lists every provider compiled in, even one whose libraries cannot
load, so it proves nothing. This script creates a session per provider on a two-node model built
with onnx.helper, runs it, and reads `get_providers()`: the provider that actually ran.

    python scripts/check_ort_providers.py CPUExecutionProvider CUDAExecutionProvider ...
        every named provider must run (a GPU machine: scripts/gpu_check.sh, `docker run --gpus`)
    python scripts/check_ort_providers.py --without-gpu CUDAExecutionProvider ...
        (docker build: no GPU, no driver) each named provider must run or fail only for want of
        the driver or a device; a library of its own that cannot load fails the check

TensorRT's pip libraries are preloaded first, exactly as the predictor does
(deploy.backends.onnxruntime.preload_tensorrt_libs). Exit 0 when every check passes, else 1.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

CPU = "CPUExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
# Only the host's NVIDIA driver provides these (the container toolkit mounts them at run time).
DRIVER_LIBRARIES = re.compile(r"lib(cuda|nvidia-\w+)\.so")
MISSING_LIBRARY = re.compile(r"(lib[\w.+-]+\.so[\w.]*): cannot open shared object file")
NO_DEVICE = re.compile(
    r"no CUDA-capable device|CUDA driver version is insufficient|cudaErrorNoDevice|"
    r"cudaErrorInsufficientDriver|CUDA failure 100|CUDA failure 35|CUDA failure 999",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class ProviderResult:
    provider: str
    ran: list[str]  # session.get_providers()
    log: str  # what ONNX Runtime printed or logged while creating the session

    @property
    def started(self) -> bool:
        return bool(self.ran) and self.ran[0] == self.provider

    def missing_libraries(self) -> list[str]:
        return sorted(set(MISSING_LIBRARY.findall(self.log)))

    def failed_for_want_of_gpu(self) -> bool:
        """Failed only because no driver or device is present (what a docker build has)."""
        missing = self.missing_libraries()
        if missing:
            return all(DRIVER_LIBRARIES.search(name) for name in missing)
        return bool(NO_DEVICE.search(self.log))


def tiny_model() -> onnx.ModelProto:
    """y = relu(x + 1) on float32 (1, 4): every provider takes Add and Relu."""
    one = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["s"]), helper.make_node("Relu", ["s"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        initializer=[one],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by every onnxruntime the extras allow
    onnx.checker.check_model(model)
    return model


@contextlib.contextmanager
def captured_output() -> Iterator[io.StringIO]:
    """Everything written to stdout/stderr, Python's and the C++ logger's (file descriptors)."""
    text = io.StringIO()
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        try:
            for fd in saved:
                os.dup2(sink.fileno(), fd)
            with contextlib.redirect_stdout(text), contextlib.redirect_stderr(text):
                yield text
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text.write(sink.read().decode(errors="replace"))


def run_provider(ort: object, model_path: Path, provider: str) -> ProviderResult:
    """Create a session asking for `provider` (then CPU), run it, report what ran."""
    providers = [provider] if provider == CPU else [provider, CPU]
    options = ort.SessionOptions()
    options.log_severity_level = 1  # warnings too: they say why a provider did not start
    with captured_output() as log:
        try:
            session = ort.InferenceSession(str(model_path), options, providers=providers)
            x = np.arange(4, dtype=np.float32).reshape(1, 4) - 2
            (y,) = session.run(["y"], {"x": x})
            assert np.allclose(y, np.maximum(x + 1, 0)), y
            ran = list(session.get_providers())
        except Exception as exc:  # a provider may refuse at creation; that is a result too
            print(f"{type(exc).__name__}: {exc}")
            ran = []
    return ProviderResult(provider, ran, log.getvalue())


def preload_tensorrt() -> str:
    """Load TensorRT's pip libraries as the predictor does; '' or why they did not load."""
    from deploy.backends.onnxruntime import preload_tensorrt_libs
    from deploy.errors import DeployError

    try:
        preload_tensorrt_libs()
    except DeployError as exc:
        return str(exc)
    return ""


def verdict(result: ProviderResult, without_gpu: bool, preload_error: str) -> tuple[bool, str]:
    """(passed, one line) for one provider."""
    if result.started:
        return True, f"{result.provider}: ran"
    if result.provider == TENSORRT and preload_error:
        return False, f"{result.provider}: TensorRT libraries did not load: {preload_error}"
    missing = result.missing_libraries()
    if without_gpu and result.failed_for_want_of_gpu():
        return True, f"{result.provider}: loads; cannot start without a GPU/driver (as expected)"
    why = f"missing {', '.join(missing)}" if missing else _last_line(result.log)
    return False, f"{result.provider}: did not run (ran {result.ran or 'nothing'}; {why})"


def _last_line(log: str) -> str:
    lines = [line.strip() for line in log.splitlines() if line.strip("* \t")]
    return lines[-1] if lines else "no message from ONNX Runtime"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("providers", nargs="+", help="e.g. CPUExecutionProvider")
    parser.add_argument(
        "--without-gpu",
        action="store_true",
        help="no GPU or driver here: accept a provider that fails only for want of them",
    )
    args = parser.parse_args(argv)
    import onnxruntime as ort

    preload_error = preload_tensorrt() if TENSORRT in args.providers else ""
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        model_path = Path(tmp) / "tiny.onnx"
        onnx.save(tiny_model(), model_path)
        for provider in args.providers:
            result = run_provider(ort, model_path, provider)
            passed, line = verdict(result, args.without_gpu, preload_error)
            print(f"{'ok  ' if passed else 'FAIL'} {line}")
            ok = ok and passed
    print(f"onnxruntime {ort.__version__}: {'all providers checked' if ok else 'check FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
