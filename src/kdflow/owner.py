"""Who trains an experiment, whether that owner is still alive (PBS, Slurm or locally), and the
atomic claim that makes one trainer the owner.

Two writers in one experiment directory corrupt it, and the workflow alone cannot always
prevent a second one: after a controller dies, Snakemake's Slurm plugin (and a controller
started by hand, in another directory, or after `--unlock`) submits a second copy of a job
that is still running, and two such copies may start within the same second. So before it
writes anything a trainer claims the directory, and only one can win.

**Claim files.** `claim.<n>` in the experiment directory, n = 1, 2, ... (the generation): a
JSON object naming the owner (`Owner.record()`), when it claimed, its generation, the owner
it took over from and why, and a random token. The highest n is the owner. A claim file is
written complete to a temp file beside it (`.claim.<random>.tmp`, fsynced), then made with
`os.link(temp, claim.<n>)`, which fails with EEXIST if that name exists: of any number of
racers for one generation exactly one links it, and the file is complete the instant it
appears (O_EXCL and a write would show an empty claim). After EEXIST the temp's link count
is read: 2 means the link is ours after all (an NFS server did it and its reply was lost, so
the retried call said EEXIST); so does a claim file that holds our token. The temp goes
afterwards. A trainer that has claimed removes every `.*.tmp` (`remove_partial_writes`),
racers' temps included: a racer whose temp vanished (link: ENOENT) starts over.

**Who may claim.** Before linking `claim.<n+1>` a trainer reads `claim.<n>`, the highest, and:

- no claim file: the directory is free (generation 0), except that a directory an older
  kdflow wrote (status.json `in_progress`, an owner, no `claim` field) is owned by that
  recorded owner, as generation 0;
- the same owner as itself (`Owner.is_same`: a resubmission PBS gave the same id, a requeued
  Slurm job): it keeps the experiment, claiming the next generation for its new process (so
  that a racer who judged the job ended at the same instant cannot also win); the very same
  process keeps its claim file;
- another owner that its scheduler (or, for a local run, this host's process table) says is
  alive: refuse, with `AlreadyOwned`;
- another owner that has ended (PBS or Slurm say the job ended or no longer know it; the
  local pid is gone or now another process's), or one whose own last status.json write said
  it gave the directory up (`failed`: a pack drops a failed student and never writes it
  again): take over, linking `claim.<n+1>` (the run resumes from its checkpoint). A racer
  that loses that link starts over (a bounded number of times) and finds the winner alive;
- no answer (qstat or squeue failed or timed out, a local process on another host, an
  unreadable claim file): ask again, `UNKNOWN_TRIES` times `UNKNOWN_WAIT` s apart, then
  refuse with `OwnerUnknown` (an `AlreadyOwned`). Silence is not evidence that an owner has
  gone; the executor retries a failed job later, and the message says which file to delete
  where someone knows better.

Claim files are never deleted by kdflow, so a generation number is never used twice: a racer
delayed between reading `claim.<n>` and linking `claim.<n+1>` (a slow qstat takes up to a
minute) cannot recreate a number that a faster takeover used and deleted meanwhile (the ABA
of deleting older generations). An experiment keeps one small file per change of owner. A
finished run's claim stays too: its owner has ended, so the next trainer takes over.

**What it relies on.** link(2) being atomic within one file system, as rename(2) is (POSIX;
on Lustre every metadata operation of a directory is serialised by its metadata server, so
link is atomic across clients; on NFS link is the traditional lock primitive, and the link
count check covers a lost reply); a file's content being visible to whoever opens it after
the link returned (NFS close-to-open consistency); readdir listing every file that existed
throughout the call. Not on flock or fcntl locks (Lustre may be mounted `-o noflock`; NFS
implements them through a separate lock manager), nor on clocks agreeing across hosts (the
time in a claim is for people; a local owner is told by its pid and its start on its host).

The trainer knows no scheduler: scripts/train.py hands it `claim`. This module imports the PBS
executor plugin only inside the PBS probe, for its one shared qstat parser.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from kdflow.fileio import create_temp, fsync_dir, read_json

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


# -- the claim the trainer is handed ---------------------------------------------------------

CLAIM_PREFIX = "claim."  # claim.1, claim.2, ...: the highest is the owner
UNKNOWN_TRIES = 3  # "unknown" answers about the owner before a trainer refuses
UNKNOWN_WAIT = 20.0  # seconds between them
MAX_LOST = 10  # links lost to other racers before a trainer gives up (each finds a new owner)


class OwnerUnknown(AlreadyOwned):
    """Whether the owner that claimed an experiment still trains it could not be told (its
    scheduler did not answer, it runs on another host); a trainer does not write beside an
    owner that may be alive."""


def claim_file(directory: str | Path, generation: int) -> Path:
    return Path(directory) / f"{CLAIM_PREFIX}{generation}"


def claim_generations(directory: str | Path) -> list[int]:
    """The generations of the claim files in `directory`, lowest first."""
    found = []
    for name in os.listdir(directory):
        number = name[len(CLAIM_PREFIX) :] if name.startswith(CLAIM_PREFIX) else ""
        if number.isascii() and number.isdigit() and number == str(int(number)) != "0":
            found.append(int(number))
    return sorted(found)


@dataclass(frozen=True)
class Claimed:
    """The claim in force in a directory: its highest claim file, or (generation 0, no file)
    the owner an older kdflow recorded in status.json, or nobody."""

    generation: int
    path: Path | None
    owner: Owner | None
    record: Mapping[str, Any]  # the claim file's contents
    problem: str | None = None  # why a claim file names no owner that can be read

    def where(self, directory: Path) -> str:
        if self.path is not None:
            return str(self.path)
        return f"{directory / 'status.json'} (its owner, recorded by an older kdflow)"


class _Vanished(Exception):
    """A claim file went between listing and reading (deleted by hand): look again."""


def current_claim(directory: str | Path, status: Mapping[str, Any]) -> Claimed:
    """Who claims `directory` now; `status` is its status.json ({} if none)."""
    directory = Path(directory)
    generations = claim_generations(directory)
    if not generations:
        # status.json's owner counts only where an older kdflow wrote it (no `claim` field):
        # where this kdflow wrote it, no claim file means they were deleted by hand
        if status.get("status") == "in_progress" and not status.get("claim"):
            return Claimed(0, None, recorded(status), {})
        return Claimed(0, None, None, {})
    path = claim_file(directory, generations[-1])
    try:
        text = path.read_text()
    except FileNotFoundError as exc:
        raise _Vanished(path) from exc
    except OSError as exc:
        return Claimed(generations[-1], path, None, {}, f"cannot read it: {exc.strerror or exc}")
    try:
        record = json.loads(text)
    except ValueError as exc:
        return Claimed(generations[-1], path, None, {}, f"it is not JSON: {exc}")
    owner = record.get("owner") if isinstance(record, dict) else None
    owner = Owner.from_record(owner) if isinstance(owner, Mapping) else None
    if owner is None:
        return Claimed(generations[-1], path, None, {}, "it names no owner")
    return Claimed(generations[-1], path, owner, record)


def claim(
    directory: Path,
    status: Mapping[str, Any],
    me: Owner | None = None,
    probe: Callable[..., Verdict] = probe,
    *,
    tries: int = UNKNOWN_TRIES,
    wait: float = UNKNOWN_WAIT,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Claim `directory` for this trainer (`me`) before it writes anything there, atomically
    (the module's docstring has the protocol). Raises AlreadyOwned where another owner that is
    alive claims it, OwnerUnknown where `tries` questions `wait` s apart could not tell whether
    it is alive; the directory is then as it was. Else returns the status.json fields that
    record this process as the owner: `owner`, `claim` (the claim file's name) and
    `pbs_job_id` (which older readers use; set under PBS only). `status`: the directory's
    status.json as the trainer read it ({} if none)."""
    me = me or current()
    directory = Path(directory)
    unanswered: list[Verdict] = []
    lost = 0
    while True:
        try:
            held = current_claim(directory, status)
        except _Vanished:
            held = None
        if held is not None:
            other, why = held.owner, None
            if held.problem is None and other is not None and other == me:
                if held.path is not None:  # this very process claimed it before
                    return _fields(me, held.path)
                why = "its own owner, recorded by an older kdflow"
            elif held.problem is None and other is not None and other.is_same(me):
                why = f"the same owner as {other}, in a new process"
            elif held.problem is None and other is None:
                why = "nobody claimed it"
            elif _given_up(held, status):
                why = "its status.json says it failed there and gave it up"
                log.info("taking %s over from %s: %s", directory, other, why)
            else:
                if other is not None:
                    verdict = probe(other, me)
                else:
                    verdict = Verdict(Liveness.UNKNOWN, f"{held.path}: {held.problem}")
                if verdict.liveness is Liveness.ALIVE:
                    raise AlreadyOwned(_alive(directory, held, verdict, me))
                if verdict.liveness is Liveness.UNKNOWN:
                    unanswered.append(verdict)
                    if len(unanswered) >= tries:
                        raise OwnerUnknown(_unknown(directory, held, unanswered, me, wait))
                    log.warning(
                        "cannot tell whether %s still trains %s (%s); asking again in %.0f s",
                        other or "the owner of " + held.where(directory),
                        directory,
                        verdict.detail,
                        wait,
                    )
                    sleep(wait)
                    status = _read_status(directory)
                    continue
                why = f"it has ended ({verdict.detail})"
                log.info(
                    "taking %s over from %s, which has ended (%s)", directory, other, verdict.detail
                )
            path = claim_file(directory, held.generation + 1)
            if _link(path, _record(me, held, why)):
                return _fields(me, path)
        lost += 1
        if lost >= MAX_LOST:
            raise AlreadyOwned(
                f"{directory} changed owner {lost} times while this {me} tried to claim it; "
                "not training it now. Run this experiment again once it has settled."
            )
        status = _read_status(directory)


