"""Keep each target's PBS job going until it succeeds or is given up for good.

Before submitting, adopt the target's live job if there is one; record the intent in the
registry before qsub and the job id right after, so that a controller killed at any instant
never leads to two live jobs for one target. Poll every job with one qstat, classify each
end, and resubmit (walltime, memory, other kills, errors that may pass) or give up.
"""

import getpass
import logging
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from .cancel import qdel
from .classify import Kind, Outcome, classify
from .policy import Action, Decision, Limits, decide, reset_stall_counters
from .progress import DEFAULT_PROGRESS_KEY, Progress, job_progress
from .registry import Registry, Submission, TargetRecord
from .status import Answer, JobInfo, Qstat, StatusUnknown, job_id_order, lookup
from .submit import (
    JobSpec,
    QsubError,
    QueueLimit,
    Rejected,
    Transient,
    UnknownResource,
    format_walltime,
    render_job_script,
)
from .submit import qsub as run_qsub

# A job the server, asked about it alone, says it does not know, and that left no exit
# record, is taken as vanished (node failure, purged) only when that holds for this many polls
# in a row. A job merely missing from an answer is never taken as ended.
MISSING_POLLS_BEFORE_VANISHED = 2
MAX_BACKOFF_SECONDS = 900
# qsubs of one round that run at once (see Controller._qsub_round). qsub spends most of its
# time waiting for the server; a few at once overlap those waits without crowding the server,
# which serves requests one at a time.
QSUB_THREADS = 4
TAIL_LINES = 20
TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class Target:
    """One Snakemake job as the controller sees it."""

    name: str  # deterministic PBS job name (submit.job_name of the outputs)
    rule: str
    outputs: tuple[str, ...]  # in declared order; their directories hold the progress files
    command: str  # the Snakemake job command the script runs
    threads: int = 1
    mem_mb: int | None = None
    runtime_minutes: float | None = None
    gpus: int = 0
    envvars: tuple[str, ...] = ()  # names of environment variables the job needs
    queue: str | None = None  # the rule's own queue (resource pbs_queue), else the setting's
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
        for record in intents:
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

    def _job_of_intent(self, record: TargetRecord, listed: dict[str, JobInfo]) -> JobInfo | None:
        """The job an interrupted qsub of `record` created: the newest job of the target's
        name, from this directory, queued since the intent, not already in the record."""
        taken = {s.job_id for s in record.submissions if s.job_id}
        since = record.last.submitted_at - 300  # clocks of login node and server may differ
        found = [
            info
            for info in self._jobs_named(listed, record.name)
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
            if info.name == name
            and (info.user is None or user is None or info.user == user)
            and (info.workdir is None or _same_directory(info.workdir, self.config.workdir))
        ]
        return sorted(ours, key=lambda info: job_id_order(info.id))

    def cancel(self, tracked: Iterable[Tracked]) -> None:
        """qdel every job this controller tracks, in one call."""
        with self._lock:
            job_ids = [t.job_id for t in tracked if t.job_id]
            if job_ids:
                self.logger.info(f"PBS: deleting {len(job_ids)} jobs: {' '.join(job_ids)}")
            result = qdel(job_ids, self.config.command_timeout)
            if result is not None and result.returncode != 0:
                self.logger.warning(f"PBS: {result.describe()}")

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
        for t, record, submission in intents:
            info = self._find_by_name(live, t.target.name)
            if info is not None:
                submission.job_id = info.id
                self.registry.save(record)
                results[t.target.name] = self._adopt(t, submission, info)
                continue
            submission.outcome = "lost"
            submission.reason = "qsub was interrupted and no live job of this name exists"
            submission.ended_at = self.clock()
            ready.append((t, record))
        return results

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
        t.job_id, t.waiting, t.missing_polls = info.id, None, 0
        t.log_out, t.log_err = submission.log_out, submission.log_err
        return t

    def _submit_all(
        self, items: list[tuple[Tracked, TargetRecord]]
    ) -> dict[str, "Tracked | Finished"]:
        """qsub each item; after a queue limit or an unreachable server, hold the rest back.
        The intents of all of them are made durable together first (see _record_intents),
        then up to QSUB_THREADS qsubs run at once (see _qsub_round)."""
        results: dict[str, Tracked | Finished] = {}
        specs = self._record_intents(
            [(t, r) for t, r in items if r.hold_until is None or r.hold_until <= self.clock()]
        )
        attempts = self._qsub_round([(t, r, specs[t.target.name]) for t, r in items
                                     if t.target.name in specs])  # fmt: skip
        blocked: tuple[str, float] | None = None
        for t, record in items:
            name = t.target.name
            if name not in specs:
                results[name] = self._hold(t, _held_for_space(record), record.hold_until)
                continue
            attempt = attempts[name]
            if isinstance(attempt, Tracked):
                results[name] = attempt
            elif isinstance(attempt, QueueLimit):
                blocked = (f"queue limit: {attempt.message}", self.clock())
                results[name] = self._hold(t, *blocked)
            elif isinstance(attempt, Transient):
                t.transient_failures += 1
                delay = min(
                    self.config.submit_backoff * 2 ** (t.transient_failures - 1),
                    MAX_BACKOFF_SECONDS,
                )
                blocked = (
                    f"qsub failed, retrying in {delay:.0f}s: {attempt.message}",
                    self.clock() + delay,
                )
                results[name] = self._hold(t, *blocked)
            elif isinstance(attempt, Rejected):
                results[name] = Finished(
                    t.target, False, f"qsub rejected the job: {attempt.message}"
                )
        # Not tried: a qsub of the round was refused (queue limit, server unreachable, a
        # resource the site lacks) before theirs began. Their intents are taken back, and
        # they wait as the refused one does (`blocked`, set above by that refusal).
        untried = [(t, r) for t, r in items if t.target.name in specs
                   and attempts[t.target.name] is None]  # fmt: skip
        for _, record in untried:
            self._withdraw_intent(record)
        unknown = next((a for a in attempts.values() if isinstance(a, UnknownResource)), None)
        if unknown is not None:
            raise unknown  # a fact about the site, not this job: see Executor._start
        for t, _ in untried:
            results[t.target.name] = self._hold(t, *blocked)
        return results

    def _qsub_round(
        self, items: list[tuple[Tracked, TargetRecord, JobSpec]]
    ) -> dict[str, "Tracked | QsubError | None"]:
        """Submit each item (whose intent is durable), up to QSUB_THREADS at once: qsub waits
        mostly on the server (connection, authentication, the server's own commit), so a few
        at once overlap those waits. After a refusal that concerns every job (queue limit,
        server unreachable, unknown resource) no further qsub begins. By name: the Tracked
        job, the QsubError, or None where no qsub was tried."""
        stop = threading.Event()

        def attempt(
            t: Tracked, record: TargetRecord, spec: JobSpec
        ) -> "Tracked | QsubError | None":
            if stop.is_set():
                return None
            try:
                return self._submit(t, record, spec)
            except (QueueLimit, Transient, UnknownResource) as e:
                stop.set()
                return e
            except Rejected as e:
                return e

        if len(items) <= 1:
            return {t.target.name: attempt(t, r, spec) for t, r, spec in items}
        with ThreadPoolExecutor(min(QSUB_THREADS, len(items))) as pool:
            futures = {t.target.name: pool.submit(attempt, t, r, spec) for t, r, spec in items}
        return {name: future.result() for name, future in futures.items()}

    def _submit(self, t: Tracked, record: TargetRecord, spec: JobSpec) -> Tracked:
        """Submit the target's next job, whose intent is recorded (_record_intents): write
        its script, qsub, record the job id. A controller killed at any point between leaves
        an intent, which the next one resolves before submitting (see _resume_intents)."""
        target = t.target
        submission = record.last
        script = self.registry.write_script(target.name, render_job_script(spec))
        Path(spec.log_out).parent.mkdir(parents=True, exist_ok=True)
        submission.job_id = self._qsub(script, target, record)
        # not fsynced: after a host crash the durable intent leads to this job by its name
        self.registry.save(record, durable=False)
        self.logger.info(
            f"PBS: submitted {target.rule} target {target.name} as job {submission.job_id} "
            f"(submission {len(record.submissions)}, log {spec.log_err})"
        )
        return Tracked(
            target, job_id=submission.job_id, log_out=str(spec.log_out), log_err=str(spec.log_err)
        )

    def _job_spec(self, target: Target, record: TargetRecord, number: int) -> JobSpec:
        """The job script's contents: the target's resources, with the memory raised by
        earlier memory kills, and log files numbered by submission."""
        config = self.config
        log_dir = config.log_dir / target.rule
        return JobSpec(
            name=target.name,
            command=target.command,
            log_out=log_dir / f"{target.name}.{number}.out",
            log_err=log_dir / f"{target.name}.{number}.err",
            exit_dir=self.registry.exit_dir,
            threads=target.threads,
            mem_mb=max(filter(None, (target.mem_mb, record.mem_mb)), default=None),
            gpus=target.gpus,
            runtime_minutes=target.runtime_minutes,
            queue=target.queue or config.queue,
            project=config.project,
            select_extra=config.select_extra,
            description=(f"rule {target.rule}, submission {number}, output:", *target.outputs),
        )

    def _record_intents(self, items: list[tuple[Tracked, TargetRecord]]) -> dict[str, JobSpec]:
        """Add a submission without a job id (the intent) to each item's record and make them
        all durable in one round (Registry.save_all), before the first qsub: a few journal
        commits for the round instead of two fsyncs per job. The job spec of each, by name."""
        specs = {}
        for t, record in items:
            spec = self._job_spec(t.target, record, number=len(record.submissions) + 1)
            self._record_intent(t.target, record, spec)
            specs[t.target.name] = spec
        self.registry.save_all(record for _, record in items)
        return specs

    def _withdraw_intent(self, record: TargetRecord) -> None:
        """Take back the intent of a job that was never submitted (held back). Not fsynced:
        an intent that a host crash brings back finds no job by its name and is submitted."""
        record.submissions.pop()
        self.registry.save(record, durable=False)

    def _record_intent(self, target: Target, record: TargetRecord, spec: JobSpec) -> Submission:
        """Add a submission without a job id (the intent) to the record; saved by the caller
        before qsub runs."""
        submission = Submission(
            job_id=None,
            submitted_at=self.clock(),
            mem_mb=spec.mem_mb,
            walltime=format_walltime(spec.runtime_minutes) if spec.runtime_minutes else None,
            log_out=str(spec.log_out),
            log_err=str(spec.log_err),
            progress_at_submit=self._progress(target),
        )
        record.submissions.append(submission)
        record.hold_until = None
        return submission

    def _qsub(self, script: Path, target: Target, record: TargetRecord) -> str:
        """qsub the script; if it certainly created no job, take the intent back."""
        try:
            return run_qsub(
                script,
                self.config.qsub_extra,
                target.envvars,
                timeout=self.config.command_timeout,
                cwd=str(self.config.workdir),
            )
        except QsubError as e:
            if not (isinstance(e, Transient) and e.maybe_submitted):
                self._withdraw_intent(record)
            raise

    def _hold(self, t: Tracked, reason: str, retry_at: float) -> Tracked:
        if reason != t.waiting:
            self.logger.info(f"PBS: holding back {t.target.rule} target {t.target.name}: {reason}")
        t.job_id, t.waiting, t.retry_at = None, reason, retry_at
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
            t.missing_polls = 0
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
