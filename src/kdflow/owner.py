"""Who trains an experiment, and whether that owner is still alive, under PBS, Slurm or locally.

Two writers in one experiment directory corrupt it, and the workflow alone cannot always
prevent a second one: after a controller dies, Snakemake's Slurm plugin (and a controller
started by hand, in another directory, or after `--unlock`) submits a second copy of a job
that is still running. So every trainer records its owner in status.json and, before it
writes anything, looks at the owner the last trainer recorded:

- the same owner as itself (a resubmission PBS gave the same id, a requeued Slurm job, the
  same process): go ahead;
- another owner that its scheduler (or, for a local run, the operating system) says is alive:
  refuse, with `AlreadyOwned`;
- another owner that has ended: take over (the run resumes from its checkpoint);
- no answer (qstat or squeue failed or timed out, a process on another host): go ahead with a
  warning. An unanswered scheduler must not stall a sweep, and only positive evidence that the
  other owner lives stops a trainer.

The trainer knows no scheduler: scripts/train.py hands it `claim`. This module imports the PBS
executor plugin only inside the PBS probe, for its one shared qstat parser.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

log = logging.getLogger("kdflow.owner")

PROBE_TIMEOUT = 60  # seconds qstat / squeue may take before the answer is "unknown"

# squeue's %T. Alive: the job runs, will run, or will run again under the same id (requeued,
# held after a requeue); its processes may write now or later. Ended: final states. Any other
# word is not evidence either way.
SLURM_ALIVE = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "STOPPED",
        "SIGNALING",
        "STAGE_OUT",
        "RESIZING",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESV_DEL_HOLD",
        "SPECIAL_EXIT",
    }
)
SLURM_ENDED = frozenset(
    {
        "COMPLETED",
        "CANCELLED",
        "FAILED",
        "TIMEOUT",
        "NODE_FAIL",
        "PREEMPTED",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
        "REVOKED",
    }
)
# what squeue -j says about a job slurmctld no longer knows: it ended more than MinJobAge ago
SLURM_FORGOTTEN = "Invalid job id specified"


class AlreadyOwned(RuntimeError):
    """Another live job or process is training this experiment; a second writer would
    corrupt it."""


class Liveness(Enum):
    ALIVE = "alive"
    ENDED = "ended"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Verdict:
    """A probe's answer, and what the scheduler or the operating system said (for messages)."""

    liveness: Liveness
    detail: str


