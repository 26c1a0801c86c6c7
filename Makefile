# Two commands for a new user: `make demo` and `make test`; each sets itself up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kdflow-installed
# Cluster facts for the demo sweep through profiles/local come from the profile.
DEMO := --profile profiles/local --configfile config/demo.yaml --replace-workflow-config

.PHONY: setup demo test check test-loaded test-onecore lint package format cluster bench clean-demo chaos

setup: $(STAMP)

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml; pip takes them from the
# local wheel cache where there is one.
PLUGIN := plugins/snakemake-executor-plugin-pbs
# pip's progress, one line per package (the first set-up takes about 2.5 minutes).
PIP_PROGRESS := { grep --line-buffered '^Collecting' || true; }
$(STAMP): pyproject.toml $(PLUGIN)/pyproject.toml
	@echo "setup: $(VENV) with kdflow, the PBS plugin and their dependencies (torch, snakemake;" \
		"about 2.5 minutes the first time)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@set -o pipefail; $(BIN)/python -m pip install --progress-bar off --upgrade pip | $(PIP_PROGRESS)
	@set -o pipefail; $(BIN)/python -m pip install --progress-bar off \
		-e '$(PLUGIN)[test]' -e '.[dev]' | $(PIP_PROGRESS)
	@touch $@
	@echo "setup: done; to use the commands yourself: source $(VENV)/bin/activate"

demo: setup
	$(BIN)/snakemake $(DEMO)
	@echo; cat results/summary/results.md; ls results/summary/*.png

# What the tests run against (tests/cluster): a real single-node OpenPBS (built from the
# vendored source into /opt/pbs once, ~3-6 min; jobs come from the user kdtest, who runs kdflow
# from a venv of its own, made once per pyproject.toml), the real single-node Slurm for
# profiles/slurm; crontab, sshd and rsync (tests/test_cron.py). Needs root on Debian/Ubuntu; elsewhere those tests skip (never in CI,
# where they fail).
OPS_PACKAGES := cron openssh-server openssh-client rsync
cluster:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=$$(for p in $(OPS_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
		if [ -n "$$missing" ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				--no-install-recommends $$missing >/dev/null; fi; \
		bash tests/cluster/slurm.sh install && bash tests/cluster/slurm.sh start && \
		bash tests/cluster/openpbs.sh install && bash tests/cluster/openpbs.sh start && \
		bash tests/cluster/openpbs.sh venv; \
	else echo "cluster: not root on Debian: the scheduler, cron and ssh tests will be skipped"; fi

# The suite in tiers (tests/conftest.py, tests/README.md): the fast tier first, so that a
# failure shows in minutes; then trainings and Snakemake runs here, the real schedulers, and
# the chaos tests at small counts (`make chaos` runs the full counts).
PYTEST := $(BIN)/python -m pytest -q
FAST := -m fast
REST := -m "not fast"
define tiers
	$(1) $(PYTEST) $(FAST)
	$(1) $(PYTEST) $(REST)
endef

test: setup cluster
	$(call tiers,)

# The fast tier alone: no scheduler, no training longer than seconds
check: setup
	$(PYTEST) $(FAST)

# The same suite on a machine made slow on purpose (tests/load.sh): a busy loop on every core
# beside it, or it and the schedulers' jobs confined to one core. It must pass as it does idle.
test-loaded: setup cluster
	$(call tiers,tests/load.sh burn)

test-onecore: setup cluster
	$(call tiers,tests/load.sh onecore)

# Chaos and load at full counts (tests/chaos, which `make test` runs at small counts): kills,
# scheduler and storage faults, bad input; prints the summary table. Record it in the docs
# with: $(BIN)/python tests/chaos/summary.py $(CHAOS_REPORT) --docs docs/RELIABILITY.md
CHAOS_REPORT ?= logs/chaos/report.jsonl
chaos: setup cluster
	@mkdir -p $(dir $(CHAOS_REPORT)) && rm -f $(CHAOS_REPORT)
	KDFLOW_CHAOS=full KDFLOW_CHAOS_REPORT=$(CHAOS_REPORT) $(BIN)/python -m pytest -q tests/chaos; \
		status=$$?; $(BIN)/python tests/chaos/summary.py $(CHAOS_REPORT); exit $$status

lint: setup
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint --configfile config/demo.yaml --replace-workflow-config

# The PBS plugin as it would be published: sdist and wheel built the way PyPI users get them
# (build isolation takes setuptools from the package index), then twine's check of their
# metadata and of the README as PyPI renders it.
PACKAGE_DIR := build/plugin-dist
package: setup
	rm -rf $(PACKAGE_DIR)
	$(BIN)/python -m build --outdir $(PACKAGE_DIR) $(PLUGIN)
	$(BIN)/twine check --strict $(PACKAGE_DIR)/*

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .
	$(BIN)/snakefmt .

bench: setup
	$(BIN)/python bench/trainer.py

clean-demo:
	rm -rf results logs .snakemake data/digits
