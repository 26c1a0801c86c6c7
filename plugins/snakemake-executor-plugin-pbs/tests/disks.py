"""A small tmpfs to fill up: writes then fail with the kernel's own ENOSPC.

Mounting needs root. Without it the tests that need a small disk are skipped, except under CI
(CI=true), where a missing small disk is a failure rather than a silent gap.
"""

import errno
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _unavailable(reason: str):
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@contextmanager
def small_disk(path: Path, size: str = "16m") -> Iterator[Path]:
    """A `size` tmpfs mounted at `path` (created), unmounted afterwards."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        _unavailable("mounting a small tmpfs to fill needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "pbs-test", str(path)],
                       capture_output=True, text=True)  # fmt: skip
    if p.returncode != 0:
        _unavailable(f"cannot mount a tmpfs: {p.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: str | Path) -> None:
    """Grow the file `path` until its file system is full."""
    with open(path, "ab", buffering=0) as f:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    f.write(b"\0" * size)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