@dataclass(frozen=True)
class Owner:
    """The trainer that owns an experiment: the job it runs in (scheduler "pbs" or "slurm",
    job id) or a local process (scheduler "local", job id None), its host and its pid.

    `started` is the process's start on its host (Linux: boot id and start time in clock ticks,
    from /proc): with it a live process is told from a later one that was given the same pid.
    """

    scheduler: str
    job_id: str | None
    host: str
    pid: int
    started: str | None = None

    def record(self) -> dict[str, Any]:
        """This owner as status.json's `owner`."""
        return {
            "scheduler": self.scheduler,
            "job_id": self.job_id,
            "host": self.host,
            "pid": self.pid,
            "started": self.started,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Owner | None:
        try:
            return cls(
                scheduler=str(record["scheduler"]),
                job_id=None if record.get("job_id") is None else str(record["job_id"]),
                host=str(record["host"]),
                pid=int(record["pid"]),
                started=record.get("started"),
            )
        except (KeyError, TypeError, ValueError):
            return None

    def is_same(self, other: Owner) -> bool:
        """Are they the same owner? A job is its id (a resubmission PBS gave the same id, a
        requeued Slurm job, is the owner again, in a new process); a local run is its process."""
        if self.job_id is not None or other.job_id is not None:
            return (self.scheduler, self.job_id) == (other.scheduler, other.job_id)
        return (self.host, self.pid) == (other.host, other.pid)

    def __str__(self) -> str:
        process = f"process {self.pid} on {self.host}"
        if self.scheduler == "pbs":
            return f"PBS job {self.job_id} ({process})"
        if self.scheduler == "slurm":
            return f"Slurm job {self.job_id} ({process})"
        return process

    def how_to_stop(self) -> str:
        if self.scheduler == "pbs":
            return f"`qdel {self.job_id}`"
        if self.scheduler == "slurm":
            return f"`scancel {self.job_id}`"
        return f"`kill {self.pid}` on {self.host}"


def current(environ: Mapping[str, str] | None = None) -> Owner:
    """This process as an owner: a PBS job (PBS_JOBID), a Slurm job (SLURM_JOB_ID), or local."""
    env = os.environ if environ is None else environ
    pid = os.getpid()
    where = {"host": socket.gethostname(), "pid": pid, "started": process_start(pid)}
    if env.get("PBS_JOBID"):
        return Owner("pbs", env["PBS_JOBID"], **where)
    if env.get("SLURM_JOB_ID"):
        return Owner("slurm", env["SLURM_JOB_ID"], **where)
    return Owner("local", None, **where)


def recorded(status: Mapping[str, Any]) -> Owner | None:
    """The owner a status.json names. Records written before `owner` existed, or by a trainer
    run without an owner check (`owner: null`), are read from their `pbs_job_id` (old records
    only) or else their `host` and `pid`: a process on that host."""
    if isinstance(status.get("owner"), Mapping):
        return Owner.from_record(status["owner"])
    pid = status.get("pid") if isinstance(status.get("pid"), int) else -1
    if "owner" not in status and status.get("pbs_job_id"):
        return Owner("pbs", str(status["pbs_job_id"]), str(status.get("host")), pid)
    if status.get("host") and pid >= 0:
        return Owner("local", None, str(status["host"]), pid)
    return None


def process_start(pid: int) -> str | None:
    """`<boot id>:<start time in clock ticks>` of process `pid` (Linux), None elsewhere or if
    it has gone. Unique per process for as long as the host is up; the boot id tells boots
    apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the name in (...) may hold spaces
    return f"{boot}:{fields[19]}" if len(fields) > 19 else None  # field 22, starttime


def _process_state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return None


# -- probes: is that owner alive? ------------------------------------------------------------


def probe_pbs(job_id: str, qstat=None, timeout: float = PROBE_TIMEOUT) -> Verdict:
    """Ask PBS about one job with the executor's qstat (`qstat`: a Qstat, for tests)."""
    try:
        from snakemake_executor_plugin_pbs.status import Qstat, StatusUnknown, lookup
    except ImportError as exc:
        return Verdict(Liveness.UNKNOWN, f"cannot ask PBS: {exc}")
    try:
        answer = (qstat or Qstat(timeout=timeout)).query([job_id])
    except (StatusUnknown, OSError) as exc:
        return Verdict(Liveness.UNKNOWN, f"qstat did not answer: {exc}")
    info = lookup(answer, job_id)
    if info is not None:
        return Verdict(Liveness.ALIVE if info.alive else Liveness.ENDED, f"state {info.state}")
    if answer.forgotten(job_id):
        return Verdict(Liveness.ENDED, "PBS no longer knows it (Unknown Job Id)")
    return Verdict(Liveness.UNKNOWN, "qstat's answer left it out")


@dataclass(frozen=True)
class Ran:
    """What a command left: exit status (None: it ran past its timeout), stdout, stderr."""

    returncode: int | None
    stdout: str
    stderr: str


def run_command(argv: list[str], timeout: float) -> Ran:
    """Run `argv` (no shell) with a timeout; never raises."""
    try:
        p = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired:
        return Ran(None, "", f"{argv[0]} timed out after {timeout:.0f} s")
    except OSError as exc:
        return Ran(127, "", f"{argv[0]}: {exc.strerror or exc}")
    return Ran(p.returncode, p.stdout, p.stderr)


def probe_slurm(
    job_id: str, run: Callable[[list[str], float], Ran] = run_command, timeout=PROBE_TIMEOUT
) -> Verdict:
    """Ask Slurm about one job: `squeue -h -t all -j ID -o %T` (every state, finished ones
    too while slurmctld remembers them; a job it has forgotten is `Invalid job id`)."""
    result = run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], timeout)
    said = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
    if result.returncode is None:
        return Verdict(Liveness.UNKNOWN, f"squeue did not answer: {said}")
    if result.returncode != 0:
        if SLURM_FORGOTTEN.lower() in result.stderr.lower():
            return Verdict(Liveness.ENDED, "Slurm no longer knows it (Invalid job id)")
        return Verdict(Liveness.UNKNOWN, f"squeue exited with {result.returncode}: {said}")
    # one line per job; several for a heterogeneous job's components
    states = [line.strip().split()[0] for line in result.stdout.splitlines() if line.strip()]
    if any(state in SLURM_ALIVE for state in states):
        return Verdict(Liveness.ALIVE, f"state {','.join(states)}")
    if states and all(state in SLURM_ENDED for state in states):
        return Verdict(Liveness.ENDED, f"state {','.join(states)}")
    return Verdict(Liveness.UNKNOWN, f"squeue said {','.join(states) or 'nothing'}")


