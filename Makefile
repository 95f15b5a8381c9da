# mailfold: the two commands are `make run` and `make test`.
SHELL := /bin/bash
.DEFAULT_GOAL := help
PYTHON ?= python3.11
UV_VERSION := 0.13.9
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
export UV_PYTHON := $(PYTHON)
export UV_LINK_MODE := copy

.PHONY: help install run test test-unit lint format bench clean

help:
	@echo "make run    start the whole pipeline on embedded NATS and PostgreSQL"
	@echo "make test   run the whole test suite against real servers"
	@echo "make lint   ruff and mypy (strict)"
	@echo "make bench  run every benchmark in bench/ into bench/results.json"

.tools/bin/uv:
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet "uv==$(UV_VERSION)"

install: $(UV)
	$(UV) sync --frozen

run: install
	$(UV) run --frozen mailfold dev

test: install
	$(UV) run --frozen pytest -p no:cacheprovider $(PYTEST_ARGS)

test-unit: install
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
