"""Persistent record of every target's PBS submissions, outcomes and counters.

Plain JSON files in the registry directory (setting `registry_dir`, default `.snakemake-pbs/`
in the working directory), so the record survives `rm -rf .snakemake` and controller restarts,
and behaves on Lustre, where sqlite locking may not. One file per target, named by the target's
deterministic PBS job name; every write is atomic (see write_atomic). There is one writer: the
controller. Jobs write only their own exit record.

    <root>/targets/<name>.json   what was submitted for the target and how it ended
    <root>/exit/<job id>         the exit code the job script wrote as it ended
    <root>/scripts/<name>.sh     the target's latest job script, for whoever debugs it

What must be durable, and when. Every write is atomic (a temporary file renamed over the
old one), so a controller killed at any instant, even with SIGKILL, leaves the old record or
the new one, and the next controller reads what the kernel has, flushed or not. An fsync
guards only against the login node itself crashing (power, kernel) with writes still in its
page cache; and an fsync is the expensive part of a submission (3-15 ms each on the ext4 of
the test machine, far more on a busy network file system), so each write asks for exactly
the durability the no-duplicate contract needs:

- The intent (a submission without a job id) must be on disk before qsub runs: a host crash
  that lost it after qsub created a job would leave a record that says nothing was submitted,
  and the next controller would submit a second job. Intents are written durably: a job's
  before its qsub, and the members' of a job array together (Registry.save_all: the files are
  written and fsynced by a few threads at once, so the file system commits them in a handful
  of journal commits instead of one each, and the directory is fsynced once for all of them)
  before the array's one qsub.
- The job id written after qsub need not be: if a host crash loses it, the record on disk
  still holds the durable intent, and the next controller resolves an intent by looking for
  the live (or, with job history, finished) job of the target's name, exactly as after a
  controller killed between qsub and this write (Controller._resume_intents, reconcile). Any
  later durable write of the record (its end, the next intent) carries the id to disk too.
- Taking back an intent whose qsub certainly created nothing need not be either: an intent
  that comes back after a crash is resolved by name, finds no job, and is submitted, once.
- The job script is not part of the record: qsub hands the server its own copy, and the file
  is rewritten for every submission; it is written atomically without any fsync.
- Everything else (outcomes, counters, memory, holds, given-up targets) is written durably,
  one record at a time, as it happens: it is rare, and losing it would repeat work or forget
  a decision.
"""

import contextlib
import glob
import json
import logging
import os
import secrets
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

SCHEMA = 1
# Threads that write the records of one round at once (Registry.save_all): enough for the file
# system to merge their fsyncs into a few journal commits (4 already make 100 fsyncs of ext4
# about 15 times faster than one after the other), few enough not to crowd a login node.
SAVE_THREADS = 8

log = logging.getLogger(__name__)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable, best effort: it runs after the rename, so the new
    file is already what readers see, and a file system that cannot fsync a directory (EINVAL
    on some network and FUSE mounts) must not turn a write that happened into an error."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError as e:
        log.debug("cannot open %s to fsync it: %s", directory, e)
        return
    try:
        os.fsync(fd)
    except OSError as e:
        log.debug("cannot fsync %s: %s", directory, e)
    finally:
        os.close(fd)


def _create_temp(path: Path) -> tuple[int, str]:
    """A new file beside `path`, open for writing: (fd, path). Its mode is 0666 less the
    user's umask, as for any file the user makes (a group reading a shared project directory
    sees the registry); `tempfile.mkstemp` would make it 0600 whatever the umask."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name beside {path}")


def _replace(path: Path, text: str, durable: bool) -> None:
    """Write `text` to a temporary file beside `path` and rename it over `path`: readers see
    the old file or the new one, never half. `durable`: fsync the file before the rename.
    An error before the rename leaves the old file and removes the temporary one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_atomic(path: Path, text: str, durable: bool = True) -> None:
    """Replace `path` with `text` so that readers (and a kill at any instant) see the old file
    or the new one, never half of either.

    The rule: write a temporary file in the same directory (a rename is atomic only within one
    file system), flush and fsync it, rename it over `path`, then fsync the directory, best
    effort. An error before the rename leaves the old file and removes the temporary one.
    `durable=False` leaves both fsyncs out: still atomic for every process, but a crash of the
    host may lose the write (see the module's docstring for which writes may be lost)."""
    path = Path(path)
    _replace(path, text, durable)
    if durable:
        _fsync_directory(path.parent)


@dataclass
class Submission:
    """One qsub for a target. `job_id` is None while the qsub is in flight (the intent)."""

    job_id: str | None
    submitted_at: float
    mem_mb: int | None = None
    walltime: str | None = None
    log_out: str | None = None
    log_err: str | None = None
    progress_at_submit: int | float | None = None  # the progress file's number at qsub
    outcome: str | None = None  # a classify.Kind value; "lost": qsub interrupted, no job found
    reason: str | None = None
    ended_at: float | None = None
    # ended while no controller watched it, and no Snakemake has been told how (see
    # Controller._unwatched_success)
    unreported: bool = False
    # A subjob of a job array (--pbs-array-jobs): the array's job name (recorded with the
    # intent, so that a controller killed in qsub finds the array by it), this target's
    # index in it, the array's id (`12[].srv`; `job_id` is the subjob's, `12[3].srv`) and
    # how many subjobs it has. None for a job of its own.
    array_name: str | None = None
    array_index: int | None = None
    array_id: str | None = None
    array_size: int | None = None
    # the rule's own select statement (resource pbs_select), where it replaced the plugin's
    select: str | None = None
    # what the server said the job used and asked for when its end was recorded (usage.py)
    usage: dict[str, float] | None = None

    @property
    def is_open(self) -> bool:
        """Not classified yet: the job may still be alive."""
        return self.outcome is None

    @property
    def is_intent(self) -> bool:
        """qsub was (maybe) called but its job id was never recorded."""
        return self.job_id is None and self.outcome is None


