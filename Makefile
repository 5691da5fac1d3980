# Two commands for a fresh machine with python3 and make: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch/torchvision are installed first, pinned to the versions the project is tested with
# (on the development machines they install from a local copy; override TORCH_SPEC elsewhere).
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean mutation reference

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/pipeline run --out runs/demo --overwrite --epochs 7

# Two workers (pytest-xdist), one thread each, whole modules handed out long ones first, the
# detecting model trained in the background meanwhile (tests/conftest.py): 5 min 46 s on the
# idle 2-core AVX2-only EPYC (docs/testing.md).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadscope --no-loadscope-reorder

# mmdetection 3.3.0's loss code, for tests/train/test_reference_mmdet.py (a folder of its own, never
# imported by the product; docs/reference-parity.md). Pure-Python wheels, no mmcv.
REFERENCE := .reference
$(REFERENCE)/.installed: $(STAMP)
	$(PY) -m pip install --quiet --target $(REFERENCE) --no-deps mmdet==3.3.0 mmengine==0.10.7 \
		addict yapf termcolor rich markdown-it-py mdurl pygments platformdirs tomli six terminaltables
	touch $@

reference: $(REFERENCE)/.installed

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) bench/losses.py
	$(PY) bench/onnx_vs_torch.py
	$(PY) bench/train_throughput.py
	$(PY) bench/launchers.py

# Mutation testing (long; not part of CI): one mutant at a time, each in a fresh pytest process.
# Resumes from .mutation/results.json. Extra flags: make mutation MUTATION_ARGS="--module train/assign.py"
mutation: $(STAMP)
	$(PY) scripts/mutation $(MUTATION_ARGS)

clean:
	rm -rf runs .cache .pytest_cache
