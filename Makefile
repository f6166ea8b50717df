# The commands the README names. Both `up` and `test` first install what is missing.
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo $(CURDIR)/.cache/tools/bin/uv)

.PHONY: install up test test-fast test-go lint format clean bench events-catalogue

install:
	@scripts/bootstrap.sh

up: install
	@scripts/up.sh

# ruff, then import-linter: the import rules of pyproject.toml's [tool.importlinter] (libs never
# import services, services never import each other, no import circles).
lint: install
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked lint-imports

# Two pytest workers (pytest-xdist), each with its own nats-server and FerretDB: most tests wait on
# live media, so two at once fit a 2-core machine and halve the run. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2

test: lint test-go
	$(UV) run --locked pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

# The developer's loop, under a minute on 2 cores: the unit tests that are not slow (markers from
# tests/conftest.py), no services, no lint. `make test` stays the full suite CI runs.
test-fast: install
	$(UV) run --locked pytest -n $(TEST_WORKERS) -m "unit and not slow" $(PYTEST_ARGS)

# The ingest data plane's own tests (real gosrt clients and FFmpeg; about 20 s). Needs only Go and
# FFmpeg: `go test` builds what it tests.
test-go:
	cd services/ingest/dataplane && go test -count=1 ./...

# docs/EVENTS.md, the catalogue of events, written from the models in reelhouse.common.events
# (a unit test fails when the committed file is stale).
events-catalogue: install
	$(UV) run --locked python scripts/events_catalogue.py

format: install
	$(UV) run --locked ruff check --fix .
	$(UV) run --locked ruff format .

# Quick versions of every benchmark, one after another (full runs and results: bench/README.md).
bench: install
	$(UV) run --locked python bench/recording_density.py --jobs 10 --window 10 --warmup 5
	$(UV) run --locked python bench/restream_density.py --jobs 5 --window 10 --warmup 5
	$(UV) run --locked python bench/start_latency.py --quick
	$(UV) run --locked python bench/failover.py --quick
	$(UV) run --locked python bench/api_load.py --quick
	$(UV) run --locked python bench/soak.py --quick
	$(UV) run --locked python bench/ingest_fanout.py --quick
	$(UV) run --locked python bench/destinations.py --quick
	$(UV) run --locked python bench/upload.py --files 4 --recordings 2 --window 12
	$(UV) run --locked python bench/playback.py --runs 1

clean:
	rm -rf .cache/bin .pytest_cache .ruff_cache
