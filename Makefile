# The commands the README names. Both `up` and `test` first install what is missing.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.cache/tools/bin/uv)

.PHONY: install up test lint format clean

install:
	@scripts/bootstrap.sh

up: install
	@scripts/up.sh

lint: install
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .

test: lint
	$(UV) run --locked pytest $(PYTEST_ARGS)

format: install
	$(UV) run --locked ruff check --fix .
	$(UV) run --locked ruff format .

clean:
	rm -rf .cache/bin .pytest_cache .ruff_cache
