# Every target creates .venv on first use; nothing else needs to be installed by hand.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
ARGS    ?=

.PHONY: help install run test test-all test-gpu lint tables bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[eval,dev]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install the project with its eval and dev extras

run: $(STAMP)  ## train the default config end to end, then print its table (ARGS=overrides)
	$(BIN)/adagc-repro run $(ARGS)
	$(BIN)/adagc-repro tables

test: $(STAMP)  ## CPU test suite (no slow, no GPU tests)
	$(BIN)/python -m pytest -q -m "not slow and not gpu" $(ARGS)

test-all: $(STAMP)  ## every CPU test, slow ones included
	$(BIN)/python -m pytest -q -m "not gpu" $(ARGS)

test-gpu: $(STAMP)  ## GPU tests (needs CUDA)
	$(BIN)/python -m pytest -q -m gpu $(ARGS)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check adagc_repro tests scripts

tables: $(STAMP)  ## rebuild the tables from results/
	$(BIN)/adagc-repro tables

bench: $(STAMP)  ## clipper cost per step (ARGS="--sizes 134m"); `adagc-repro bench step model=...` for the loop
	$(BIN)/adagc-repro bench clip $(ARGS)

clean:  ## remove the venv and caches (results/ is kept)
	rm -rf $(VENV) .pytest_cache .ruff_cache
