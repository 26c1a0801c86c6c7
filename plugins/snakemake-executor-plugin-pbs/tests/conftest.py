"""Fixtures of the plugin's tests: a fake PBS on PATH, and a working directory."""

import pytest
from fakes import fake_pbs


@pytest.fixture
def pbs(tmp_path, monkeypatch):
    """The fake PBS of tests/samples/fake_pbs.py, its qsub/qstat/qdel first on PATH."""
    fake = fake_pbs.FakePbs(tmp_path / "pbs")
    for key, value in fake.env().items():
        monkeypatch.setenv(key, value)
    return fake


@pytest.fixture
def workdir(tmp_path):
    path = tmp_path / "work"
    path.mkdir()
    return path
