# pawnet developer commands. `make demo` and `make test` set themselves up on a fresh clone.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup setup-gpu demo test test-fast test-slow lint

setup: $(STAMP)

# Re-installs only when pyproject.toml changes, so repeated runs are instant.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,ray]'
	touch $(STAMP)

# NVIDIA GPUs on x86-64 Linux: TensorFlow's CUDA build in place of tensorflow-cpu. An extra
# cannot do it: installed side by side, tensorflow-cpu's files win (docs/decisions.md).
setup-gpu: setup
	$(BIN)/python -m pip uninstall --quiet --yes tensorflow-cpu
	$(BIN)/python -m pip install --quiet 'tensorflow[and-cuda]>=2.18,<2.22'

demo: setup
	$(BIN)/pawnet demo

# the whole default suite (every tier but `slow`): what .ci/run runs
test: setup
	$(BIN)/python -m pytest

# the unit tier, for the edit-test loop: no training, servers or processes (CONTRIBUTING.md)
test-fast: setup
	$(BIN)/python -m pytest -m "not integration and not slow"

test-slow: setup
	$(BIN)/python -m pytest -m slow

lint: setup
	$(BIN)/ruff check src tests benchmarks examples
