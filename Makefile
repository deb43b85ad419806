# Two entry points, both from a bare python3 + pip: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo-study

.PHONY: setup demo test test-slow test-all lint bench clean

# The runtime alone for `make demo`; the test and lint tools and the dask extra for `make test`.
$(BIN)/immunomon: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $(BIN)/immunomon

$(VENV)/.dev: $(BIN)/immunomon
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(VENV)/.dev

setup: $(VENV)/.dev

# A second `make demo` runs a pass on the existing demo study (new files only).
demo: $(BIN)/immunomon
	$(BIN)/immunomon demo $(DEMO)

# The everyday suite (under 10 minutes on 2 cores); `make test-slow` runs the end-to-end
# modules marked slow (whole demo studies, kill tests, the browser); CI runs both.
test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

test-all: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
