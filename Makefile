# The two set-up commands: `make demo` (the whole pipeline on a generated corpus, local Ray)
# and `make test` (the test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= demo-out

.PHONY: demo test gpu-check install clean

install: $(VENV)/.installed

# torch is installed first and pinned: left to the resolver it would pull a CUDA build with
# several GB of nvidia packages (on machines without a local CPU wheel, add
# --index-url https://download.pytorch.org/whl/cpu to that line).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

demo: install
	$(BIN)/ecmf demo --out $(OUT)

# Two pytest workers (pytest-xdist): a module stays on one worker, and the tests that start
# Ray heads run one after another on one worker (tests/conftest.py's scheduler).
# TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
test: install
	$(BIN)/python -m pytest -q $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS))

# On a machine with CUDA (a GPU image: docker/Dockerfile.gpu): the production code paths on the
# GPU, printing clips/s and tokens/s (tests/gpu). Skips, with the reason, without CUDA.
gpu-check: install
	$(BIN)/python -m pytest -q -m gpu -s -rs tests/gpu

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache
