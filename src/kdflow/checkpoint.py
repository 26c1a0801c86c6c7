"""Checkpoints that survive a kill at any instant (atomic writes: kdflow.fileio)."""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Any

from kdflow.fileio import atomic_file

log = logging.getLogger(__name__)


def save_torch(path: str | Path, obj: Any) -> None:
    """torch.save, atomically.

    Serialized in memory first: torch's zip writer turns a failed write (a full disk) into
    "unexpected pos ..." with no path and no errno; a plain write says "No space left on
    device" and atomic_file adds the path.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_file(path) as f:
        f.write(buffer.getbuffer())


class CheckpointError(RuntimeError):
    """No checkpoint could be loaded although one exists."""


class DamagedFile(CheckpointError):
    """A torch file that cannot be loaded, or whose contents do not match their SHA-256."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = Path(path), reason


def previous_path(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def damaged_path(path: Path) -> Path:
    return path.with_name(path.stem + ".damaged" + path.suffix)


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Save `state`, keeping the previous checkpoint as `<name>.prev.pth`.

    A checkpoint that later fails to load (bit rot, a truncating copy, a full disk on a file
    system that lies about fsync) then costs one epoch, not the run.
    """
    path = Path(path)
    if path.exists():
        os.replace(path, previous_path(path))
    save_verified(path, state)


def save_verified(path: str | Path, state: dict[str, Any]) -> None:
    """torch.save `state` atomically with the SHA-256 of its contents (see load_verified)."""
    save_torch(path, {**state, DIGEST_KEY: state_digest(state)})


def load_verified(path: str | Path) -> dict[str, Any]:
    """A dict written by save_verified, its SHA-256 checked; DamagedFile names the file and what
    is wrong with it when it cannot be loaded, is not a dict, or its contents changed."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # any unpickling error means "this file is damaged"
        raise DamagedFile(path, f"{type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise DamagedFile(path, f"not a kdflow file (a {type(state).__name__})")
    digest = state.pop(DIGEST_KEY, None)  # files written before digests have none
    if digest is not None and digest != state_digest(state):
        raise DamagedFile(
            path, "its contents do not match their SHA-256 (bit rot or a damaged copy)"
        )
    return state


# A checkpoint carries the SHA-256 of its own contents: torch.load reads a flipped bit in a
# tensor without complaint, and a run resumed from it would silently differ.
DIGEST_KEY = "sha256"


def state_digest(state: Any) -> str:
    """SHA-256 over a checkpoint's contents (tensors by their bytes, other values by repr),
    in their order; equal before saving and after loading."""
    import hashlib

    import numpy as np
    import torch

    h = hashlib.sha256()

    def feed(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(x.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, np.ndarray):
            h.update(f"N{x.dtype}{x.shape}:".encode())
            h.update(np.ascontiguousarray(x).tobytes())
        elif isinstance(x, dict):
            h.update(f"D{len(x)}:".encode())
            for key, value in x.items():
                feed(key)
                feed(value)
        elif isinstance(x, list | tuple):
            h.update(f"{type(x).__name__[0]}{len(x)}:".encode())
            for value in x:
                feed(value)
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    feed(state)
    return h.hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The newest loadable checkpoint (`path`, else its `.prev`), or None if there is none.

    Every checkpoint that fails to load is reported by path; if one exists but none loads,
    CheckpointError says which files to move away to start over.
    """
    path = Path(path)
    candidates = [p for p in (path, previous_path(path)) if p.exists()]
    problems = []
    for candidate in candidates:
        try:
            state = load_verified(candidate)
            if "epoch" not in state:
                raise DamagedFile(candidate, "not a kdflow checkpoint")
        except DamagedFile as exc:
            problems.append(str(exc))
            log.warning(
                "checkpoint %s cannot be loaded (%s); trying an older one", exc.path, exc.reason
            )
            continue
        if candidate != path:
            log.warning("resuming from the previous checkpoint %s", candidate)
            # Out of the way: the next save would rotate the damaged file over the good
            # previous one, and a kill before the new checkpoint is written would leave none.
            if path.exists():
                try:
                    os.replace(path, damaged_path(path))
                    log.warning("moved the damaged %s to %s", path, damaged_path(path))
                except OSError as exc:
                    log.warning("could not move the damaged %s aside: %s", path, exc)
        return state
    if problems:
        raise CheckpointError(
            "no checkpoint could be loaded:\n  "
            + "\n  ".join(problems)
            + "\nmove these files away to restart the experiment from epoch 0"
        )
    return None
