# da_pose: two commands on a fresh machine.
#   make demo   installs everything and runs the main job on the embedded benchmark
#   make test   installs the dev extras and runs the test suite
#   make benchmark   the default comparison per shift, 3 seeds, demo preset (69 min from scratch on 2 idle CPU cores), then compare
# torch is installed first, pinned: an unpinned torch would pull several GB of CUDA packages.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
DEMO_DIR ?= data/demo
DEMO_SEED ?= 0
PYTEST_ARGS ?=
# test workers (pytest-xdist): 2 for the 2-core CI machine; 0 runs the suite in one process
TEST_JOBS ?= 2
BENCHMARK_ARGS ?=

.PHONY: install dev test test-fast demo benchmark bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.dev: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

dev: $(VENV)/.dev

test: dev
	$(BIN)/python -m pytest -n $(TEST_JOBS) $(PYTEST_ARGS)

test-fast: dev
	$(BIN)/python -m pytest -n $(TEST_JOBS) -m "not slow" $(PYTEST_ARGS)

demo: install
	bash scripts/demo.sh $(BIN) $(DEMO_DIR) $(DEMO_SEED)

# the default matrix (scripts/benchmark.py, docs/shifts.md) x 3 seeds, then compare; resumable
# BENCHMARK_ARGS="--matrix full": every method x every shift on the benchmark preset (a bigger machine)
benchmark: install
	$(BIN)/python scripts/benchmark.py $(BENCHMARK_ARGS)

bench: install
	$(BIN)/python scripts/bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info
