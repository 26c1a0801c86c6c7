"""How a PBS job ended: success, walltime kill, memory kill, other kill, out of disk space,
or error."""

import re
from dataclasses import dataclass
from enum import Enum

from .status import JobInfo


class Kind(Enum):
    SUCCESS = "success"
    WALLTIME = "walltime"  # killed at its walltime limit: resubmit
    MEMORY = "memory"  # killed for using more memory than requested: resubmit with more
    KILLED = "killed"  # node failure, preemption, qdel by someone else, vanished: resubmit
    STORAGE = "storage"  # failed writing to a full disk or quota: wait, then resubmit
    ERROR = "error"  # the job itself failed


@dataclass(frozen=True)
class Outcome:
    kind: Kind
    reason: str  # one human sentence
    exit_status: int | None = None


# Exit_status values PBS Pro sets itself (src/include/job.h, JOB_EXEC_*).
EXIT_WALLTIME = -29
EXIT_MEMORY = {-27: "mem", -26: "vmem"}
# Killed for exceeding cpu limits: resubmitting the same job would exceed them again.
EXIT_CPU_LIMITS = {-24: "ncpus (burst)", -25: "ncpus (sum)", -28: "cput"}

# The job shell killed by SIGTERM/SIGKILL (256+N), or exiting 128+N through our TERM trap.
SIGNAL_KILLS = {271: "SIGTERM", 265: "SIGKILL", 143: "SIGTERM", 137: "SIGKILL"}

_WALLTIME_MESSAGE = re.compile(r"job killed: walltime[^\n]*", re.IGNORECASE)
_MEMORY_MESSAGE = re.compile(
    r"job killed: (?:p?mem|vmem)[^\n]*"
    r"|exceeded (?:the )?(?:job )?memory limit[^\n]*"
    r"|mem(?:ory)? limit exceeded[^\n]*"
    r"|oom[-_ ]kill[^\n]*"
    r"|out of memory: kill[^\n]*"
    r"|\bMemoryError\b[^\n]*",  # a Python host-memory error; CUDA's is OutOfMemoryError
    re.IGNORECASE,
)

# A write refused for space (ENOSPC, EDQUOT): the line that says so, e.g. Python's
# "OSError: [Errno 28] No space left on device: '<path>'" or cp's "cp: error writing '<path>':
# No space left on device".
_STORAGE_MESSAGE = re.compile(
    r"[^\n]*(?:No space left on device|Disk quota exceeded)[^\n]*", re.IGNORECASE
)


def _message(pattern: re.Pattern, stderr_tail: str) -> str | None:
    matches = pattern.findall(stderr_tail or "")
    return matches[-1].strip() if matches else None


def _at_walltime_limit(info: JobInfo | None) -> bool:
    return (
        info is not None
        and info.walltime_used is not None
        and info.walltime_limit is not None
        and info.walltime_used >= info.walltime_limit
    )


def _walltime_text(info: JobInfo) -> str:
    return f"used walltime {info.walltime_used}s of {info.walltime_limit}s"


def classify(info: JobInfo | None, exit_record: int | None, stderr_tail: str = "") -> Outcome:
    """Classify a job that is no longer alive.

    `info` is what qstat says (None when the server has forgotten the job), `exit_record`
    the exit code the job script wrote itself (None if it could not), `stderr_tail` the end
    of the job's stderr file, where PBS writes why it killed a job.
    """
    code = info.exit_status if info is not None and info.exit_status is not None else exit_record
    walltime_message = _message(_WALLTIME_MESSAGE, stderr_tail)
    memory_message = _message(_MEMORY_MESSAGE, stderr_tail)

    if code == 0:
        return Outcome(Kind.SUCCESS, "exit status 0", code)
    if code == EXIT_WALLTIME:
        return Outcome(Kind.WALLTIME, "killed at its walltime limit (Exit_status -29)", code)
    if walltime_message:
        return Outcome(Kind.WALLTIME, f"killed at its walltime limit: {walltime_message}", code)
    if code in EXIT_MEMORY:
        return Outcome(
            Kind.MEMORY,
            f"killed for exceeding its {EXIT_MEMORY[code]} limit (Exit_status {code})",
            code,
        )
    if memory_message:
        return Outcome(Kind.MEMORY, f"killed for exceeding its memory: {memory_message}", code)
    if code is None:
        return Outcome(
            Kind.KILLED,
            "vanished without an exit status: node failure, preemption or qdel",
            None,
        )
    if code in EXIT_CPU_LIMITS:
        return Outcome(
            Kind.ERROR,
            f"killed for exceeding its {EXIT_CPU_LIMITS[code]} limit (Exit_status {code})",
            code,
        )
    if code in SIGNAL_KILLS or code < 0 or code > 256:
        return _killed(info, code)
    storage_message = _message(_STORAGE_MESSAGE, stderr_tail)
    if storage_message:
        return Outcome(
            Kind.STORAGE, f"exit status {code}, out of disk space: {storage_message}", code
        )
    return Outcome(Kind.ERROR, f"exit status {code}", code)


def _killed(info: JobInfo | None, code: int) -> Outcome:
    """A job killed by a signal or by PBS: at its walltime limit, or by someone/something else."""
    if code in SIGNAL_KILLS:
        how = f"killed by {SIGNAL_KILLS[code]} (exit status {code})"
    elif code > 256:
        how = f"killed by signal {code - 256} (exit status {code})"
    else:
        how = f"ended by PBS with Exit_status {code}"
    if _at_walltime_limit(info):
        return Outcome(Kind.WALLTIME, f"{how} at its walltime limit, {_walltime_text(info)}", code)
    detail = f", {_walltime_text(info)}" if info is not None and info.walltime_limit else ""
    comment = f" ({info.comment})" if info is not None and info.comment else ""
    return Outcome(Kind.KILLED, f"{how}{detail}: node failure, preemption or qdel{comment}", code)
