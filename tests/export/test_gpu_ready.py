"""Issue 16 on the CPU: what the first GPU machine needs, checked with fakes where a GPU is needed.

Every stand-in for NVIDIA software is named fake_*: a fake tensorrt_libs folder of empty .so
files, a fake onnxruntime whose sessions report which provider ran, a fake tensorrt whose
Builder/Runtime raise pybind's TypeError, a fake cuda-python runtime that raises without a driver.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import onnx
import pytest
import tomllib

import deploy.backends.onnxruntime as ort_backend
import deploy.backends.tensorrt as trt_backend
from common.errors import InputError
from deploy import evaluate
from deploy.backends import cuda_memory
from deploy.errors import DeployError
from export.errors import ExportError

ROOT = Path(__file__).resolve().parents[2]
TRT, CUDA, CPU = ort_backend.TENSORRT, ort_backend.CUDA, ort_backend.CPU
PROVIDER_LIBS = ["libnvinfer.so.10", "libnvinfer_plugin.so.10", "libnvonnxparser.so.10"]


# ------------------------------------------------------------- item 1: TensorRT libraries preload
def _fake_site(tmp_path: Path, files: list[str], provider_links: str = "libnvinfer.so.10") -> Path:
    """A fake site-packages: tensorrt_libs/<files> and onnxruntime/capi's TensorRT provider."""
    libs = tmp_path / "site" / "tensorrt_libs"
    libs.mkdir(parents=True)
    for name in files:
        (libs / name).write_bytes(b"")
    capi = tmp_path / "site" / "onnxruntime" / "capi"
    capi.mkdir(parents=True)
    (capi / ort_backend.TENSORRT_PROVIDER_FILE).write_bytes(
        b"\x7fELF...\0libcudart.so.13\0" + provider_links.encode() + b"\0libnvonnxparser\0"
    )
    return tmp_path / "site"


@pytest.fixture()
def fake_cdll(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """ctypes.CDLL as the preload sees it: records (file name, mode) instead of loading."""
    loaded: list[tuple[str, int]] = []
    monkeypatch.setattr(
        ort_backend.ctypes, "CDLL", lambda path, mode=0: loaded.append((Path(path).name, mode))
    )
    return loaded


def test_preload_loads_the_providers_libraries_in_order_and_globally(
    tmp_path: Path, fake_cdll: list[tuple[str, int]]
) -> None:
    decoys = ["libnvinfer.so.11", "libnvinfer_builder_resource.so.10.16.1", "libnvinfer_lean.so.10"]
    site = _fake_site(tmp_path, [*reversed(PROVIDER_LIBS), *decoys])
    ort_backend.preload_tensorrt_libs(site / "onnxruntime" / "capi", ["", str(site)])
    assert fake_cdll == [(name, ctypes.RTLD_GLOBAL) for name in PROVIDER_LIBS]


def test_preload_follows_the_major_the_installed_provider_links(
    tmp_path: Path, fake_cdll: list[tuple[str, int]]
) -> None:
    eleven = [name.replace(".so.10", ".so.11") for name in PROVIDER_LIBS]
    site = _fake_site(tmp_path, [*PROVIDER_LIBS, *eleven], provider_links="libnvinfer.so.11")
    ort_backend.preload_tensorrt_libs(site / "onnxruntime" / "capi", [str(site)])
    assert [name for name, _ in fake_cdll] == eleven


def test_preload_names_a_tensorrt_major_the_provider_cannot_use(
    tmp_path: Path, fake_cdll: list[tuple[str, int]]
) -> None:
    site = _fake_site(tmp_path, ["libnvinfer.so.11", "libnvonnxparser.so.11"])
    with pytest.raises(DeployError, match=r"lacks libnvinfer\.so\.10.*has libnvinfer\.so\.11"):
        ort_backend.preload_tensorrt_libs(site / "onnxruntime" / "capi", [str(site)])
    with pytest.raises(DeployError, match="no tensorrt_libs folder"):
        ort_backend.preload_tensorrt_libs(site / "onnxruntime" / "capi", [str(tmp_path)])
    assert fake_cdll == []


# ---------------------------------------------- item 1: providers tried once, fallback said once
class FakeOrtSession:
    """An InferenceSession that starts only the providers in `works` (the CPU, here)."""

    works = (CPU,)
    asked: list[list[str]] = []

    def __init__(self, path: str, options: object, providers: list[str]) -> None:
        FakeOrtSession.asked.append(list(providers))
        if TRT in providers:  # what onnxruntime-gpu prints when a provider fails at creation
            print("*************** EP Error ***************")
            print(f"EP Error fake: TensorRT could not initialize CUDA when using {providers}")
        self._ran = [name for name in providers if name in self.works]

    def get_providers(self) -> list[str]:
        return self._ran

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name="images", type="tensor(float)")]

    def get_outputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=n) for n in ort_backend.OUTPUT_NAMES]


