"""Keep each target's PBS job going until it succeeds or is given up for good.

Before submitting, adopt the target's live job if there is one; record the intent in the
registry before qsub and the job id right after, so that a controller killed at any instant
never leads to two live jobs for one target. Poll every job with one qstat, classify each
end, and resubmit (walltime, memory, other kills, errors that may pass) or give up.
"""

import dataclasses
import getpass
import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .cancel import qdel
from .classify import Kind, Outcome, classify
from .policy import Action, Decision, Limits, decide, reset_stall_counters
from .progress import DEFAULT_PROGRESS_KEY, Progress, job_progress
from .registry import Registry, Submission, TargetRecord
from .status import Answer, Dialect, JobInfo, Qstat, StatusUnknown, job_id_order, lookup
from .submit import (
    DEFAULT_JOB_NAME_PREFIX,
    DEFAULT_MAX_ARRAY_SIZE,
    JOB_NAME_MAX_CHARS,
    JOB_NAME_MAX_PBSPRO,
    ArrayMember,
    JobSpec,
    QsubError,
    QueueLimit,
    Rejected,
    Transient,
    UnknownResource,
    array_log_path,
    array_member_log,
    array_name,
    array_range_args,
    format_walltime,
    is_job_of,
    pbs_job_name,
    readable_label,
    render_array_script,
    render_job_script,
    resource_directives,
    subjob_id,
)
from .submit import qsub as run_qsub
from .usage import job_usage

# A job the server, asked about it alone, says it does not know, and that left no exit
# record, is taken as vanished (node failure, purged) only when that holds for this many polls
# in a row. A job merely missing from an answer is never taken as ended.
MISSING_POLLS_BEFORE_VANISHED = 2
MAX_BACKOFF_SECONDS = 900
# --pbs-array-jobs: every rule's jobs may go out as arrays
ALL_RULES = "all"
TAIL_LINES = 20
TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class Target:
    """One Snakemake job as the controller sees it."""

    name: str  # identity: the registry key, the end of the PBS job name (submit.job_name)
    rule: str
    outputs: tuple[str, ...]  # in declared order; their directories hold the progress files
    command: str  # the Snakemake job command the script runs
    threads: int = 1
    mem_mb: int | None = None
    runtime_minutes: float | None = None
    gpus: int = 0
    envvars: tuple[str, ...] = ()  # names of environment variables the job needs
    queue: str | None = None  # the rule's own queue (resource pbs_queue), else the setting's
    # the rule's own PBS settings (resources.py); None or (): the profile-wide ones
    project: str | None = None
    select: str | None = None
    place: str | None = None
    qsub_extra: tuple[str, ...] = ()
    wildcards: tuple[tuple[str, str], ...] = ()  # the Snakemake job's, for names and reports
    # An earlier Snakemake started this target and never recorded its end: its outputs still
    # carry Snakemake's incomplete mark (a controller killed before its Snakemake finished
    # the bookkeeping of a success it had been handed, or of a job it had submitted).
    incomplete: bool = False


@dataclass
class Tracked:
    """A target this controller watches: its live job, or why it has none yet."""

    target: Target
    job_id: str | None = None
    log_out: str | None = None
    log_err: str | None = None
    waiting: str | None = None  # why no job is queued yet (queue limit, server unreachable)
    retry_at: float = 0.0
    transient_failures: int = 0
    missing_polls: int = 0
    array_id: str | None = None  # the job is a subjob of this array (`12[].srv`)
    array_size: int = 0  # how many subjobs that array has
    state: str | None = None  # the job's PBS state at the last look (Q, R, ...)


@dataclass(frozen=True)
class Finished:
    """A target this controller is done with."""

    target: Target
    succeeded: bool
    message: str = ""
    logs: tuple[str, ...] = ()
    job_id: str | None = None  # the job that did it, where one of an earlier controller did


@dataclass(frozen=True)
class ControllerConfig:
    workdir: Path
    log_dir: Path
    queue: str | None = None
    project: str | None = None
    select_extra: str | None = None
    qsub_extra: tuple[str, ...] = ()
    progress_file: str | None = None  # see progress.py; None: no progress measure
    progress_key: str = DEFAULT_PROGRESS_KEY
    limits: Limits = field(default_factory=Limits)
    submit_backoff: float = 60
    command_timeout: float = 120
    retry_failed: bool = False
    # rules whose ready jobs go out as job arrays (ALL_RULES: every rule); empty: none
    array_jobs: frozenset[str] = frozenset()
    job_name_prefix: str = DEFAULT_JOB_NAME_PREFIX  # names the arrays as the targets
    # longest PBS job name the server takes; None: by the server's kind (Torque 15, else 236)
    job_name_max: int | None = None


