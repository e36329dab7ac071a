# Two entry points for a new machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck bench clean

# pip's own chatter goes to a log that is shown only when the install fails.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip > $(VENV)/pip.log 2>&1 \
		|| { cat $(VENV)/pip.log; exit 1; }
	@$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev]' >> $(VENV)/pip.log 2>&1 \
		|| { cat $(VENV)/pip.log; exit 1; }
	@touch $(STAMP)

demo: $(STAMP)
	@$(BIN)/python -m pinnacle_updates.client.demo

# The whole suite: lint, types and layer contracts first (seconds), then the tests.
test: lint
	@$(BIN)/python -m pytest

# ruff; mypy --strict over the whole installed package; the import contracts of pyproject.toml.
lint: $(STAMP)
	@$(BIN)/ruff check --quiet .
	@$(BIN)/mypy --strict pinnacle_updates > $(VENV)/mypy.log 2>&1 || { cat $(VENV)/mypy.log; exit 1; }
	@$(BIN)/lint-imports --no-cache > $(VENV)/lint-imports.log 2>&1 || { cat $(VENV)/lint-imports.log; exit 1; }

bench: $(STAMP)
	@$(BIN)/python bench/publish.py

clean:
	rm -rf $(VENV) demo-work .pytest_cache .mypy_cache .ruff_cache
