# The two set-up commands of README.md: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test install install-dev lint

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -r requirements.txt -e .

install-dev: install
	$(BIN)/pip install -r requirements-dev.txt

run: install
	$(BIN)/streamlit run app/Model_and_data.py

test: install-dev
	$(BIN)/ruff check gif_core app tests benchmarks
	$(BIN)/python -m pytest
