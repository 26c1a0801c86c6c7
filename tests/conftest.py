"""The suite's tiers (tests/README.md). Every test is in exactly one, marked by its name, and
runs in this order:

  fast     no scheduler, no training longer than seconds: `make check`; first in `make test`,
           so that a failure shows in minutes
  slow     trainings, Snakemake runs and real sshd/cron on this machine (marked `slow`)
  cluster  tests/cluster: the real single-node OpenPBS and Slurm
  chaos    tests/chaos: kills, faults, bad input and load, on the real OpenPBS
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
TIERS = ("fast", "slow", "cluster", "chaos")
DIRECTORY_TIERS = {HERE / "cluster": "cluster", HERE / "chaos": "chaos"}


def pytest_configure(config):
    config.addinivalue_line("markers", "fast: the fast tier (make check): no scheduler")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "cluster: needs a real single-node scheduler")
    config.addinivalue_line("markers", "chaos: tests/chaos (KDFLOW_CHAOS=full for full counts)")


def tier(item) -> str:
    path = Path(str(item.fspath)).resolve()
    for directory, name in DIRECTORY_TIERS.items():
        if directory in path.parents:
            return name
    return "slow" if item.get_closest_marker("slow") else "fast"


@pytest.hookimpl(tryfirst=True)  # before `-m` selects by these marks
def pytest_collection_modifyitems(config, items):
    for item in items:
        item.add_marker(tier(item))
    items.sort(key=lambda item: TIERS.index(tier(item)))  # stable: file order within a tier
