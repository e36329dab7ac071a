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

test: $(STAMP)
	@$(BIN)/python -m pytest

lint: $(STAMP)
	@$(BIN)/ruff check .
	@$(BIN)/mypy --strict --follow-imports=silent client/index.py client/fsutil.py client/policy.py client/slots.py client/delta.py client/delta_format.py client/delta_segments.py client/bsdiff_lzma.py client/lzma_dict.py client/archive.py repo_tools/core client/agent/analytics.py client/rollout.py client/fleet.py

bench: $(STAMP)
	@$(BIN)/python bench/publish.py

clean:
	rm -rf $(VENV) demo-work .pytest_cache .mypy_cache .ruff_cache
