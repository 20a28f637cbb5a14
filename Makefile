# Two commands a user needs: `make demo` and `make test`. Both create .venv if missing and
# install the package with pip (idempotent: the stamp is redone only when pyproject.toml changes).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

# the demo needs the package only; tests and lint also need the references they compare against
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e .
	touch $(STAMP)

$(DEV_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(DEV_STAMP) $(STAMP)

demo: $(STAMP)
	$(BIN)/gptforge speedrun --preset cpu --corpus shakespeare

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -rs

lint: $(DEV_STAMP)
	$(BIN)/ruff check gptforge tests bench
	$(BIN)/lint-imports

clean:
	rm -rf runs out .pytest_cache
