# Two commands for a fresh machine: `make demo` (end-to-end demo) and `make test` (test suite).
VENV ?= .venv
export KITS_VENV := $(VENV)

.PHONY: setup demo test lint
setup:
	@bash scripts/setup_env.sh

demo: setup
	$(VENV)/bin/kits demo

test: setup
	$(VENV)/bin/python -m pytest -q

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy  # the package (files and settings: [tool.mypy] in pyproject.toml)
