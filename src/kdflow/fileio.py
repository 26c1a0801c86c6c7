"""kdflow's file I/O: atomic writes (one fsync rule) and JSON reads, for every part that writes
results or reads them (trainer, checkpoints, dashboard, plots, summary, datasets).

A reader or a kill sees a file's old contents or its new ones, never a mix: each write goes to
a temporary file in the same directory, is fsynced, and replaces the file by rename. The
executor plugin keeps its own copy of this rule (registry.write_atomic): it must not import
kdflow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger(__name__)


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable. Best effort, by one rule for every kdflow file:
    it runs after the rename, so the new file is already what readers see; a file system that
    cannot fsync a directory (EINVAL on some network and FUSE mounts) must not turn a write
    that happened into an error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as exc:
        log.debug("cannot open %s to fsync it: %s", directory, exc)
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        log.debug("cannot fsync %s: %s", directory, exc)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` on success, so a reader or a kill sees old or new.

    The temp file lives in the same directory (os.replace is atomic only within a file system);
    fsync before the rename so the new name never points at unwritten blocks, and fsync the
    directory so the rename itself survives a node crash. On any error the temp file goes.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _naming(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError):  # a full disk, a quota: say which file could not be written
            raise _naming(exc, path) from exc
        raise
    fsync_dir(path.parent)


def _naming(exc: OSError, path: Path) -> OSError:
    """`exc` with the path in its message (a failed write() or fsync() names no file)."""
    if str(path) in str(exc):
        return exc
    return OSError(exc.errno, f"cannot write {path}: {exc.strerror or exc}")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_file(path) as f:
        f.write(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None if it is missing or unreadable (logged by path)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None
    if not isinstance(data, dict):
        log.warning("ignoring %s: not a JSON object", path)
        return None
    return data