def tail_lines(path: str | None, lines: int = TAIL_LINES) -> list[str]:
    """The last `lines` lines of a (possibly large, possibly missing) log file."""
    if not path:
        return []
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - TAIL_BYTES))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def _same_directory(a: str, b: Path) -> bool:
    try:
        return os.path.realpath(a) == os.path.realpath(b)
    except (OSError, ValueError):
        return False


def _held_for_space(record: TargetRecord) -> str:
    until = time.strftime("%H:%M", time.localtime(record.hold_until))
    return f"out of disk space, resubmitted at {until} (--pbs-retry-failed: at once)"


def _link(path: Path, target: Path) -> bool:
    """Make `path` a symbolic link to `target` (a subjob's log file, in the same directory),
    replacing whatever was there. False where the file system has no links."""
    temporary = path.with_name(f".{path.name}.link")
    try:
        temporary.unlink(missing_ok=True)
        os.symlink(os.path.relpath(target, path.parent), temporary)
        os.replace(temporary, path)
        return True
    except OSError:
        temporary.unlink(missing_ok=True)
        return False


def _current_user() -> str | None:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


class Controller:
    """Adopts, submits, polls and resubmits the PBS jobs of one working directory."""

    def __init__(
        self,
        config: ControllerConfig,
        registry: Registry,
        qstat: Qstat | None = None,
        logger=None,
        clock=time.time,
    ):
        self.config = config
        self.registry = registry
        self.qstat = qstat or Qstat(timeout=config.command_timeout)
        self.logger = logger or logging.getLogger(__name__)
        self.clock = clock
        self.started_at = clock()  # the usage report covers the jobs since
        # run_jobs (main thread) and the status poll (Snakemake's wait thread) both use us.
        self._lock = threading.RLock()

    # -- entry points ------------------------------------------------------------------

    def start(self, targets: Iterable[Target]) -> dict[str, "Tracked | Finished"]:
        """Get a job going for each target: adopt a live one, or submit, or hold back."""
        with self._lock:
            return self._start([Tracked(target) for target in targets])

    def poll(self, tracked: Iterable[Tracked]) -> dict[str, "Tracked | Finished"]:
        """One qstat for every tracked job; act on those that ended; retry held-back ones."""
        with self._lock:
            tracked = list(tracked)
            results: dict[str, Tracked | Finished] = {}
            waiting = [t for t in tracked if not t.job_id]
            with_job = [t for t in tracked if t.job_id]
            infos = self._query([t.job_id for t in with_job])
            resubmit: list[tuple[Tracked, TargetRecord]] = []
            for t in with_job:
                result = self._check(t, infos)
                if isinstance(result, TargetRecord):
                    resubmit.append((t, result))
                else:
                    results[t.target.name] = result
            now = self.clock()
            due = [t for t in waiting if t.retry_at <= now]
            results.update({t.target.name: t for t in waiting if t.retry_at > now})
            # Resubmissions and held-back targets share one round of qsub: a queue limit
            # met by one holds back the rest.
            results.update(self._start(due, ready=resubmit))
            return results

    def reconcile(self, settle_seconds: float = 0) -> None:
        """Record how the jobs ended that ended while no controller watched them.

        A controller killed while its jobs run leaves their records open, and one killed in
        qsub leaves an intent without a job id. A job that then succeeds is never asked
        about again (its outputs exist, so Snakemake does not want its target any more) and
        its record would say forever that it might still be running. This looks at every
        open record with one qstat (and, for intents, one listing of all jobs, history
        included): an ended job is classified and counted as at a poll; a live one is left
        to be adopted; one the server forgot without an exit record, for later.

        `settle_seconds`: wait up to this long for live jobs whose outputs all exist (they
        are ending: the job's own Snakemake wrote them) and record them too.
        """
        deadline = time.monotonic() + settle_seconds
        while True:
            with self._lock:
                ending = self._reconcile_once()
            if not ending or time.monotonic() >= deadline:
                return
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))

    def _reconcile_once(self) -> list[TargetRecord]:
        records = [
            r
            for r in self.registry.records()
            if r.last is not None and r.last.is_open and not r.failed
        ]
        known = [r for r in records if r.last.job_id]
        intents = [r for r in records if not r.last.job_id]
        if not records:
            return []
        try:
            infos = dict(self.qstat.query([r.last.job_id for r in known])) if known else {}
            listed = self.qstat.list_all() if intents else {}
        except StatusUnknown as e:
            self.logger.warning(f"PBS: cannot look at the jobs of earlier controllers: {e}")
            return []
        subjobs = []
        for record in intents:
            if record.last.array_name:  # a subjob: find its array, then it by its index
                array = self._job_of_intent(record, listed, record.last.array_name)
                if array is not None:
                    self._found_subjob(record, record.last, array)
                    known.append(record)
                    subjobs.append(record.last.job_id)
                continue
            info = self._job_of_intent(record, listed)
            if info is not None:
                record.last.job_id = info.id
                self.registry.save(record)
                self.logger.info(
                    f"PBS: job {info.id} is the one a controller killed in qsub submitted for "
                    f"target {record.name}"
                )
                infos[info.id] = info
                known.append(record)
        if subjobs:
            try:
                infos.update(self.qstat.query(subjobs))
            except StatusUnknown as e:  # recorded: they are asked about again when adopted
                self.logger.warning(f"PBS: cannot look at subjobs of earlier controllers: {e}")
        ending = []
        for record in known:
            info = lookup(infos, record.last.job_id)
            if info is not None and info.alive:
                outputs = [self.config.workdir / output for output in record.outputs]
                if outputs and all(path.exists() for path in outputs):
                    ending.append(record)
                continue
            # a job the server forgot without an exit record is left for a controller that
            # follows it over polls (see _vanished)
            target = Target(
                name=record.name, rule=record.rule or "?", outputs=tuple(record.outputs), command=""
            )
            self._end_of_job(target, record, record.last, info, unwatched=True)
        return ending

    def _job_of_intent(
        self, record: TargetRecord, listed: dict[str, JobInfo], name: str | None = None
    ) -> JobInfo | None:
        """The job an interrupted qsub of `record` created: the newest job of the target's
        name (or `name`: its array's), from this directory, queued since the intent, not
        already in the record."""
        taken = {s.job_id for s in record.submissions if s.job_id}
        since = record.last.submitted_at - 300  # clocks of login node and server may differ
        found = [
            info
            for info in self._jobs_named(listed, name or record.name)
            if info.id not in taken and (info.time("qtime") is None or info.time("qtime") >= since)
        ]
        return found[-1] if found else None

    def _jobs_named(self, jobs: dict[str, JobInfo], name: str) -> list[JobInfo]:
        """The jobs of `jobs` that are this target's: its name, submitted by this user from
        this working directory (where the server says), oldest first by job number."""
        user = _current_user()
        ours = [
            info
            for info in jobs.values()
            if is_job_of(info.name, name)
            and (info.user is None or user is None or info.user == user)
            and (info.workdir is None or _same_directory(info.workdir, self.config.workdir))
        ]
        return sorted(ours, key=lambda info: job_id_order(info.id))

    def cancel(self, tracked: Iterable[Tracked]) -> None:
        """qdel every job this controller tracks, in one call: a whole array by its id where
        every subjob of it is tracked, else the tracked subjobs one by one."""
        with self._lock:
            job_ids: list[str] = []
            arrays: dict[str, list[Tracked]] = {}
            for t in tracked:
                if t.job_id and t.array_id:
                    arrays.setdefault(t.array_id, []).append(t)
                elif t.job_id:
                    job_ids.append(t.job_id)
            for array_id, members in arrays.items():
                subjobs = sorted({t.job_id for t in members}, key=job_id_order)
                job_ids += [array_id] if len(subjobs) >= members[0].array_size else subjobs
            if job_ids:
                self.logger.info(f"PBS: deleting {len(job_ids)} jobs: {' '.join(job_ids)}")
            result = qdel(job_ids, self.config.command_timeout)
            if result is not None and result.returncode != 0:
                self.logger.warning(f"PBS: {result.describe()}")

    @property
    def job_name_max(self) -> int:
        """The longest job name the server takes: the setting, else by the server's kind (the
        dialect qstat --version told: Torque 15, PBS Pro / OpenPBS 236)."""
        if self.config.job_name_max is not None:
            return self.config.job_name_max
        if self.qstat.dialect is Dialect.TORQUE:
            return JOB_NAME_MAX_CHARS
        return JOB_NAME_MAX_PBSPRO

    # -- adopting or submitting --------------------------------------------------------

    def _start(
        self, items: list[Tracked], ready: list[tuple[Tracked, TargetRecord]] | None = None
    ) -> dict[str, "Tracked | Finished"]:
        """Adopt, conclude or submit each item; `ready` ones are submitted without a look."""
        results: dict[str, Tracked | Finished] = {}
        ready = list(ready or [])
        known: list[tuple[Tracked, TargetRecord, Submission]] = []
        intents: list[tuple[Tracked, TargetRecord, Submission]] = []
        for t in items:
            record = self.registry.load(t.target.name)
            record.rule, record.outputs = t.target.rule, list(t.target.outputs)
            record.wildcards = dict(t.target.wildcards)
            if record.failed and not self.config.retry_failed:
                results[t.target.name] = self._given_up_earlier(t, record)
                continue
            if record.failed:
                self._clear_failure(record)
            elif self.config.retry_failed:
                record.hold_until = None  # space was freed: no more waiting for it
            if (finished := self._unwatched_success(t, record)) is not None:
                results[t.target.name] = finished
                continue
            last = record.last
            if last is None or not last.is_open:
                ready.append((t, record))
            elif last.job_id:
                known.append((t, record, last))
            else:
                intents.append((t, record, last))
        if known:
            results.update(self._resume_known(known, ready))
        if intents:
            results.update(self._resume_intents(intents, ready))
        results.update(self._submit_all(ready))
        return results

    def _resume_known(self, known, ready) -> dict[str, "Tracked | Finished"]:
        """Targets whose last job id is recorded: adopt it if alive, else conclude it."""
        results: dict[str, Tracked | Finished] = {}
        try:
            infos = self.qstat.query([submission.job_id for _, _, submission in known])
        except StatusUnknown as e:
            for t, _, _ in known:
                results[t.target.name] = self._hold(t, f"job status unknown ({e})", self.clock())
            return results
        for t, record, submission in known:
            info = lookup(infos, submission.job_id)
            if info is not None and info.alive:
                results[t.target.name] = self._adopt(t, submission, info)
                continue
            ended = self._end_of_job(
                t.target, record, submission, info, answer=infos, tracked=t, unwatched=True
            )
            if ended is None:
                # No word that it ended: it may be running. Never submit on silence.
                results[t.target.name] = self._hold(
                    t, f"job {submission.job_id} status unknown", self.clock()
                )
                continue
            outcome, decision = ended
            if decision.action is Action.FAIL:
                results[t.target.name] = self._failed(t.target, submission, outcome, decision)
            elif (finished := self._unwatched_success(t, record)) is not None:
                results[t.target.name] = finished
            else:  # Snakemake wants the target (again): submit a new job
                ready.append((t, record))
        return results

    def _unwatched_success(self, t: Tracked, record: TargetRecord) -> Finished | None:
        """The target's last job succeeded, but no Snakemake recorded the end: it succeeded
        while no controller watched it (`unreported`), or a controller handed the success to
        its Snakemake and was killed before Snakemake recorded it (the target is still marked
        incomplete). The next Snakemake asks for the target again although the job wrote
        every output. If they all exist, report that success instead of running the target a
        second time. A target whose end Snakemake did record, asked for again (a forced rerun,
        changed parameters), is submitted."""
        last = record.last
        outputs = [self.config.workdir / output for output in t.target.outputs]
        if (
            last is None
            or not (last.unreported or t.target.incomplete)
            or last.outcome != Kind.SUCCESS.value
            or not outputs
            or not all(path.exists() for path in outputs)
        ):
            return None
        last.unreported = False
        self.registry.save(record)
        message = (
            f"job {last.job_id} succeeded while no controller watched it; its outputs exist, "
            "so it is reported instead of submitting another"
        )
        self.logger.info(f"PBS: {t.target.rule} target {t.target.name}: {message}")
        return Finished(t.target, True, message, job_id=last.job_id)

    def _resume_intents(self, intents, ready) -> dict[str, "Tracked | Finished"]:
        """Targets whose qsub was interrupted: adopt a live job of their name, or submit."""
        results: dict[str, Tracked | Finished] = {}
        try:
            live = self.qstat.list_live()
        except StatusUnknown as e:
            for t, _, _ in intents:
                results[t.target.name] = self._hold(t, f"job list unknown ({e})", self.clock())
            return results
        subjobs = []
        for t, record, submission in intents:
            if submission.array_name:
                # a subjob: its array by the array's name, then the subjob by its index; it
                # is then adopted if alive, its end recorded if it ended (_resume_known)
                array = self._find_by_name(live, submission.array_name)
                if array is not None:
                    self._found_subjob(record, submission, array)
                    subjobs.append((t, record, submission))
                    continue
                what = f"no live array named {submission.array_name} exists"
            else:
                info = self._find_by_name(live, t.target.name)
                if info is not None:
                    submission.job_id = info.id
                    self.registry.save(record)
                    results[t.target.name] = self._adopt(t, submission, info)
                    continue
                what = "no live job of this name exists"
            submission.outcome = "lost"
            submission.reason = f"qsub was interrupted and {what}"
            submission.ended_at = self.clock()
            ready.append((t, record))
        if subjobs:
            results.update(self._resume_known(subjobs, ready))
        return results

    def _found_subjob(self, record: TargetRecord, submission: Submission, array: JobInfo):
        """Record the subjob of `array` (found by its name) that an interrupted qsub made for
        `submission`: the array's id with the submission's index."""
        submission.array_id = array.id
        submission.job_id = subjob_id(array.id, submission.array_index or 0)
        self.registry.save(record)
        self.logger.info(
            f"PBS: subjob {submission.job_id} of array {array.id} ({submission.array_name}) is "
            f"the one a controller killed in qsub submitted for target {record.name}"
        )

    def _find_by_name(self, live: dict[str, JobInfo], name: str) -> JobInfo | None:
        """The target's newest live job; more than one is reported (it should never be)."""
        matches = self._jobs_named(live, name)
        if len(matches) > 1:
            self.logger.warning(
                f"PBS: {len(matches)} live jobs are named {name}: "
                f"{', '.join(info.id for info in matches)}; following {matches[-1].id}"
            )
        return matches[-1] if matches else None

    def _adopt(self, t: Tracked, submission: Submission, info: JobInfo) -> Tracked:
        self.logger.info(
            f"PBS: adopting live job {info.id} (state {info.state}) for {t.target.rule} "
            f"target {t.target.name} instead of submitting another"
        )
        t.job_id, t.waiting, t.missing_polls, t.state = info.id, None, 0, info.state
        t.log_out, t.log_err = submission.log_out, submission.log_err
        t.array_id, t.array_size = submission.array_id, submission.array_size or 0
        return t

    def _submit_all(
        self, items: list[tuple[Tracked, TargetRecord]]
    ) -> dict[str, "Tracked | Finished"]:
        """qsub each item, those that may share an array together (see _units); after a
        queue limit or an unreachable server, hold the rest back."""
        results: dict[str, Tracked | Finished] = {}
        blocked: tuple[str, float] | None = None
        ready = []
        for t, record in items:
            if record.hold_until is not None and record.hold_until > self.clock():
                results[t.target.name] = self._hold(t, _held_for_space(record), record.hold_until)
            else:
                ready.append((t, record))
        for unit in self._units(ready):
            if blocked is not None:
                results.update({t.target.name: self._hold(t, *blocked) for t, _, _ in unit})
                continue
            try:
                if len(unit) == 1:
                    t, record, spec = unit[0]
                    results[t.target.name] = self._submit(t, record, spec)
                else:
                    results.update(self._submit_array(unit))
            except QueueLimit as e:
                blocked = (f"queue limit: {e.message}", self.clock())
                results.update({t.target.name: self._hold(t, *blocked) for t, _, _ in unit})
            except Transient as e:
                for t, _, _ in unit:
                    t.transient_failures += 1
                failures = max(t.transient_failures for t, _, _ in unit)
                delay = min(self.config.submit_backoff * 2 ** (failures - 1), MAX_BACKOFF_SECONDS)
                blocked = (
                    f"qsub failed, retrying in {delay:.0f}s: {e.message}",
                    self.clock() + delay,
                )
                results.update({t.target.name: self._hold(t, *blocked) for t, _, _ in unit})
            except UnknownResource:
                raise  # a fact about the site, not this job: see Executor._start
            except Rejected as e:
                for t, _, _ in unit:
                    message = f"qsub rejected the job: {e.message}"
                    results[t.target.name] = Finished(t.target, False, message)
        return results

    def _units(
        self, items: list[tuple[Tracked, TargetRecord]]
    ) -> list[list[tuple[Tracked, TargetRecord, JobSpec]]]:
        """The qsub calls that submit `items`, each a list of (tracked, record, job spec):
        one item alone, or the items that go out as one array. Items may share an array when
        arrays are on for their rule (--pbs-array-jobs), their job scripts ask for the same
        (resource_directives: queue, project, select, walltime, ...) and the same
        environment variables and rule's own qsub flags are passed, and their target is not
        being resubmitted after a
        failure or kill (that goes out alone). Arrays hold at most the server's
        max_array_size subjobs; a group of one is a plain job. In the order of `items`."""
        units: list[list[tuple[Tracked, TargetRecord, JobSpec]]] = []
        groups: dict[tuple, list[tuple[Tracked, TargetRecord, JobSpec]]] = {}
        for t, record in items:
            spec = self._job_spec(t.target, record, number=len(record.submissions) + 1)
            if not self._may_share_an_array(t.target, record):
                units.append([(t, record, spec)])
                continue
            key = (
                t.target.rule,
                tuple(sorted(t.target.envvars)),
                tuple(t.target.qsub_extra),  # the rule's own qsub flags (pbs_extra)
                resource_directives(spec),
            )
            if key not in groups:
                groups[key] = []
                units.append(groups[key])
            groups[key].append((t, record, spec))
        if not groups or all(len(group) == 1 for group in groups.values()):
            return units
        size = self.qstat.max_array_size(DEFAULT_MAX_ARRAY_SIZE)
        chunked = []
        for unit in units:
            chunked += [unit[i : i + size] for i in range(0, len(unit), size)]
        return chunked

    def _may_share_an_array(self, target: Target, record: TargetRecord) -> bool:
        """Arrays are on for the target's rule, and its last job (if any) neither failed nor
        was killed: a resubmission goes out alone, as a plain job."""
        wanted = self.config.array_jobs
        if not (ALL_RULES in wanted or target.rule in wanted):
            return False
        last = record.last
        return last is None or last.outcome in (Kind.SUCCESS.value, "lost")

    def _submit(self, t: Tracked, record: TargetRecord, spec: JobSpec | None = None) -> Tracked:
        """Submit the target's next job: write its script, record the intent, qsub, record
        the job id. A controller killed at any point between leaves an intent, which the next
        one resolves before submitting (see _resume_intents)."""
        target = t.target
        spec = spec or self._job_spec(target, record, number=len(record.submissions) + 1)
        script = self.registry.write_script(target.name, render_job_script(spec))
        Path(spec.log_out).parent.mkdir(parents=True, exist_ok=True)
        submission = self._record_intent(target, record, spec)
        self.registry.save(record)  # durable before qsub: what a later controller resolves
        submission.job_id = self._qsub(script, target, [record])
        # not fsynced: after a host crash the durable intent leads to this job by its name
        self.registry.save(record, durable=False)
        self.logger.info(
            f"PBS: submitted {target.rule} target {target.name} as job {submission.job_id} "
            f"(submission {len(record.submissions)}, log {spec.log_err})"
        )
        return Tracked(
            target, job_id=submission.job_id, log_out=str(spec.log_out), log_err=str(spec.log_err)
        )

    def _submit_array(
        self, unit: list[tuple[Tracked, TargetRecord, JobSpec]]
    ) -> dict[str, Tracked]:
        """Submit the targets of `unit` as one job array, subjob i running the i-th target's
        Snakemake job. As for a job of its own: the script first, then each member's intent
        (with the array's name and its index), qsub, then each member's subjob id. A
        controller killed in between leaves intents that the next one resolves by finding
        the array by its name (see _resume_intents). Each subjob's logs are the array's
        files of its index, reached through the target's own log names (symbolic links)."""
        dialect = self.qstat.dialect
        members = [f"{t.target.name}.{len(record.submissions) + 1}" for t, record, _ in unit]
        name = array_name(members, prefix=self.config.job_name_prefix)
        first_t, _, first = unit[0]
        log_dir = Path(first.log_out).parent
        logs = (log_dir / f"{name}.{{index}}.out", log_dir / f"{name}.{{index}}.err")
        rule = first_t.target.rule
        spec = dataclasses.replace(
            first,
            # readable in qstat (`<rule>.array.<identity>`); found by its identity (is_job_of)
            name=pbs_job_name(name, readable_label(rule, ["array"]), self.job_name_max),
            command="",
            log_out=array_log_path(logs[0], dialect),
            log_err=array_log_path(logs[1], dialect),
            description=(f"rule {rule}: an array of {len(unit)} jobs, subjob i runs member i",),
        )
        script = self.registry.write_script(
            name,
            render_array_script(
                spec,
                [
                    ArrayMember(i, t.target.command, (f"target {t.target.name}", *t.target.outputs))
                    for i, (t, _, _) in enumerate(unit)
                ],
                dialect,
            ),
        )
        log_dir.mkdir(parents=True, exist_ok=True)
        submissions = []
        for i, (t, record, member) in enumerate(unit):
            files = [array_member_log(template, i, dialect) for template in logs]
            if not all(_link(Path(own), file) for own, file in
                       zip((member.log_out, member.log_err), files, strict=True)):  # fmt: skip
                member = dataclasses.replace(member, log_out=files[0], log_err=files[1])
                unit[i] = (t, record, member)
            submissions.append(
                self._record_intent(
                    t.target, record, member, array_name=name, array_index=i, array_size=len(unit)
                )
            )
        records = [record for _, record, _ in unit]
        self.registry.save_all(records)  # every member's intent durable, before the qsub
        array_id = self._qsub(script, first_t.target, records, array_range_args(dialect, len(unit)))
        results = {}
        for (t, record, member), submission in zip(unit, submissions, strict=True):
            submission.job_id = subjob_id(array_id, submission.array_index)
            submission.array_id = array_id
            self.registry.save(record, durable=False)  # the intent leads to it after a crash
            results[t.target.name] = Tracked(
                t.target,
                job_id=submission.job_id,
                log_out=str(member.log_out),
                log_err=str(member.log_err),
                array_id=array_id,
                array_size=len(unit),
            )
        self.logger.info(
            f"PBS: submitted {len(unit)} {rule} targets as array {array_id} ({name}): "
            + ", ".join(f"[{i}] {t.target.name}" for i, (t, _, _) in enumerate(unit))
        )
        return results

    def _job_spec(self, target: Target, record: TargetRecord, number: int) -> JobSpec:
        """The job script's contents: the target's resources, with the memory raised by
        earlier memory kills, and log files numbered by submission."""
        config = self.config
        log_dir = config.log_dir / target.rule
        label = readable_label(target.rule, (value for _, value in target.wildcards))
        return JobSpec(
            name=pbs_job_name(target.name, label, self.job_name_max),
            command=target.command,
            log_out=log_dir / f"{target.name}.{number}.out",
            log_err=log_dir / f"{target.name}.{number}.err",
            exit_dir=self.registry.exit_dir,
            threads=target.threads,
            mem_mb=max(filter(None, (target.mem_mb, record.mem_mb)), default=None),
            gpus=target.gpus,
            runtime_minutes=target.runtime_minutes,
            queue=target.queue or config.queue,
            project=target.project or config.project,
            select_extra=config.select_extra,
            select=target.select,
            place=target.place,
            description=(f"rule {target.rule}, submission {number}, output:", *target.outputs),
        )

    def _record_intent(
        self, target: Target, record: TargetRecord, spec: JobSpec, **array
    ) -> Submission:
        """Add a submission without a job id (the intent) to the record; the caller saves it,
        durably, before qsub runs (several at once for an array: Registry.save_all). `array`:
        the Submission's array fields of a subjob (its array's name, its index, the size)."""
        submission = Submission(
            job_id=None,
            submitted_at=self.clock(),
            mem_mb=spec.mem_mb,
            walltime=format_walltime(spec.runtime_minutes) if spec.runtime_minutes else None,
            log_out=str(spec.log_out),
            log_err=str(spec.log_err),
            progress_at_submit=self._progress(target),
            **array,
            select=spec.select,
        )
        record.submissions.append(submission)
        record.hold_until = None
        return submission

    def _qsub(
        self,
        script: Path,
        target: Target,
        records: list[TargetRecord],
        array_args: list[str] | None = None,
    ) -> str:
        """qsub the script (of a job, or of an array with `array_args`); if it certainly
        created no job, take the intents of `records` back."""
        try:
            return run_qsub(
                script,
                (*self.config.qsub_extra, *target.qsub_extra),
                target.envvars,
                timeout=self.config.command_timeout,
                cwd=str(self.config.workdir),
                array_args=array_args or (),
            )
        except QsubError as e:
            if not (isinstance(e, Transient) and e.maybe_submitted):
                for record in records:
                    record.submissions.pop()
                    # not fsynced: an intent a host crash brings back finds no job by its
                    # name, and is submitted
                    self.registry.save(record, durable=False)
            raise

    def _hold(self, t: Tracked, reason: str, retry_at: float) -> Tracked:
        if reason != t.waiting:
            self.logger.info(f"PBS: holding back {t.target.rule} target {t.target.name}: {reason}")
        t.job_id, t.waiting, t.retry_at = None, reason, retry_at
        t.array_id, t.array_size = None, 0
        return t

    # -- polling -----------------------------------------------------------------------

    def _query(self, job_ids: list[str]) -> Answer | None:
        if not job_ids:
            return Answer()
        try:
            answer = self.qstat.query(job_ids)
        except StatusUnknown as e:
            self.logger.warning(f"PBS: job status unknown this round, asking again later: {e}")
            return None
        if answer.omitted:
            self.logger.warning(
                f"PBS: qstat's answer about {len(job_ids)} jobs left out "
                f"{', '.join(answer.omitted)}, which the server knows when asked about them alone"
            )
        return answer

    def _vanished(self, t: Tracked, answer: Answer, job_id: str) -> bool:
        """Whether job `job_id` of `t`, missing from `answer`, is gone: the server said, asked
        about it alone, that it does not know it, at MISSING_POLLS_BEFORE_VANISHED polls in a
        row (counted in `t`)."""
        if not answer.forgotten(job_id):
            t.missing_polls = 0
            return False
        t.missing_polls += 1
        return t.missing_polls >= MISSING_POLLS_BEFORE_VANISHED

    def _check(self, t: Tracked, infos: Answer | None) -> "Tracked | Finished | TargetRecord":
        """A tracked job's state: still active, finished, or the record to resubmit it with."""
        if infos is None:
            return t
        info = lookup(infos, t.job_id)
        if info is not None and info.alive:
            t.missing_polls, t.state = 0, info.state
            return t
        record = self.registry.load(t.target.name)
        submission = record.submission(t.job_id)
        if submission is None:  # the record was lost or replaced: start it again
            submission = Submission(
                job_id=t.job_id, submitted_at=self.clock(), log_out=t.log_out, log_err=t.log_err
            )
            record.submissions.append(submission)
        ended = self._end_of_job(t.target, record, submission, info, answer=infos, tracked=t)
        if ended is None:
            return t
        outcome, decision = ended
        if decision.action is Action.SUCCEED:
            return Finished(t.target, True, outcome.reason)
        if decision.action is Action.FAIL:
            return self._failed(t.target, submission, outcome, decision)
        t.job_id, t.missing_polls = None, 0
        return record

    def _end_of_job(
        self,
        target: Target,
        record: TargetRecord,
        submission: Submission,
        info: JobInfo | None,
        answer: Answer | None = None,
        tracked: Tracked | None = None,
        unwatched: bool = False,
    ) -> tuple[Outcome, Decision] | None:
        """The one path by which a job's end is recorded, wherever it is noticed (a poll, a
        restart, reconcile): if there is evidence that the job of `submission` ended, classify
        how, update the record's counters, decide what is next and save the record.

        Only positive evidence ends a job: qstat showing it ended (`info`), the exit record
        its script left, or, for a job followed over polls (`tracked`), the server saying in
        `answer` that it does not know it, at polls in a row (see _vanished). Without any,
        None: the job may be alive, and nothing changed. `unwatched`: it ended while no
        controller watched it, so no Snakemake was told (see _unwatched_success).
        """
        if info is not None and info.alive:
            return None
        code = self.registry.exit_record(submission.job_id)
        if info is None and code is None:
            if tracked is None or answer is None:
                return None
            if not self._vanished(tracked, answer, submission.job_id):
                return None
        if unwatched:
            submission.unreported = True
        if info is not None:
            submission.usage = job_usage(info) or submission.usage
        stderr_tail = "\n".join(tail_lines(submission.log_err, 200))
        outcome = classify(info, code, stderr_tail)
        decision = decide(
            record, submission, outcome, self._progress(target), self.config.limits, self.clock()
        )
        self.registry.save(record)
        log = self.logger.info if decision.action is not Action.FAIL else self.logger.error
        log(
            f"PBS: job {submission.job_id} ({target.rule} target {target.name}) "
            f"{outcome.kind.value}: {outcome.reason}; {decision.reason}"
        )
        return outcome, decision

    def _progress(self, target: Target) -> Progress | None:
        if not target.outputs or not self.config.progress_file:
            return None
        return job_progress(
            (self.config.workdir / output for output in target.outputs),
            self.config.progress_file,
            self.config.progress_key,
        )

    # -- giving up ---------------------------------------------------------------------

    def _failed(
        self, target: Target, submission: Submission, outcome: Outcome, decision: Decision
    ) -> Finished:
        lines = [
            f"PBS job {submission.job_id} of rule {target.rule} (target {target.name}) "
            f"ended: {outcome.kind.value}, {outcome.reason}.",
            f"Given up: {decision.reason}.",
            f"Job stdout: {submission.log_out}",
            f"Job stderr: {submission.log_err}",
        ]
        for label, path in (("stderr", submission.log_err), ("stdout", submission.log_out)):
            tail = tail_lines(path)
            if tail:
                lines.append(f"Last {len(tail)} lines of the job's {label}:")
                lines += [f"    {line}" for line in tail]
        lines.append(self._retry_hint(target.name))
        logs = tuple(p for p in (submission.log_err, submission.log_out) if p)
        return Finished(target, False, "\n".join(lines), logs)

    def _given_up_earlier(self, t: Tracked, record: TargetRecord) -> Finished:
        last = record.last
        logs = tuple(p for p in (last.log_err, last.log_out) if p) if last else ()
        message = (
            f"Target {t.target.name} of rule {t.target.rule} was given up by an earlier run: "
            f"{record.failed}. Logs: {', '.join(logs) or 'none'}.\n"
            + self._retry_hint(t.target.name)
        )
        return Finished(t.target, False, message, logs)

    def _retry_hint(self, name: str) -> str:
        return (
            f"Record: {self.registry.path(name)}. Once the cause is fixed, run again with "
            "--pbs-retry-failed (or delete the record) to try this target again."
        )

    @staticmethod
    def _clear_failure(record: TargetRecord) -> None:
        record.failed, record.hold_until = None, None
        reset_stall_counters(record)
