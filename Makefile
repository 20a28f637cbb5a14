# Two commands a user needs: `make demo` and `make test`. Both create .venv if missing and
# install the package with pip (idempotent: the stamp is redone only when pyproject.toml changes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/gptforge speedrun --preset cpu --corpus shakespeare

test: $(STAMP)
	$(BIN)/python -m pytest -q -rs

lint: $(STAMP)
	$(BIN)/ruff check gptforge tests bench
	$(BIN)/lint-imports

clean:
	rm -rf runs out .pytest_cache
