"""kdflow's file I/O: atomic writes (one fsync rule) and JSON reads, for every part that writes
results or reads them (trainer, checkpoints, dashboard, plots, summary, datasets).

A reader or a kill sees a file's old contents or its new ones, never a mix: each write goes to
a temporary file in the same directory, is fsynced, and replaces the file by rename. The
executor plugin keeps its own copy of this rule (registry.write_atomic): it must not import
kdflow.

Every file gets the mode the user's umask gives (0644 under 0022, 0640 under 0027), as a plain
`open()` would: a research group reads its results from a shared project directory.
`tempfile.mkstemp` would make each one 0600 whatever the umask.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
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


def create_temp(directory: Path, prefix: str, suffix: str = ".tmp") -> tuple[int, str]:
    """A new file in `directory`, open for writing: (fd, path). Unlike `tempfile.mkstemp`
    (always 0600) its mode is 0666 less the umask, applied by the kernel as for any new file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(100):
        path = os.path.join(directory, f"{prefix}{secrets.token_hex(6)}{suffix}")
        try:
            return os.open(path, flags, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name in {directory} for {prefix}*{suffix}")


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """A binary file that replaces `path` on success, so a reader or a kill sees old or new.

    The temp file lives in the same directory (os.replace is atomic only within a file system);
    fsync before the rename so the new name never points at unwritten blocks, and fsync the
    directory so the rename itself survives a node crash. On any error the temp file goes.
    """
    path = Path(path)
    try:
        fd, tmp = create_temp(path.parent, prefix=f".{path.name}.")
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
