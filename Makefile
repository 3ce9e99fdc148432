# Developer entry points. Every target bootstraps first (quietly when nothing is to do),
# so a fresh Debian checkout needs only `make run` or `make test`.

SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV := .venv
BOOTSTRAP := scripts/bootstrap.sh
CONFIG ?=
PYTEST_ARGS ?= -n 2 tests
LINT_PATHS := src tests bench
BENCH_ARGS ?=

.PHONY: help venv run test lint bench bench-quick bench-routing bench-rollover soak clean

help:
	@echo "ecluse - make targets:"
	@echo "  make venv     install system packages if missing, create .venv, install ecluse"
	@echo "  make run      start a throwaway PostgreSQL and ecluse on 127.0.0.1:6432"
	@echo "                (make run CONFIG=path/to/ecluse.ini uses a PgBouncer-format config)"
	@echo "  make test     ruff, then the test suite (PYTEST_ARGS='$(PYTEST_ARGS)')"
	@echo "  make lint     ruff only"
	@echo "  make bench    compare ecluse with PgBouncer and a direct connection"
	@echo "                (~30 min on 2 cores; BENCH_ARGS='--no-tls --clients 10,100' etc.)"
	@echo "  make bench-quick  the same in a few minutes, to check it works (not to measure)"
	@echo "  make bench-routing  what the read/write split and sharding cost per transaction"
	@echo "  make bench-rollover  a rolling restart under 10,000 idle clients: time, survivors"
	@echo "  make soak     ~8 min of pgbench through ecluse, then consistency checks"
	@echo "  make clean    remove .venv, .ecluse-dev and caches"

venv:
	@bash $(BOOTSTRAP)

run: venv
ifeq ($(strip $(CONFIG)),)
	exec $(VENV)/bin/ecluse --dev
else
	exec $(VENV)/bin/ecluse $(CONFIG)
endif

lint: venv
	$(VENV)/bin/ruff check $(LINT_PATHS)

test: lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench:
	@bash $(BOOTSTRAP) bench
	$(VENV)/bin/python bench/run.py $(BENCH_ARGS)

bench-quick:
	@bash $(BOOTSTRAP) bench
	$(VENV)/bin/python bench/run.py --quick $(BENCH_ARGS)

bench-routing:
	@bash $(BOOTSTRAP) bench
	$(VENV)/bin/python bench/routing_cost.py $(BENCH_ARGS)

bench-rollover:
	@bash $(BOOTSTRAP) bench
	$(VENV)/bin/python bench/rollover.py $(BENCH_ARGS)

soak:
	@bash $(BOOTSTRAP) bench
	$(VENV)/bin/python bench/soak.py

clean:
	rm -rf $(VENV) .ecluse-dev .pytest_cache .ruff_cache .hypothesis build src/*.egg-info
	find src -name '*.so' -delete -o -name '_*.c' -path '*/ecluse/*' -delete
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
