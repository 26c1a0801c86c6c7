"""What comes after a job ended: report success, resubmit (with how much memory), or give up."""

import math
from dataclasses import dataclass
from enum import Enum

from .classify import Kind, Outcome
from .progress import Progress, advanced
from .registry import Submission, TargetRecord
from .usage import peak_mem_mb


class Action(Enum):
    SUCCEED = "succeed"
    RESUBMIT = "resubmit"
    FAIL = "fail"


@dataclass(frozen=True)
class Limits:
    """How long to keep trying when jobs end without getting further."""

    max_error_retries: int = 2  # errors in a row without progress that are retried
    max_stalled_walltime_kills: int = 2  # walltime kills in a row without progress, then stop
    max_kill_retries: int = 5  # node failures/preemptions/qdel in a row without progress
    mem_growth: float = 1.5  # factor on mem_mb after a memory kill
    max_mem_mb: int | None = None  # memory is never raised above this
    # Out of disk space (or quota): no resubmission for storage_wait seconds, doubled with each
    # such failure in a row up to max_storage_wait (or storage_wait, if longer); given up
    # after max_storage_failures.
    storage_wait: float = 600.0
    max_storage_wait: float = 3600.0
    max_storage_failures: int = 12


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str


def reset_stall_counters(record: TargetRecord) -> None:
    """The failures-in-a-row counters start from zero (progress, or a retry on purpose)."""
    record.walltime_stalls = 0
    record.kills_without_progress = 0
    record.errors_without_progress = 0
    record.storage_failures = 0


def _progress_text(record: TargetRecord) -> str:
    if record.last_progress is None:
        return "no progress measure: see --pbs-progress-file"
    return f"progress {record.last_progress}"


def _fail(record: TargetRecord, reason: str) -> Decision:
    record.failed = reason
    return Decision(Action.FAIL, reason)


def decide(
    record: TargetRecord,
    submission: Submission,
    outcome: Outcome,
    progress: Progress | None,
    limits: Limits,
    now: float,
) -> Decision:
    """Record how `submission` ended in `record` (counters, memory) and decide what is next.

    `progress` is the progress file's number when the job ended (None without a progress
    file); the job made progress if that is further than when it was submitted. Without a
    progress measure no job ever made progress, so every failure counts towards its limit of
    failures in a row.
    """
    progressed = advanced(submission.progress_at_submit, progress)
    submission.outcome = outcome.kind.value
    submission.reason = outcome.reason
    submission.ended_at = now
    if progress is not None:
        record.last_progress = progress
    if outcome.kind is Kind.SUCCESS:
        reset_stall_counters(record)
        return Decision(Action.SUCCEED, "done")
    if progressed:
        reset_stall_counters(record)
    if outcome.kind is Kind.WALLTIME:
        return _after_walltime_kill(record, progressed, limits)
    if outcome.kind is Kind.MEMORY:
        return _after_memory_kill(record, submission, limits)
    if outcome.kind is Kind.KILLED:
        return _after_kill(record, progressed, limits)
    if outcome.kind is Kind.STORAGE:
        return _after_storage_failure(record, limits, now)
    return _after_error(record, progressed, limits)


def _after_walltime_kill(record: TargetRecord, progressed: bool, limits: Limits) -> Decision:
    record.walltime_kills += 1
    if not progressed:
        record.walltime_stalls += 1
        if record.walltime_stalls >= limits.max_stalled_walltime_kills:
            return _fail(
                record,
                f"{record.walltime_stalls} walltime kills in a row without progress "
                f"({_progress_text(record)}); give the rule a longer runtime",
            )
    return Decision(Action.RESUBMIT, "walltime kill: resubmitted")


def _after_memory_kill(record: TargetRecord, submission: Submission, limits: Limits) -> Decision:
    """Resubmit with more memory: the request or, where the server saw the job use more
    before it killed it (the mom samples, so it may), that peak, times mem_growth, capped."""
    record.memory_kills += 1
    if submission.select:
        return _fail(
            record,
            f"memory kill of a job whose rule gives its own select ({submission.select}): the "
            "plugin does not change a rule's select; raise mem in its pbs_select",
        )
    current = submission.mem_mb or record.mem_mb
    if not current:
        return _fail(record, "memory kill, but the job requested no memory: set mem_mb")
    if limits.max_mem_mb and current >= limits.max_mem_mb:
        return _fail(record, f"memory kill at {current} MB, the max_mem_mb cap")
    peak = peak_mem_mb(submission)
    base = max(current, peak or 0)
    grown = math.ceil(base * limits.mem_growth)
    if limits.max_mem_mb:
        grown = min(grown, limits.max_mem_mb)
    record.mem_mb = max(record.mem_mb or 0, grown)
    seen = f", {peak:.0f} MB used at the last sample" if peak else ""
    return Decision(
        Action.RESUBMIT,
        f"memory kill at {current} MB{seen}: resubmitted with {record.mem_mb} MB",
    )


def _after_kill(record: TargetRecord, progressed: bool, limits: Limits) -> Decision:
    if not progressed:
        record.kills_without_progress += 1
        if record.kills_without_progress > limits.max_kill_retries:
            return _fail(
                record, f"killed {record.kills_without_progress} times in a row without progress"
            )
    return Decision(Action.RESUBMIT, "killed: resubmitted")


def _after_storage_failure(record: TargetRecord, limits: Limits, now: float) -> Decision:
    """A full disk fails every job at once and stays full until someone frees space: wait
    (longer each time) instead of spending the error retries in seconds."""
    record.storage_failures += 1
    if record.storage_failures > limits.max_storage_failures:
        return _fail(
            record,
            f"out of disk space {record.storage_failures} times in a row; free space "
            "(or raise the quota) first",
        )
    longest = max(limits.storage_wait, limits.max_storage_wait)
    wait = min(limits.storage_wait * 2 ** (record.storage_failures - 1), longest)
    record.hold_until = now + wait
    return Decision(
        Action.RESUBMIT,
        f"out of disk space ({record.storage_failures} of {limits.max_storage_failures}): "
        f"resubmitted in {wait / 60:.0f} min",
    )


def _after_error(record: TargetRecord, progressed: bool, limits: Limits) -> Decision:
    if progressed:
        return Decision(Action.RESUBMIT, "failed after making progress: resubmitted")
    record.errors_without_progress += 1
    if record.errors_without_progress > limits.max_error_retries:
        return _fail(
            record,
            f"failed {record.errors_without_progress} times in a row without progress",
        )
    return Decision(
        Action.RESUBMIT,
        f"failed without progress: retry {record.errors_without_progress} "
        f"of {limits.max_error_retries}",
    )
