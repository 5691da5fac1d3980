# syntax=docker/dockerfile:1
# Two targets: `gpu` (default: CUDA, TensorRT, onnxruntime-gpu, cuda-python) and `cpu`.
#   docker build -t softsample:gpu .            docker build --target cpu -t softsample:cpu .
# Multi-stage: wheels are built in `build`, the runtime images carry no compilers.

ARG CUDA_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pipeline ./pipeline
COPY train ./train
COPY export ./export
COPY deploy ./deploy
RUN pip wheel --no-cache-dir --wheel-dir /wheels pycocotools \
 && pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM ${PYTHON_IMAGE} AS cpu
RUN useradd --create-home --uid 1000 pipeline
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu \
        "torch>=2.2,<=2.14.1" "torchvision>=0.17,<=0.29.1" \
 && pip install --no-cache-dir /wheels/*.whl \
 && rm -rf /wheels
USER pipeline
WORKDIR /work
HEALTHCHECK CMD ["pipeline", "doctor"]
ENTRYPOINT ["pipeline"]

FROM ${CUDA_IMAGE} AS gpu
ENV DEBIAN_FRONTEND=noninteractive PIP_BREAK_SYSTEM_PACKAGES=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-pip \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --create-home --uid 1001 pipeline
COPY --from=build /wheels /wheels
RUN pip3 install --no-cache-dir "torch>=2.2,<=2.14.1" "torchvision>=0.17,<=0.29.1" \
 && pip3 install --no-cache-dir "$(ls /wheels/softsample_pipeline-*.whl)[gpu]" /wheels/pycocotools-*.whl \
 && rm -rf /wheels
USER pipeline
WORKDIR /work
HEALTHCHECK CMD ["pipeline", "doctor"]
ENTRYPOINT ["pipeline"]
