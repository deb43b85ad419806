# Two entry points, both from a bare python3 + pip: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO ?= demo-study

.PHONY: setup demo test lint bench clean

$(BIN)/immunomon: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/immunomon

setup: $(BIN)/immunomon

demo: setup
	$(BIN)/immunomon demo $(DEMO)

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