def _fields(me: Owner, path: Path) -> dict[str, Any]:
    return {
        "owner": me.record(),
        "claim": path.name,
        "pbs_job_id": me.job_id if me.scheduler == "pbs" else None,
    }


def _record(me: Owner, held: Claimed, why: str) -> dict[str, Any]:
    return {
        "owner": me.record(),
        "generation": held.generation + 1,
        "claimed_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),  # for people: no clock is compared
        "after": held.owner.record() if held.owner is not None else None,
        "why": why,
    }


def _read_status(directory: Path) -> dict[str, Any]:
    return read_json(directory / "status.json") or {}


def _given_up(held: Claimed, status: Mapping[str, Any]) -> bool:
    """Did the owner of the claim say, in its last status.json write, that it gave the
    directory up? (A pack drops a failed student, writes `failed`, and never writes there
    again; its job lives on for the other students.)"""
    return (
        held.path is not None
        and held.owner is not None
        and status.get("status") == "failed"
        and status.get("claim") == held.path.name
        and status.get("owner") == held.owner.record()
    )


def _link(path: Path, record: Mapping[str, Any]) -> bool:
    """Create `path` holding `record` unless it exists: True if this call created it."""
    token = secrets.token_hex(16)
    data = (json.dumps({**record, "token": token}, indent=2, sort_keys=True) + "\n").encode()
    # named like kdflow's other temps: the trainer that wins removes those left by a kill
    fd, tmp = create_temp(path.parent, prefix=".claim.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # a claim is never an empty file, not even after a crash
        try:
            os.link(tmp, path)
        except FileExistsError:
            if not _ours(Path(tmp), path, token):
                return False
        except FileNotFoundError:
            return False  # our temp was removed by a trainer that claimed meanwhile
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)
    return True


