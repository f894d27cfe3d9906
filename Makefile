# rayml: `make demo` and `make test` are all the set-up a fresh machine needs.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of torch: pip takes the local file here and never pulls CUDA packages on a CPU machine.
# On a GPU machine: make install TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
# XGBoost for the importers' tests: xgboost-cpu is the xgboost wheel without CUDA's NCCL (300 MB); users who want the
# GPU build install rayml[xgboost]. onnxmltools comes with rayml[lightgbm].
XGBOOST_SPEC ?= xgboost-cpu>=2
# Tests run in a random order (pytest-randomly; the seed is in pytest's header). Replay one order:
# make test PYTEST_ARGS="--randomly-seed=N" (or =last); file order: PYTEST_ARGS="-p no:randomly".
PYTEST_ARGS ?=

PROMTOOL ?= promtool

.PHONY: install demo test lint alerts unit integration e2e bench strip-notebooks clean

$(BIN)/rayml: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet "$(XGBOOST_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev,sklearn,lightgbm]"
	touch $(BIN)/rayml

install: $(BIN)/rayml

demo: install
	$(BIN)/rayml quickstart

# mypy: every module of rayml/, the public ones strictly ([tool.mypy] in pyproject.toml); .mypy_cache/ keeps reruns fast
lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(BIN)/mypy rayml

# Prometheus alert rules: promtool's syntax check and unit tests (Debian's prometheus package provides promtool).
alerts:
	@command -v $(PROMTOOL) >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing Debian's prometheus package for promtool"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus) >/dev/null; \
	  else echo "promtool not found: install Prometheus (Debian/Ubuntu: sudo apt-get install prometheus)" >&2; exit 1; fi; }
	$(PROMTOOL) check rules clusters/prometheus/rules/*.yml
	$(PROMTOOL) test rules clusters/prometheus/tests/*.yml
	$(PROMTOOL) check config clusters/prometheus/prometheus.yml

test: install lint alerts
	$(BIN)/python -m pytest $(PYTEST_ARGS)

unit: install
	$(BIN)/python -m pytest tests/unit $(PYTEST_ARGS)

integration: install
	$(BIN)/python -m pytest tests/integration $(PYTEST_ARGS)

e2e: install
	$(BIN)/python -m pytest tests/e2e $(PYTEST_ARGS)

bench: install
	@set -e; for b in benchmarks/[!_]*.py; do echo "== $$b"; $(BIN)/python $$b; done

# Notebooks are committed without outputs (tests/unit/test_notebooks_clean.py checks); run this before committing one.
strip-notebooks: install
	$(BIN)/python notebooks/strip_outputs.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis *.egg-info
