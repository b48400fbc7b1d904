# The two set-up commands of README.md: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-dev lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

# Dependencies are listed once, in pyproject.toml: the package's own, and the extras dev (tests, lint) and bench.
install: $(BIN)/python
	$(BIN)/pip install -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -e ".[dev,bench]"

run: install
	$(BIN)/streamlit run app/streamlit_app.py

test: install-dev
	$(BIN)/ruff check gif_core app tests benchmarks
	$(BIN)/ruff format --check gif_core app tests benchmarks
	$(BIN)/mypy
	$(BIN)/python -m pytest
