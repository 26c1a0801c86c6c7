"""A clone from a public host runs its own tests: what `make test` reads is in the repository.

`../shared` exists only on the machines this project was built on. The OpenPBS source the
cluster tests build is vendored (`vendor/`, with its licence and sha256); these tests copy the
repository's tracked files (as they are in the working tree) into a directory with no
`../shared` beside it and ask the set-up for what it would build from there.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# What `make test` runs or reads (the Makefile, CI, the schedulers' set-up, the tests).
MAKE_TEST_FILES = ("Makefile", ".ci/run", "tests")
SCRIPT_SUFFIXES = {"", ".sh", ".py", ".mk", ".cfg", ".toml", ".yaml"}


def _tracked(*paths: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", *paths], cwd=ROOT, capture_output=True, check=True
    ).stdout
    return [ROOT / name for name in out.decode().split("\0") if name]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The repository's tracked files (as a clone has them), far from any `shared/`."""
    root = tmp_path_factory.mktemp("clone")
    for path in _tracked():
        if path.is_file():  # a file deleted but not yet committed is in no clone
            target = root / "kdflow" / path.relative_to(ROOT)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    assert not (root / "shared").exists()
    return root / "kdflow"


def test_the_openpbs_source_is_in_the_clone_and_is_the_vendored_one(clone):
    result = subprocess.run(
        ["bash", "tests/cluster/openpbs.sh", "source"], cwd=clone, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    source = Path(result.stdout.strip())
    assert source.is_relative_to(clone / "vendor"), source
    assert (clone / "vendor/OPENPBS-LICENSE").read_text().startswith("-" * 20)


def test_a_damaged_vendored_source_is_refused_by_name(clone, tmp_path):
    tarball = next((clone / "vendor").glob("openpbs-*.tar.gz"))
    saved = tarball.read_bytes()
    try:
        tarball.write_bytes(saved[:-1] + bytes([saved[-1] ^ 1]))
        result = subprocess.run(
            ["bash", "tests/cluster/openpbs.sh", "source"],
            cwd=clone,
            capture_output=True,
            text=True,
        )
    finally:
        tarball.write_bytes(saved)
    assert result.returncode != 0
    assert tarball.name in result.stderr and "sha256" in result.stderr


def test_nothing_make_test_runs_reads_outside_the_repository():
    offenders = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in _tracked(*MAKE_TEST_FILES)
        if path.suffix in SCRIPT_SUFFIXES and path.is_file() and path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if "../shared" in line and not line.lstrip().startswith("#")
    ]
    assert not offenders, "make test must not need ../shared:\n" + "\n".join(offenders)
