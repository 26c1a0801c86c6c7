"""What each job used (`resources_used.*` as the server reports it) against what it asked for,
and the end-of-run report of it (--pbs-efficiency-report).

The server's numbers are the mom's samples: `mem` and `vmem` the peak it saw (sampled every
few seconds, so a short spike between samples is missed), `cput` the CPU time of all the job's
processes, `walltime` the time it ran. They are kept in the registry with the submission
(Submission.usage) when the job's end is recorded, so the report covers jobs that ended while
no controller watched too.
"""

import csv
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .registry import Submission, TargetRecord
from .status import JobInfo, parse_duration

# A job is named in the log when it used less than this share of the memory or walltime it
# asked for (default of --pbs-efficiency-threshold): it holds a node's memory, or the queue's
# backfill window, that other jobs could use.
DEFAULT_EFFICIENCY_THRESHOLD = 0.2

_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(b|w)?\s*\Z", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}
WORD_BYTES = 8  # PBS's `w` unit: a word of the server's machine, 8 bytes on 64-bit hosts

COLUMNS = (
    "rule",
    "wildcards",
    "target",
    "job_id",
    "outcome",
    "mem_requested_mb",
    "mem_used_mb",
    "mem_ratio",
    "walltime_requested_s",
    "walltime_used_s",
    "walltime_ratio",
    "ncpus",
    "cput_s",
    "cpu_ratio",
    "vmem_used_mb",
)


def size_mb(text: str | None) -> float | None:
    """A PBS size (`153600kb`, `2gb`, `512` bytes, `64mw` words) in MB (2**20 bytes)."""
    if text is None:
        return None
    match = _SIZE.match(str(text))
    if not match:
        return None
    number, power, unit = match.groups()
    scale = 1024 ** _POWERS[power.lower()] * (WORD_BYTES if (unit or "").lower() == "w" else 1)
    return float(number) * scale / 2**20


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def job_usage(info: JobInfo) -> dict[str, float]:
    """What the server says the job used and asked for, as numbers (MB, seconds, cpus); only
    the values it reported."""
    used = info.used
    values = {
        "mem_mb": size_mb(used.get("mem")),
        "vmem_mb": size_mb(used.get("vmem")),
        "cput_s": parse_duration(used.get("cput")),
        "walltime_s": parse_duration(used.get("walltime")),
        "ncpus": _number(used.get("ncpus")),
        "mem_requested_mb": size_mb(info.mem_limit),
        "walltime_requested_s": info.walltime_limit,
    }
    return {name: round(float(value), 1) for name, value in values.items() if value is not None}


def peak_mem_mb(submission: Submission) -> float | None:
    """The most memory the server saw the job of `submission` use, if it reported any."""
    return (submission.usage or {}).get("mem_mb")


@dataclass(frozen=True)
class UsageRow:
    """One submission's line of the report."""

    values: dict

    def ratio(self, name: str) -> float | None:
        value = self.values.get(f"{name}_ratio")
        return value if isinstance(value, float) else None


def _ratio(used: float | None, requested: float | None) -> float | None:
    if used is None or not requested:
        return None
    return round(used / requested, 3)


def usage_row(record: TargetRecord, submission: Submission) -> UsageRow:
    usage = submission.usage or {}
    mem_requested = usage.get("mem_requested_mb", submission.mem_mb)
    walltime_requested = usage.get("walltime_requested_s")
    if walltime_requested is None and submission.walltime:
        walltime_requested = parse_duration(submission.walltime)
    mem_used, walltime_used = usage.get("mem_mb"), usage.get("walltime_s")
    ncpus, cput = usage.get("ncpus"), usage.get("cput_s")
    cpu_capacity = walltime_used * ncpus if walltime_used and ncpus else None
    return UsageRow(
        {
            "rule": record.rule or "",
            "wildcards": ",".join(f"{k}={v}" for k, v in (record.wildcards or {}).items()),
            "target": record.name,
            "job_id": submission.job_id,
            "outcome": submission.outcome or "running",
            "mem_requested_mb": mem_requested,
            "mem_used_mb": mem_used,
            "mem_ratio": _ratio(mem_used, mem_requested),
            "walltime_requested_s": walltime_requested,
            "walltime_used_s": walltime_used,
            "walltime_ratio": _ratio(walltime_used, walltime_requested),
            "ncpus": ncpus,
            "cput_s": cput,
            "cpu_ratio": _ratio(cput, cpu_capacity),
            "vmem_used_mb": usage.get("vmem_mb"),
        }
    )


def run_rows(records: Iterable[TargetRecord], since: float) -> list[UsageRow]:
    """A row for each job of this run: every submission with a job id that was submitted or
    ended since `since` (the controller's start), in the order they were submitted."""
    found = [
        (submission.submitted_at, record, submission)
        for record in records
        for submission in record.submissions
        if submission.job_id
        and (submission.submitted_at >= since or (submission.ended_at or 0) >= since)
    ]
    found.sort(key=lambda item: (item[0], item[1].name))
    return [usage_row(record, submission) for _, record, submission in found]


def write_report(path: Path, rows: Iterable[UsageRow]) -> Path:
    """The CSV of `rows` at `path` (directories made); empty cells where the server reported
    nothing (a job it forgot, or a queued job that never ran)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None else v for k, v in row.values.items()})
    return path


def wasteful(rows: Iterable[UsageRow], threshold: float) -> list[tuple[UsageRow, list[str]]]:
    """The rows of jobs that ran to success and used less than `threshold` of the memory or
    walltime they asked for, each with what it used little of (a job killed early says
    nothing about what it needed)."""
    found = []
    for row in rows:
        if row.values["outcome"] != "success":
            continue
        low = [
            f"{name} {ratio:.0%} of the request"
            for name in ("mem", "walltime")
            if (ratio := row.ratio(name)) is not None and ratio < threshold
        ]
        if low:
            found.append((row, low))
    return found


def default_report_path(log_dir: Path, now: float | None = None) -> Path:
    """`<log dir>/efficiency_report_<YYYYmmdd-HHMMSS>.csv`: one report per run, none replaced."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now if now is not None else time.time()))
    return Path(log_dir) / f"efficiency_report_{stamp}.csv"