def probe_local(owner: Owner, me: Owner) -> Verdict:
    """Is `owner`'s process alive? Only its own host can tell."""
    if owner.host != me.host:
        return Verdict(Liveness.UNKNOWN, f"it runs on {owner.host}, not here on {me.host}")
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return Verdict(Liveness.ENDED, f"no process {owner.pid}")
    except PermissionError:
        pass  # it exists, another user's
    except OSError as exc:
        return Verdict(Liveness.UNKNOWN, f"cannot look at process {owner.pid}: {exc}")
    if _process_state(owner.pid) in ("Z", "X"):
        return Verdict(Liveness.ENDED, f"process {owner.pid} has exited")
    now = process_start(owner.pid)
    if owner.started and now and now != owner.started:
        return Verdict(Liveness.ENDED, f"pid {owner.pid} now belongs to a later process")
    # where the start cannot be compared (an old record, no /proc) a live pid counts as the
    # owner: a false refusal names the pid to look at; a false go-ahead mixes two runs
    return Verdict(Liveness.ALIVE, f"process {owner.pid} is running")


def probe(owner: Owner, me: Owner | None = None, **options: Any) -> Verdict:
    """Is `owner` alive, as its scheduler (or this host's process table) tells it?
    `options`: `qstat` (probe_pbs), `run` (probe_slurm), `timeout` (both)."""
    if owner.scheduler == "pbs" and owner.job_id:
        return probe_pbs(owner.job_id, options.get("qstat"), options.get("timeout", PROBE_TIMEOUT))
    if owner.scheduler == "slurm" and owner.job_id:
        run = options.get("run", run_command)
        return probe_slurm(owner.job_id, run, options.get("timeout", PROBE_TIMEOUT))
    if owner.scheduler == "local":
        return probe_local(owner, me or current())
    return Verdict(Liveness.UNKNOWN, f"no probe for {owner.scheduler!r}")


# -- the check the trainer is handed ---------------------------------------------------------


def claim(
    directory: Path,
    status: Mapping[str, Any],
    me: Owner | None = None,
    probe: Callable[..., Verdict] = probe,
) -> dict[str, Any]:
    """Before the trainer writes into `directory`: refuse (AlreadyOwned) where the run its
    status.json (`status`) says is in progress belongs to another owner that is alive; else
    return the status.json fields that make this process the owner (`owner`, and `pbs_job_id`,
    which older readers use, set under PBS only)."""
    me = me or current()
    other = recorded(status) if status.get("status") == "in_progress" else None
    if other is not None and not other.is_same(me):
        verdict = probe(other, me)
        if verdict.liveness is Liveness.ALIVE:
            raise AlreadyOwned(
                f"{directory} is being trained by {other}, alive ({verdict.detail}); this "
                f"{me} will not write beside it. If that one should train it, nothing needs "
                f"doing: once it has finished the workflow finds the experiment done. "
                f"Otherwise stop it with {other.how_to_stop()} and run this experiment "
                f"again: it resumes from its checkpoint."
            )
        if verdict.liveness is Liveness.UNKNOWN:
            log.warning(
                "cannot tell whether %s still trains %s (%s); training anyway (an unanswered "
                "scheduler must not stall a sweep)",
                other,
                directory,
                verdict.detail,
            )
        else:
            log.info(
                "taking %s over from %s, which has ended (%s)", directory, other, verdict.detail
            )
    return {
        "owner": me.record(),
        "pbs_job_id": me.job_id if me.scheduler == "pbs" else None,
    }
