# The two set-up commands: `make demo` (the whole pipeline on a generated corpus, local Ray)
# and `make test` (lint, then the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo-out
LOCK := requirements.lock

.PHONY: demo test test-fast lint gpu-check install lock clean

install: $(VENV)/.installed

# Every package at the version $(LOCK) names (`make lock` writes it). torch goes first: left to
# the resolver it would pull a CUDA build with several GB of nvidia packages (on machines
# without a local CPU wheel, add --index-url https://download.pytorch.org/whl/cpu to that line).
$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c $(LOCK) torch
	$(BIN)/pip install --quiet -c $(LOCK) -e ".[test]"
	touch $@

# Re-resolve pyproject.toml's ranges in a throwaway environment and pin what was installed.
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --upgrade pip
	.lock-venv/bin/pip install --quiet "torch>=2.13,<2.14"
	.lock-venv/bin/pip install --quiet -e ".[test]"
	(echo "# Exact versions for \`make install\` and the images; written by \`make lock\`."; \
	 .lock-venv/bin/pip freeze --exclude-editable) > $(LOCK)
	rm -rf .lock-venv

demo: install
	$(BIN)/ecmf demo --out $(OUT)

lint: install
	$(BIN)/ruff check ecmf tests

# Two pytest workers (pytest-xdist): a module stays on one worker, and the tests that start
# Ray heads run one after another on one worker (tests/conftest.py's scheduler).
# TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
XDIST = $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))
test: lint
	$(BIN)/python -m pytest -q $(XDIST)

# The tier to run after every change: the tests that start no Ray (a test that does fails here,
# telling you to mark it `ray`).
test-fast: install
	ECMF_TEST_NO_RAY=1 $(BIN)/python -m pytest -q $(XDIST) -m "not ray and not cluster and not autoscale and not gpu"

# On a machine with CUDA: the production architectures (random weights from the configs in
# tests/gpu/architectures) and the CPU/GPU boundary, as one JSON object (gpu-check.json). Skips,
# with the reason, without CUDA. Needs only torch and transformers: on a bare GPU machine run
# `python tests/gpu/check.py` from the tree. On the GPU image, `pytest -m gpu tests/gpu` adds
# the Ray paths (a fit with NCCL, vLLM enrichment).
gpu-check: install
	$(BIN)/python tests/gpu/check.py --out gpu-check.json

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
