# Two commands for a new user: `make demo` and `make test`; each sets itself up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdflow-installed
# Cluster facts for the demo sweep through profiles/local come from the profile.
DEMO := --profile profiles/local --configfile config/demo.yaml --replace-workflow-config

.PHONY: setup demo test lint format cluster bench clean-demo

setup: $(STAMP)

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml; pip takes them from the
# local wheel cache where there is one.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	@touch $@

demo: setup
	$(BIN)/snakemake $(DEMO)
	@echo; cat results/summary/results.md; ls results/summary/*.png

# The real single-node Slurm (with PBS-format shims) that tests/cluster runs against.
# Needs root on Debian/Ubuntu; elsewhere the cluster tests skip (never in CI, where they fail).
cluster:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		tests/cluster/slurm.sh install && tests/cluster/slurm.sh start; \
	else echo "cluster: not root on Debian: tests/cluster will be skipped"; fi

test: setup cluster
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --configfile config/demo.yaml --replace-workflow-config

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt .

bench: setup
	$(BIN)/python bench/trainer.py

clean-demo:
	rm -rf results logs .snakemake data/digits
