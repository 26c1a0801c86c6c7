"""How far an experiment got: the `epoch` its trainer last wrote beside the target's output."""

import json
from pathlib import Path


def progress_path(first_output: str | Path, progress_file: str) -> Path:
    """The progress file lives in the directory of the target's first output file."""
    return Path(first_output).parent / progress_file


def read_progress(first_output: str | Path, progress_file: str) -> int | None:
    """The `epoch` field of the progress file; None when there is no readable number."""
    try:
        data = json.loads(progress_path(first_output, progress_file).read_text())
        epoch = data.get("epoch") if isinstance(data, dict) else None
        return int(epoch) if epoch is not None else None
    except (OSError, ValueError, TypeError):
        return None


def advanced(before: int | None, after: int | None) -> bool:
    """Did the experiment get further between two readings?"""
    return after is not None and (before is None or after > before)
