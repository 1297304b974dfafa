# `make demo` and `make test` set everything up on a fresh machine (Python 3.11+).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: setup demo test lint typecheck unit bench aimet clean

setup: $(STAMP)

# torch is pinned exactly and installed first: a loose requirement pulls a multi-GB CUDA
# build. The exact pin is a CPU build only where the index serves one (this project's
# machines keep it on local disk).
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[export,dev,demo,torch,openvino,images,plot]'
	touch $(STAMP)

demo: setup
	$(VENV)/bin/quantship demo --out demo-out

lint: setup
	$(VENV)/bin/ruff check quantship tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

unit: setup
	$(PY) -m pytest -q

test: lint typecheck unit

# The comparisons against the peers' own tools (NNCF etc.); slow, not part of `make test`.
bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) benchmarks/vs_onnxruntime.py

# AIMET (a peer) in its own environment: its pins differ from ours. Then run
# AIMET_RUNNER='.aimet-venv/bin/python benchmarks/aimet_runner.py' benchmarks/accuracy_algorithms.py
aimet:
	$(PYTHON) -m venv .aimet-venv
	.aimet-venv/bin/pip install --quiet torch==2.13.0
	.aimet-venv/bin/pip install --quiet aimet-onnx==2.42.0 torch==2.13.0

clean:
	rm -rf $(VENV) demo-out build .pytest_cache .mypy_cache .ruff_cache