@dataclass
class TargetRecord:
    """Everything the controller must remember about one target across restarts."""

    name: str
    rule: str | None = None
    outputs: list[str] = field(default_factory=list)
    wildcards: dict[str, str] = field(default_factory=dict)  # the Snakemake job's, for reports
    submissions: list[Submission] = field(default_factory=list)
    mem_mb: int | None = None  # memory for the next submission, raised after memory kills
    memory_kills: int = 0
    walltime_kills: int = 0
    walltime_stalls: int = 0  # walltime kills in a row without progress
    kills_without_progress: int = 0  # node failures, preemptions, qdel in a row
    errors_without_progress: int = 0  # errors in a row
    storage_failures: int = 0  # out of disk space in a row
    hold_until: float | None = None  # no submission before this time (after a full disk)
    last_progress: int | float | None = None  # the number last seen in the progress file
    failed: str | None = None  # why the target was given up; stays until retried on purpose

    @property
    def last(self) -> Submission | None:
        return self.submissions[-1] if self.submissions else None

    def submission(self, job_id: str) -> Submission | None:
        for submission in reversed(self.submissions):
            if submission.job_id == job_id:
                return submission
        return None

    def to_json(self) -> str:
        return json.dumps({"schema": SCHEMA, **asdict(self)}, indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "TargetRecord":
        data = json.loads(text)
        if not isinstance(data, dict):  # `null`, a list: damaged, like text that is no JSON
            raise ValueError(f"not a JSON object but {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        record = cls(**{k: v for k, v in data.items() if k in known and k != "submissions"})
        # fields a newer plugin added are left out, not a reason to call the record unreadable
        names = {f.name for f in fields(Submission)}
        record.submissions = [
            Submission(**{k: v for k, v in s.items() if k in names})
            for s in data.get("submissions", [])
        ]
        return record


class Registry:
    """The registry directory of one working directory."""

    def __init__(self, root: Path):
        self.root = Path(root).absolute()
        self.targets_dir = self.root / "targets"
        self.exit_dir = self.root / "exit"
        self.scripts_dir = self.root / "scripts"

    def path(self, name: str) -> Path:
        return self.targets_dir / f"{name}.json"

    def load(self, name: str) -> TargetRecord:
        """The target's record; a new one if there is none.

        A record that cannot be read is set aside and replaced by one whose last submission
        is an intent without a job id: the controller then looks for a live job of the
        target's name before it submits anything, as after an interrupted qsub.
        """
        path = self.path(name)
        try:
            return TargetRecord.from_json(path.read_text())
        except FileNotFoundError:
            return TargetRecord(name=name)
        except (ValueError, TypeError, KeyError) as e:
            with contextlib.suppress(OSError):
                path.rename(path.with_name(f"{path.name}.unreadable-{int(time.time())}"))
            intent = Submission(job_id=None, submitted_at=0.0, reason=f"record unreadable: {e}")
            return TargetRecord(name=name, submissions=[intent])

    def save(self, record: TargetRecord, durable: bool = True) -> None:
        """Write the record atomically; `durable=False` only where the module's docstring says
        that losing the write to a host crash is safe."""
        write_atomic(self.path(record.name), record.to_json(), durable=durable)

    def save_all(self, records: Iterable[TargetRecord]) -> None:
        """Write several records durably, together: on disk, every one, when this returns.

        Each file is written and fsynced before its rename as in write_atomic, by up to
        SAVE_THREADS threads at once, so that the file system merges their fsyncs into a few
        journal commits; then each directory is fsynced once. The first error is raised after
        every write has been tried (each record is then the old file or the new one)."""
        records = list(records)
        if not records:
            return
        paths = [self.path(record.name) for record in records]
        texts = [record.to_json() for record in records]
        if len(records) == 1:
            _replace(paths[0], texts[0], durable=True)
        else:
            with ThreadPoolExecutor(min(SAVE_THREADS, len(records))) as pool:
                futures = [
                    pool.submit(_replace, path, text, True)
                    for path, text in zip(paths, texts, strict=True)
                ]
            for future in futures:
                future.result()  # the first error, if any
        for directory in sorted({path.parent for path in paths}):
            _fsync_directory(directory)

    def records(self) -> Iterator[TargetRecord]:
        """Every readable record, in name order (unreadable ones are skipped)."""
        for path in sorted(self.targets_dir.glob("*.json")):
            try:
                yield TargetRecord.from_json(path.read_text())
            except (OSError, ValueError, TypeError, KeyError):
                continue

    def write_script(self, name: str, text: str) -> Path:
        """The target's job script, written atomically but not fsynced: qsub hands the server
        its own copy, and the file is rewritten for every submission."""
        path = self.scripts_dir / f"{name}.sh"
        write_atomic(path, text, durable=False)
        return path

    def exit_record(self, job_id: str) -> int | None:
        """The exit code job `job_id` recorded as it ended, or None if it left none."""
        candidates = [self.exit_dir / job_id]
        sequence = job_id.split(".", 1)[0]
        if self.exit_dir.is_dir():  # the job may know itself by a longer or shorter id
            # a subjob's id holds brackets (`12[3].srv`): a glob would read them as a set
            pattern = f"{glob.escape(sequence)}.*"
            candidates += sorted(self.exit_dir.glob(pattern)) + [self.exit_dir / sequence]
        for path in candidates:
            try:
                return int(path.read_text().strip())
            except (OSError, ValueError):
                continue
        return None