def _fake_onnxruntime(available: list[str]) -> SimpleNamespace:
    return SimpleNamespace(
        get_available_providers=lambda: available,
        SessionOptions=lambda: SimpleNamespace(),
        InferenceSession=FakeOrtSession,
    )


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    from tests.deploy.test_deploy import _fixed_detections_model, _metadata

    path = tmp_path / "model.onnx"
    onnx.save(_fixed_detections_model(_metadata()), path)
    return path


@pytest.fixture()
def fake_gpu_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """onnxruntime-gpu as imported on a machine where only the CPU provider starts."""
    fake = _fake_onnxruntime([TRT, CUDA, CPU])
    monkeypatch.setattr(ort_backend, "import_onnxruntime", lambda: fake)
    monkeypatch.setattr(ort_backend, "_HISTORY", ort_backend._ProviderHistory())
    monkeypatch.setattr(FakeOrtSession, "asked", [])
    return FakeOrtSession.asked


def test_auto_tries_providers_once_and_says_once_why_tensorrt_was_not_used(
    monkeypatch: pytest.MonkeyPatch,
    model_path: Path,
    fake_gpu_onnxruntime: list[list[str]],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(ort_backend, "preload_tensorrt_libs", lambda: [])
    first = ort_backend.OnnxRuntimePredictor(model_path, provider="auto")
    second = ort_backend.OnnxRuntimePredictor(model_path, provider="auto")
    assert fake_gpu_onnxruntime == [[TRT, CUDA, CPU], [CPU]]
    assert first.provider == second.provider == CPU and second.providers_ran == [CPU]
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(said) == 2, said  # TensorRT's and CUDA's, once each
    assert any(TRT in line and "could not initialize CUDA" in line for line in said), said
    assert capsys.readouterr().out == ""  # onnxruntime's printed EP Error became that line


def test_auto_skips_tensorrt_whose_libraries_do_not_load_and_says_why_once(
    monkeypatch: pytest.MonkeyPatch,
    model_path: Path,
    fake_gpu_onnxruntime: list[list[str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []

    def fake_failing_preload() -> list[Path]:
        calls.append(1)
        raise DeployError("no tensorrt_libs folder on sys.path")

    monkeypatch.setattr(ort_backend, "preload_tensorrt_libs", fake_failing_preload)
    for _ in range(2):
        ort_backend.OnnxRuntimePredictor(model_path, provider="auto")
    assert fake_gpu_onnxruntime[0] == [CUDA, CPU] and calls == [1]
    said = [r.getMessage() for r in caplog.records if TRT in r.getMessage()]
    assert said == [f"ONNX Runtime: {TRT} not used: no tensorrt_libs folder on sys.path"]


def test_explicit_tensorrt_whose_libraries_do_not_load_is_one_error(
    monkeypatch: pytest.MonkeyPatch, model_path: Path, fake_gpu_onnxruntime: list[list[str]]
) -> None:
    def fake_failing_preload() -> list[Path]:
        raise DeployError("tensorrt_libs lacks libnvinfer.so.10")

    monkeypatch.setattr(ort_backend, "preload_tensorrt_libs", fake_failing_preload)
    with pytest.raises(DeployError, match=f"{TRT} cannot load: tensorrt_libs lacks"):
        ort_backend.OnnxRuntimePredictor(model_path, provider="tensorrt")
    assert fake_gpu_onnxruntime == []


def test_explicit_provider_that_falls_back_says_onnxruntimes_reason(
    monkeypatch: pytest.MonkeyPatch, model_path: Path, fake_gpu_onnxruntime: list[list[str]]
) -> None:
    monkeypatch.setattr(ort_backend, "preload_tensorrt_libs", lambda: [])
    with pytest.raises(DeployError, match="fell back to CPUExecutionProvider .EP Error fake"):
        ort_backend.OnnxRuntimePredictor(model_path, provider="tensorrt")


# ----------------------------------------------------- item 4: TensorRT / CUDA start-up failures
class FakeTensorRT:
    """tensorrt where CUDA cannot initialize: pybind's factories return nullptr."""

    __version__ = "10.16.1.11"

    class Runtime:
        def __init__(self, logger: object) -> None:
            raise TypeError("pybind11::init(): factory function returned nullptr")

    Builder = Runtime

    @staticmethod
    def init_libnvinfer_plugins(logger: object, namespace: str) -> bool:
        return True


def test_tensorrt_factory_returning_nullptr_is_one_line_naming_the_driver() -> None:
    with pytest.raises(DeployError) as caught:
        trt_backend.start_tensorrt(FakeTensorRT.Runtime, None, FakeTensorRT.__version__)
    line = str(caught.value)
    assert "\n" not in line and "nullptr" in line and "driver" in line and "10.16.1.11" in line


def test_engine_builder_start_failure_is_an_export_error() -> None:
    from export.tensorrt import _start_builder

    with pytest.raises(ExportError, match="--trt: TensorRT 10.16.1.11 could not start.*driver"):
        _start_builder(FakeTensorRT, logger=None)


def test_predictor_start_failure_names_the_engine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0")
    fake_cuda = SimpleNamespace(name="fake-cuda", device_info=lambda: ("GPU", "9.0"), close=None)
    monkeypatch.setattr(trt_backend, "import_tensorrt", lambda what: FakeTensorRT)
    monkeypatch.setattr(trt_backend, "open_cuda", lambda api, device: fake_cuda)
    monkeypatch.setattr(trt_backend, "read_engine_metadata", lambda path: (None, None))
    monkeypatch.setattr(trt_backend, "check_engine_compat", lambda *args: None)
    monkeypatch.setattr(trt_backend, "_python_logger", lambda trt: None)
    with pytest.raises(DeployError, match=f"{engine}: TensorRT 10.16.1.11 could not start"):
        trt_backend.TensorRTPredictor(engine)


class FakeOldCudaRuntime:
    """cuda-python <= 12.5 without a driver: calls raise instead of returning an error code."""

    def cudaSetDevice(self, device: int) -> tuple[int]:
        raise RuntimeError("Failed to dlopen libcuda.so.1")


def test_cuda_python_raising_without_a_driver_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cuda_memory, "_import_cudart", FakeOldCudaRuntime)
    with pytest.raises(DeployError) as caught:
        cuda_memory.open_cuda("cuda-python")
    line = str(caught.value)
    assert line.startswith("no usable CUDA device 0 (CUDA cudaSetDevice failed: Failed to dlopen")
    assert cuda_memory.NO_DRIVER_HINT in line and "\n" not in line


# ------------------------------------------------------- item 3: versions in every eval report
@pytest.mark.parametrize(
    "text",
    [
        "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.65.06  Sun Jul 27 06:54:38 UTC 2025",
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build",
    ],
)
def test_driver_version_is_read_from_the_kernel_module(tmp_path: Path, text: str) -> None:
    fake_proc = tmp_path / "version"
    fake_proc.write_text(text + "\nGCC version:  gcc 12\n")
    assert evaluate.nvidia_driver_version(fake_proc) == "580.65.06"
    assert evaluate.nvidia_driver_version(tmp_path / "absent") == "no NVIDIA driver loaded"


def test_environment_records_the_gpu_stack_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = {"onnxruntime-gpu": "1.31.1", "onnxruntime": "1.31.1", "tensorrt-cu13": "10.16.1"}
    monkeypatch.setattr(evaluate, "_version", lambda name: installed.get(name, "not installed"))
    env = evaluate.environment_info()
    assert env["tensorrt"] == "10.16.1 (tensorrt-cu13)"
    assert env["onnxruntime_distribution"] == "1.31.1 (onnxruntime-gpu), 1.31.1 (onnxruntime)"
    assert {"cuda_python", "cuda_bindings", "nvidia_driver"} <= set(env)


# ------------------------------------------------------ item 9: exactly one ONNX Runtime, pinned
def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> list[str]:
    return [req.split(">")[0].split("<")[0].split("=")[0].split("[")[0] for req in requirements]


def test_each_install_gets_exactly_one_onnxruntime() -> None:
    project, extras = _project(), _project()["optional-dependencies"]
    ort_names = {"onnxruntime", "onnxruntime-gpu"}
    assert not ort_names & set(_names(project["dependencies"]))
    assert [n for n in _names(extras["cpu"]) if n in ort_names] == ["onnxruntime"]
    assert [n for n in _names(extras["gpu"]) if n in ort_names] == ["onnxruntime-gpu"]
    assert set(extras["cpu"]) <= set(extras["dev"])  # `make test` installs '.[dev]'


def test_gpu_extra_pins_the_tensorrt_major_the_provider_links_and_the_images_cuda() -> None:
    gpu = dict(
        zip(
            _names(_project()["optional-dependencies"]["gpu"]),
            _project()["optional-dependencies"]["gpu"],
            strict=True,
        )
    )
    major = ort_backend.DEFAULT_TENSORRT_MAJOR
    tensorrt = [name for name in gpu if name.startswith("tensorrt")]
    assert len(tensorrt) == 1 and f">={major}." in gpu[tensorrt[0]]
    assert f"<{major + 1}" in gpu[tensorrt[0]]
    cuda_image = (ROOT / "Dockerfile").read_text().split("nvidia/cuda:")[1].split(".")[0]
    assert tensorrt[0] == f"tensorrt-cu{cuda_image}"
    assert (
        f">={cuda_image}" in gpu["cuda-python"] and f"<{int(cuda_image) + 1}" in gpu["cuda-python"]
    )


def test_missing_onnxruntime_is_one_line_naming_the_extras(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    with pytest.raises(DeployError, match=r"pip install '\.\[cpu\]' \(or '\.\[gpu\]'"):
        ort_backend.import_onnxruntime()
    from export.onnx import run_onnxruntime
    from pipeline.doctor import machine_report

    with pytest.raises(InputError, match="ONNX Runtime is not installed"):
        run_onnxruntime(Path("model.onnx"), None)  # export may not import deploy: its own line
    assert machine_report()["onnxruntime"] == ort_backend.NO_ONNXRUNTIME


# ---------------------------------------------------- item 2: the provider check can fail
@functools.cache
def _check_script() -> object:
    """scripts/check_ort_providers.py as a module (registered: its dataclass needs that)."""
    spec = importlib.util.spec_from_file_location(
        "check_ort_providers", ROOT / "scripts" / "check_ort_providers.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_provider_check_passes_on_the_cpu_provider_that_ran() -> None:
    assert _check_script().main(["CPUExecutionProvider"]) == 0


@pytest.mark.parametrize(
    ("ran", "log", "without_gpu", "passes"),
    [
        ([CUDA, CPU], "", False, True),
        ([CPU], "libcublasLt.so.13: cannot open shared object file", True, False),
        ([CPU], "libcuda.so.1: cannot open shared object file: No such file", True, True),
        ([CPU], "libcuda.so.1: cannot open shared object file: No such file", False, False),
        ([CPU], "CUDA failure 100: no CUDA-capable device is detected", True, True),
        ([CPU], "", True, False),  # fell back without a reason: not proven loadable
    ],
)
def test_provider_check_fails_unless_the_provider_ran_or_only_the_gpu_is_missing(
    ran: list[str], log: str, without_gpu: bool, passes: bool
) -> None:
    script = _check_script()
    result = script.ProviderResult(CUDA, ran, log)
    assert script.verdict(result, without_gpu, preload_error="")[0] is passes


def test_provider_check_fails_tensorrt_whose_libraries_did_not_load() -> None:
    script = _check_script()
    result = script.ProviderResult(TRT, [CPU], "libcuda.so.1: cannot open shared object file")
    passed, line = script.verdict(result, True, preload_error="no tensorrt_libs folder")
    assert not passed and "no tensorrt_libs folder" in line
