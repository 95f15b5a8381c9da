# mailfold: the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
# Python 3.11: python3.11 if on PATH, else python3 (checked to be 3.11 when uv is bootstrapped).
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3 2>/dev/null)
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export UV_LINK_MODE := copy

.PHONY: help install system-packages run test test-unit lint format bench clean

help:
	@echo "make run    start the whole pipeline on embedded NATS and PostgreSQL"
	@echo "make test   run the whole test suite against real servers"
	@echo "make lint   ruff and mypy (strict)"
	@echo "make bench  run every benchmark in bench/ into bench/results.json"

.tools/bin/uv:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
		|| { echo "Python 3.11 is required (found: $(PYTHON))"; exit 1; }
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

install: $(UV)
	$(UV) sync --frozen

# Debian packages the tests need (promtool, chromium, Dovecot): installed when missing, as root.
system-packages:
	@scripts/system-packages.sh scripts/system-packages.txt

run: install
	$(UV) run --frozen mailfold dev

test: install system-packages
	$(UV) run --frozen pytest -p no:cacheprovider $(PYTEST_ARGS)

test-unit: install system-packages
	$(UV) run --frozen pytest -p no:cacheprovider tests/unit $(PYTEST_ARGS)

lint: install
	$(UV) run --frozen ruff check .
	$(UV) run --frozen ruff format --check .
	$(UV) run --frozen mypy src libs/*/src services/*/src tests bench

format: install
	$(UV) run --frozen ruff format .
	$(UV) run --frozen ruff check --fix .

bench: install
	$(UV) run --frozen python bench/run_all.py

clean:
	rm -rf .venv .tools .data .mypy_cache .ruff_cache
