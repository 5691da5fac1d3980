# syntax=docker/dockerfile:1
# Two images from one file; `gpu` is the default target (the last stage):
#   docker build -t softsample:gpu .                  CUDA 13 + cuDNN, TensorRT, onnxruntime-gpu,
#                                                     cuda-python, PyTorch's CUDA build
#   docker build --target cpu -t softsample:cpu .     PyTorch's CPU build, onnxruntime (CPU)
# Each runtime has its own builder stage FROM the same base image, so whatever the builder
# compiles or installs matches the runtime's Python (3.12 in both). Everything is installed into
# the virtual environment /opt/venv, which the runtime copies: no compilers or headers ship.
# The working directory /work holds pyproject.toml, tests/ and scripts/, so `pytest -m gpu` and
# scripts/gpu_check.sh run inside the image that ships (.github/workflows/gpu.yml); mount data
# and runs folders under it (README: Docker).

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.12-slim-bookworm
# The same pins as the Makefile's TORCH_SPEC.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1
# Test runners only (not the dev extra: no ruff, hadolint or onnxscript in the image).
ARG TEST_REQUIREMENTS="pytest>=8 hypothesis>=6.100"

# ---------------------------------------------------------------------------------------- CPU
FROM ${PYTHON_IMAGE} AS cpu-build
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ARG TEST_REQUIREMENTS
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Compilers for any dependency without a wheel for this Python; they stay in this stage.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU build of torch (no CUDA libraries: about 1 GB smaller), from PyTorch's CPU index.
RUN pip install --index-url https://download.pytorch.org/whl/cpu \
        "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
# Dependencies first (their own layer: a code change does not download them again), read from
# pyproject.toml; torch is already satisfied by the CPU build above.
COPY pyproject.toml README.md ./
# The `cpu` extra brings the one ONNX Runtime of this image (onnxruntime, the CPU build).
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['cpu']))" > requirements.txt \
 && pip install -r requirements.txt ${TEST_REQUIREMENTS}
COPY pipeline ./pipeline
COPY train ./train
COPY export ./export
COPY deploy ./deploy
COPY common ./common
COPY scripts/check_ort_providers.py ./scripts/
# The extra's versions come from pyproject.toml's ranges, as for `make`.
# hadolint ignore=DL3013
RUN pip install ".[cpu]" \
 && python -c "import torch; assert torch.version.cuda is None, torch.__version__" \
 && python scripts/check_ort_providers.py CPUExecutionProvider

FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --create-home --uid 1000 --user-group pipeline \
 && mkdir -p /work/runs /work/data \
 && chown -R 1000:1000 /work
COPY --from=cpu-build /opt/venv /opt/venv
COPY pyproject.toml /work/
COPY tests /work/tests
COPY scripts /work/scripts
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/.cache
USER 1000:1000
WORKDIR /work
HEALTHCHECK --interval=5m --timeout=2m --start-period=1m CMD ["pipeline", "doctor"]
ENTRYPOINT ["pipeline"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------- GPU
# torch, tensorrt-cu13 (TensorRT 10, the major onnxruntime-gpu's TensorRT provider links; pinned in
# pyproject.toml's `gpu` extra), onnxruntime-gpu and cuda-python from PyPI are all CUDA 13
# builds; the base image adds the system CUDA 13 runtime and cuDNN 9 that onnxruntime-gpu's CUDA
# execution provider loads (torch and TensorRT bring their own libraries in their wheels).
# Needs an NVIDIA driver >= 580 on the host.
FROM ${CUDA_IMAGE} AS gpu-build
ARG TORCH_VERSION
ARG TORCHVISION_VERSION
ARG TEST_REQUIREMENTS
ARG DEBIAN_FRONTEND=noninteractive
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# PyPI's Linux torch is the CUDA 13 build.
RUN pip install "torch==${TORCH_VERSION}" "torchvision==${TORCHVISION_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\n'.join(p['dependencies'] + p['optional-dependencies']['gpu']))" > requirements.txt \
 && pip install -r requirements.txt ${TEST_REQUIREMENTS}
COPY pipeline ./pipeline
COPY train ./train
COPY export ./export
COPY deploy ./deploy
COPY common ./common
COPY scripts/check_ort_providers.py ./scripts/
# Versions come from pyproject.toml's ranges, as for `make`; torch is pinned above. The `gpu` extra
# holds the image's only ONNX Runtime (onnxruntime-gpu; no base dependency installs the CPU one).
# The check creates a session per provider on a tiny model: the build has no GPU or driver, so
# CUDA and TensorRT must run or fail only for want of them; a library of their own that cannot
# load (cuDNN, cuBLAS, TensorRT's libnvinfer.so.10 for onnxruntime-gpu's provider) fails the build.
# hadolint ignore=DL3013
RUN pip install ".[gpu]" \
 && python -c "import torch; assert torch.version.cuda, torch.__version__" \
 && python -c "from importlib.metadata import distributions as d; n = {x.metadata['Name'].lower() for x in d()}; assert 'onnxruntime' not in n, 'CPU onnxruntime beside onnxruntime-gpu'" \
 && python scripts/check_ort_providers.py --without-gpu \
        CPUExecutionProvider CUDAExecutionProvider TensorrtExecutionProvider

FROM ${CUDA_IMAGE} AS gpu
ARG DEBIAN_FRONTEND=noninteractive
# Only the interpreter (the venv's python is a link to /usr/bin/python3, as in gpu-build). The
# base image's `ubuntu` user holds uid 1000; it is replaced by `pipeline` (uid 1000 in both
# images, the usual uid of the first user on a Linux host, so mounted folders stay writable).
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && if id -u ubuntu >/dev/null 2>&1; then userdel ubuntu && rm -rf /home/ubuntu; fi \
 && useradd --create-home --uid 1000 --user-group pipeline \
 && mkdir -p /work/runs /work/data \
 && chown -R 1000:1000 /work
COPY --from=gpu-build /opt/venv /opt/venv
COPY pyproject.toml /work/
COPY tests /work/tests
COPY scripts /work/scripts
ENV PATH=/opt/venv/bin:$PATH VIRTUAL_ENV=/opt/venv PYTHONUNBUFFERED=1 \
    MPLCONFIGDIR=/tmp/matplotlib XDG_CACHE_HOME=/tmp/.cache
USER 1000:1000
WORKDIR /work
HEALTHCHECK --interval=5m --timeout=2m --start-period=1m CMD ["pipeline", "doctor"]
ENTRYPOINT ["pipeline"]
CMD ["--help"]