def _ours(tmp: Path, path: Path, token: str) -> bool:
    """After EEXIST: did our link happen all the same (NFS: done, its reply lost, the retried
    call refused)? Then the temp has two links, and the claim file holds our token."""
    try:
        if os.stat(tmp).st_nlink > 1:
            return True
    except OSError:
        pass
    try:
        return json.loads(path.read_text()).get("token") == token
    except (OSError, ValueError, AttributeError):
        return False


def _alive(directory: Path, held: Claimed, verdict: Verdict, me: Owner) -> str:
    other = held.owner
    assert other is not None
    return (
        f"{directory} is being trained by {other}, alive ({verdict.detail}); this {me} will not "
        "write beside it. If that one should train it, nothing needs doing: once it has "
        "finished the workflow finds the experiment done. Otherwise stop it with "
        f"{other.how_to_stop()} and run this experiment again: it resumes from its checkpoint. "
        f"(Its claim: {held.where(directory)}.)"
    )


def _unknown(
    directory: Path, held: Claimed, unanswered: list[Verdict], me: Owner, wait: float
) -> str:
    other = held.owner
    if other is None:
        who, asked = f"an owner that cannot be read ({held.where(directory)})", "read it"
    else:
        who, asked = f"{other} ({held.where(directory)})", _question(other, me)
    gone = f"{other} has ended" if other is not None else "no trainer writes there"
    if held.path is not None:
        remedy = f"delete the claim files (`rm {directory}/{CLAIM_PREFIX}*`)"
    else:
        remedy = f"delete {directory / 'status.json'}"
    return (
        f"{directory} is claimed by {who}, and whether it still trains cannot be told: "
        f"{asked}, {len(unanswered)} times {wait:.0f} s apart, without an answer (last: "
        f"{unanswered[-1].detail}). This {me} will not write beside an owner that may be "
        "alive: no answer is no evidence that it has gone. The workflow retries the job (it "
        f"asks again then). If you know that {gone}, {remedy} and run this experiment again: "
        "it resumes from its checkpoint."
    )


def _question(other: Owner, me: Owner) -> str:
    if other.scheduler == "pbs":
        return f"asked PBS about job {other.job_id} (qstat)"
    if other.scheduler == "slurm":
        return f"asked Slurm about job {other.job_id} (squeue)"
    if other.scheduler == "local":
        return f"looked for process {other.pid} of {other.host} from {me.host}"
    return f"found no way to ask about a {other.scheduler!r} owner"
