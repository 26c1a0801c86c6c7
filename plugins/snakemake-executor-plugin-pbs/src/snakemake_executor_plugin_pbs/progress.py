"""How far a job got: a number the job itself keeps in a small JSON file beside its output.

The hook is optional (setting `progress_file`, default none). A job that saves its state as it
works (a checkpoint) and resumes from it when run again can rewrite, say, `progress.json`
beside its output with `{"progress": 12}` whenever it gets further. The executor reads
that number when it submits a job and again when the job ended: a job that got further is
resubmitted after a walltime kill, a kill or an error without counting towards the limits of
failures in a row. Without the file no job counts as having got further.

A job whose outputs lie in several directories (one process doing several pieces of work,
each in its own directory) has a progress file in each: its progress is their sum, so it got
further when any of them did.
"""

import json
import math
from collections.abc import Iterable
from pathlib import Path

DEFAULT_PROGRESS_KEY = "progress"

Progress = int | float


def progress_path(first_output: str | Path, progress_file: str) -> Path:
    """The progress file lives in the directory of an output file."""
    return Path(first_output).parent / progress_file


def read_progress(
    first_output: str | Path, progress_file: str | None, key: str = DEFAULT_PROGRESS_KEY
) -> Progress | None:
    """The number in field `key` of the progress file; None when there is no progress file
    setting, no file, or no readable finite number in it (a file caught mid-write, say)."""
    if not progress_file:
        return None
    try:
        data = json.loads(progress_path(first_output, progress_file).read_text())
    except (OSError, ValueError):
        return None
    value = data.get(key) if isinstance(data, dict) else None
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    return int(number) if number.is_integer() else number


def job_progress(
    outputs: Iterable[str | Path], progress_file: str | None, key: str = DEFAULT_PROGRESS_KEY
) -> Progress | None:
    """The sum of the progress files in the directories of a job's outputs (each directory
    once); a file that cannot be read adds nothing. None when none can be read."""
    directories = dict.fromkeys(Path(output).parent for output in outputs)
    values = [read_progress(d / "_", progress_file, key) for d in directories]
    values = [v for v in values if v is not None]
    return sum(values) if values else None


def advanced(before: Progress | None, after: Progress | None) -> bool:
    """Did the job get further between two readings?"""
    return after is not None and (before is None or after > before)
