"""Snakemake executor plugin for PBS Pro / OpenPBS (and Torque): `snakemake --executor pbs`."""

import re
import shlex
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path

from snakemake_interface_common.exceptions import WorkflowError
from snakemake_interface_executor_plugins.executors.base import SubmittedJobInfo
from snakemake_interface_executor_plugins.executors.real import RealExecutor
from snakemake_interface_executor_plugins.executors.remote import RemoteExecutor
from snakemake_interface_executor_plugins.jobs import JobExecutorInterface
from snakemake_interface_executor_plugins.settings import (
    CommonSettings,
    ExecutorSettingsBase,
    SharedFSUsage,
)
from snakemake_interface_executor_plugins.utils import format_cli_arg

from .commands import missing_commands
from .controller import ALL_RULES, Controller, ControllerConfig, Finished, Target, Tracked
from .policy import Limits
from .polling import PollInterval
from .progress import DEFAULT_PROGRESS_KEY
from .registry import Registry
from .resources import (
    DIRECTIVE_ALLOWED,
    DIRECTIVE_VALUE,
    RULE_RESOURCES,
    ResourceProblem,
    RuleSettings,
    qsub_options,
    rule_settings,
)
from .submit import (
    DEFAULT_JOB_NAME_PREFIX,
    JOB_NAME_MAX_CHARS,
    JOB_NAME_MAX_PBSPRO,
    UnknownResource,
    job_name,
    job_name_prefix_problem,
)
from .usage import (
    DEFAULT_EFFICIENCY_THRESHOLD,
    default_report_path,
    run_rows,
    wasteful,
    write_report,
)

# A Snakemake rule name (a Python identifier) in --pbs-array-jobs.
_RULE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def parse_array_jobs(value: str | None) -> frozenset[str]:
    """--pbs-array-jobs as the rules whose jobs may go out as arrays: `all` (ALL_RULES), or
    rule names separated by commas; None or empty: arrays off. Anything else is refused."""
    if value is None or not str(value).strip():
        return frozenset()
    text = str(value).strip()
    if text == ALL_RULES:
        return frozenset({ALL_RULES})
    names = [name.strip() for name in text.split(",")]
    bad = [name for name in names if not _RULE_NAME.match(name) or name == ALL_RULES]
    if bad:
        raise WorkflowError(
            f"--pbs-array-jobs = {value!r}: give `all` or rule names separated by commas "
            f"(e.g. `simulate,align`); not rule names: {', '.join(map(repr, bad))}"
        )
    return frozenset(names)


def _setting(default, help_text: str, type_=None, env_var: bool = True):
    """A settings field: `--pbs-<name>`, `SNAKEMAKE_PBS_<NAME>`, profile key `pbs-<name>`."""
    metadata = {"help": help_text, "env_var": env_var, "required": False}
    if type_ is not None:
        metadata["type"] = type_
    return field(default=default, metadata=metadata)


@dataclass
class ExecutorSettings(ExecutorSettingsBase):
    """Settings of the PBS executor; each help text is its documentation."""

    queue: str | None = _setting(
        None,
        "PBS queue (qsub -q), e.g. gpu_1; a rule can name its own with the resource "
        "pbs_queue. Default: the server's default queue.",
        str,
    )
    project: str | None = _setting(
        None,
        "PBS project code (qsub -P), required by sites that charge each job to an "
        "allocation. Default: none.",
        str,
    )
    select_extra: str | None = _setting(
        None,
        "Extra resources appended to the select chunk, e.g. 'mpiprocs=1' or "
        "'host=node01'. ncpus comes from the rule's threads, mem from mem_mb, ngpus from "
        "the rule's `gpu` (or `gpus`) resource.",
        str,
    )
    qsub_extra: str | None = _setting(
        None,
        "Extra qsub options, split like a shell command line, e.g. '-m n' or "
        "'-W group_list=abc'. They override the job script's #PBS lines.",
        str,
    )
    log_dir: Path = _setting(
        Path("logs/pbs"),
        "Directory of the jobs' stdout/stderr files (<log_dir>/<rule>/<job name>.<n>.out "
        "and .err), relative to the working directory.",
    )
    registry_dir: Path = _setting(
        Path(".snakemake-pbs"),
        "Directory of the registry of submissions (job ids, outcomes, counters, memory, "
        "job scripts, exit codes), relative to the working directory. Keep it outside "
        ".snakemake: it must survive `rm -rf .snakemake`, since it is what lets a restarted "
        "controller adopt live jobs instead of submitting them twice.",
    )
    job_name_prefix: str = _setting(
        DEFAULT_JOB_NAME_PREFIX,
        "Start of every target's identity, `<prefix><10 hex digits of a hash of the job's "
        "output paths>`: the end of its PBS job name (qsub -N, after the rule and wildcards) "
        "and the name of its registry record, so a restarted controller finds its live job "
        "by name. 1 to 5 characters: a letter, then letters, digits, _ or -. Changing it "
        "makes live jobs of the old prefix unknown by name.",
        str,
    )
    job_name_max: int | None = _setting(
        None,
        "Longest PBS job name (qsub -N) the server takes: `<rule>.<wildcard values>.<identity>` "
        "is cut to it, never the identity. Default: 236 (PBS_MAXJOBNAME of OpenPBS and PBS Pro "
        "13 and later), 15 where qstat --version says Torque (only the identity fits). Set 15 "
        "for a PBS Pro older than 13.",
        int,
    )
    progress_file: str | None = _setting(
        None,
        "Optional progress hook: name of a JSON file in the directory of a job's output "
        "(of each output's, summed) that the job rewrites as it gets further, e.g. "
        'progress.json holding {"progress": 12}. A job that ends having raised the number is '
        "resubmitted after a walltime kill, a kill or an error without counting towards the "
        "limits of failures in a row. Default: none, so no job counts as having got further.",
        str,
    )
    progress_key: str = _setting(
        DEFAULT_PROGRESS_KEY,
        "Field of the progress file (--pbs-progress-file) that holds the number, e.g. "
        "steps or epochs done. A missing file, field or number means 'not known'.",
        str,
    )
    status_interval: int | None = _setting(
        None,
        "A fixed number of seconds between status checks (each is one qstat for all jobs), "
        "as in earlier versions. Default: unset, the interval adapts: Snakemake's "
        "--seconds-between-status-checks right after jobs start or end, growing x1.5 at each "
        "check that saw no change up to --pbs-status-interval-max.",
        int,
    )
    status_interval_min: int = _setting(
        1,
        "Site bound: status checks never come closer together than this many seconds, "
        "whatever a user asks for; and never closer than one second per 20 jobs followed.",
        int,
    )
    status_interval_max: int = _setting(
        180,
        "Site bound: while nothing changes, the seconds between status checks grow (x1.5 a "
        "check) up to this.",
        int,
    )
    efficiency_report: bool = field(
        default=False,
        metadata={
            "help": "At the end of the run, write a CSV of every job's requested and used "
            "memory, walltime and CPU time (resources_used from qstat), print its path, and "
            "name the jobs that used less than --pbs-efficiency-threshold of what they asked.",
            "required": False,
        },
    )
    efficiency_report_path: Path | None = _setting(
        None,
        "Where --pbs-efficiency-report writes its CSV. Default: "
        "<log dir>/efficiency_report_<date>-<time>.csv.",
        Path,
    )
    efficiency_threshold: float = _setting(
        DEFAULT_EFFICIENCY_THRESHOLD,
        "With --pbs-efficiency-report: a successful job that used less than this share of the "
        "memory or the walltime it requested is named in the log.",
        float,
    )
    command_timeout: int = _setting(
        120,
        "Seconds before a qsub, qstat or qdel call is abandoned. A qstat that times out "
        "means 'status unknown, ask again', never 'failed'.",
        int,
    )
    max_error_retries: int = _setting(
        2,
        "How many times in a row a job that failed without progress is resubmitted before "
        "its target is given up.",
        int,
    )
    max_stalled_walltime_kills: int = _setting(
        2,
        "Give a target up after this many walltime kills in a row without progress. "
        "Walltime kills with progress (see --pbs-progress-file) are resubmitted without "
        "limit; without a progress measure every walltime kill counts.",
        int,
    )
    max_kill_retries: int = _setting(
        5,
        "How many times a job killed without progress by something other than its limits "
        "(node failure, preemption, qdel by an admin, vanished) is resubmitted.",
        int,
    )
    mem_growth: float = _setting(
        1.5,
        "Factor on mem_mb after a memory kill; the raised memory is kept in the registry, "
        "so later runs request it too. Must be greater than 1.",
        float,
    )
    max_mem_mb: int | None = _setting(
        None,
        "Memory is never raised above this many MB; a memory kill at this cap gives the "
        "target up. Default: no cap (qsub refuses what the queue cannot give).",
        int,
    )
    submit_backoff: int = _setting(
        60,
        "Seconds before retrying a qsub that could not reach the server; doubled after "
        "each failure, up to 15 minutes. Queue-limit refusals are retried at every status "
        "check instead.",
        int,
    )
    storage_wait: int = _setting(
        10,
        "Minutes before resubmitting a job that failed writing to a full disk or quota "
        "(No space left on device, Disk quota exceeded); doubled after each such failure "
        "in a row, up to an hour. Such failures spend no error retries.",
        int,
    )
    max_storage_failures: int = _setting(
        12,
        "How many times in a row a job that failed on a full disk or quota is resubmitted "
        "(each after its wait) before its target is given up; progress starts the count "
        "over. With the default waits, about ten hours of a full disk.",
        int,
    )
    array_jobs: str | None = _setting(
        None,
        "Submit the ready jobs of these rules as PBS job arrays: `all`, or rule names "
        "separated by commas. Jobs of one rule that are ready together and ask for the "
        "same resources go out as one array (qsub -J on PBS Pro / OpenPBS, -t on Torque), "
        "at most the server's max_array_size subjobs each; every subjob is still its own "
        "Snakemake job, tracked, classified, adopted after a restart and resubmitted alone "
        "(as a plain job) when it must be. Default: off.",
        str,
    )
    retry_failed: bool = field(
        default=False,
        metadata={
            "help": "Try targets again that an earlier run gave up (after too many "
            "failures without progress), and resubmit at once those waiting for disk "
            "space; their counters start from zero.",
            "required": False,
        },
    )

    def __post_init__(self):
        for name in ("queue", "project", "select_extra"):
            value = getattr(self, name)
            if value and not DIRECTIVE_VALUE.match(value):
                raise WorkflowError(
                    f"--pbs-{name.replace('_', '-')} = {value!r}: it goes into the job script's "
                    f"#PBS lines; use {DIRECTIVE_ALLOWED}"
                )
        problem = job_name_prefix_problem(self.job_name_prefix)
        if problem is not None:
            raise WorkflowError(f"--pbs-job-name-prefix = {self.job_name_prefix!r}: {problem}")
        if self.progress_file is not None and (
            not str(self.progress_file).strip() or Path(self.progress_file).is_absolute()
        ):
            raise WorkflowError(
                f"--pbs-progress-file = {self.progress_file!r}: give a file name, relative to "
                "the directory of each job's outputs"
            )
        if not self.progress_key:
            raise WorkflowError("--pbs-progress-key must not be empty")
        if self.mem_growth <= 1:
            raise WorkflowError(f"--pbs-mem-growth must be greater than 1, not {self.mem_growth}")
        if (self.status_interval is not None and self.status_interval < 1) or (
            self.command_timeout < 1
        ):
            raise WorkflowError("--pbs-status-interval and --pbs-command-timeout must be >= 1")
        parse_array_jobs(self.array_jobs)
        if not 1 <= self.status_interval_min <= self.status_interval_max:
            raise WorkflowError(
                f"--pbs-status-interval-min ({self.status_interval_min}) must be >= 1 and at "
                f"most --pbs-status-interval-max ({self.status_interval_max})"
            )
        if self.job_name_max is not None and not (
            JOB_NAME_MAX_CHARS <= self.job_name_max <= JOB_NAME_MAX_PBSPRO
        ):
            raise WorkflowError(
                f"--pbs-job-name-max = {self.job_name_max}: from {JOB_NAME_MAX_CHARS} (the "
                f"identity alone) to {JOB_NAME_MAX_PBSPRO} (OpenPBS, PBS Pro 13 and later)"
            )
        if not 0 < self.efficiency_threshold < 1:
            raise WorkflowError(
                f"--pbs-efficiency-threshold must be between 0 and 1, not "
                f"{self.efficiency_threshold}"
            )
        try:
            qsub_options("--pbs-qsub-extra", self.qsub_extra)
        except ResourceProblem as e:
            raise WorkflowError(f"--pbs-qsub-extra = {self.qsub_extra!r}: {e.allowed}") from None
        if self.storage_wait < 1 or self.max_storage_failures < 0:
            raise WorkflowError(
                f"--pbs-storage-wait must be >= 1 (minutes), not {self.storage_wait}, and "
                f"--pbs-max-storage-failures >= 0, not {self.max_storage_failures}"
            )


common_settings = CommonSettings(
    non_local_exec=True,
    implies_no_shared_fs=False,
    job_deploy_sources=False,
    pass_default_storage_provider_args=True,
    pass_default_resources_args=True,
    pass_envvar_declarations_to_cmd=False,
    auto_deploy_default_storage_provider=False,
    # Nothing is active when the controller starts: poll from the first round on.
    init_seconds_before_status_checks=0,
)


def controller_config(settings: ExecutorSettings, workdir: Path) -> ControllerConfig:
    """The controller's configuration from the plugin settings."""
    return ControllerConfig(
        workdir=workdir,
        log_dir=workdir / settings.log_dir,
        queue=settings.queue,
        project=settings.project,
        select_extra=settings.select_extra,
        qsub_extra=tuple(shlex.split(settings.qsub_extra or "")),
        progress_file=settings.progress_file or None,
        progress_key=settings.progress_key,
        limits=Limits(
            max_error_retries=settings.max_error_retries,
            max_stalled_walltime_kills=settings.max_stalled_walltime_kills,
            max_kill_retries=settings.max_kill_retries,
            mem_growth=settings.mem_growth,
            max_mem_mb=settings.max_mem_mb,
            storage_wait=60.0 * settings.storage_wait,
            max_storage_failures=settings.max_storage_failures,
        ),
        submit_backoff=settings.submit_backoff,
        command_timeout=settings.command_timeout,
        retry_failed=settings.retry_failed,
        array_jobs=parse_array_jobs(settings.array_jobs),
        job_name_prefix=settings.job_name_prefix,
        job_name_max=settings.job_name_max,
    )


# Where each select-statement resource comes from in Snakemake's terms.
_RESOURCE_SOURCES = {
    "ngpus": "the rules' `gpu` resource (set it to 0 where the site has no GPUs: "
    "--set-resources RULE:gpu=0)",
    "mem": "the rules' `mem_mb` resource",
    "ncpus": "the rules' threads",
    "walltime": "the rules' `runtime` resource",
}


def _unknown_resource_message(error: UnknownResource) -> str:
    source = _RESOURCE_SOURCES.get(
        error.resource, "--pbs-select-extra or --pbs-qsub-extra (the plugin adds nothing else)"
    )
    return (
        f"This PBS server does not know the resource `{error.resource}` ({error.message}). "
        f"It comes from {source}. Every job that asks for it would be refused the same way, "
        "so nothing more is submitted: ask for what the site defines (`pbsnodes -a` lists "
        "each node's resources_available), or have the administrators define it.\n"
    )


def _paragraph(message: str) -> str:
    """Snakemake appends its own sentence right after a job's error message."""
    return message if message.endswith("\n") else message + "\n"


def _number_resource(resources, *names: str) -> float | None:
    """The first of the named resources that is set, as a number."""
    for name in names:
        value = resources.get(name)
        if value in (None, ""):
            continue
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise WorkflowError(f"Resource {name} must be a number for PBS, not {value!r}") from e
    return None


def _rule_settings(rule: str, resources) -> RuleSettings:
    """The rule's own PBS settings (resources.py); a WorkflowError names the rule, the resource
    and what it may be."""
    try:
        return rule_settings(resources)
    except ResourceProblem as e:
        raise WorkflowError(
            f"Rule {rule}: resource {e.resource} = {e.value!r} cannot be used: {e.allowed}. "
            "Nothing of the rule is submitted."
        ) from None


def poll_interval(workflow) -> PollInterval:
    """The status-check interval policy: adaptive from the user's
    --seconds-between-status-checks, or fixed at --pbs-status-interval; never below the site's
    --pbs-status-interval-min, nor below one second per 20 jobs followed (polling.py)."""
    settings = workflow.executor_settings
    lowest = settings.status_interval_min
    if settings.status_interval:  # fixed, as the user asks (never below the site's floor)
        return PollInterval(
            shortest=max(lowest, settings.status_interval),
            longest=settings.status_interval_max,
            growth=1.0,
        )
    user = getattr(workflow.remote_execution_settings, "seconds_between_status_checks", None)
    return PollInterval(shortest=max(lowest, user or lowest), longest=settings.status_interval_max)


def _wildcards(job) -> tuple[tuple[str, str], ...]:
    """The Snakemake job's wildcards as (name, value) pairs; none for a group job."""
    wildcards = getattr(job, "wildcards_dict", None) or {}
    return tuple((str(name), str(value)) for name, value in wildcards.items())


def _int_resource(resources, *names: str) -> int | None:
    value = _number_resource(resources, *names)
    return None if value is None else round(value)


class Executor(RemoteExecutor):
    """Glue between Snakemake and the Controller, which does the PBS work."""

    def __init__(self, workflow, logger):
        missing = missing_commands()
        if missing:
            raise WorkflowError(
                f"The PBS executor needs {', '.join(missing)} on PATH (run Snakemake on a "
                "login node of the cluster)."
            )
        # Set before the base class starts the status-check thread, which uses them.
        self.poll_interval = poll_interval(workflow)
        self._last_seen: dict[str, tuple[str | None, str | None]] = {}
        self._submitted_since_check = False
        super().__init__(workflow, logger)

    def __post_init__(self):
        settings = self.workflow.executor_settings
        self._check_array_rules(parse_array_jobs(settings.array_jobs))
        workdir = Path.cwd()
        self.controller = Controller(
            controller_config(settings, workdir),
            Registry(workdir / settings.registry_dir),
            logger=self.logger,
        )
        # jobs that ended while no controller ran: record how, so that every finished
        # target's record says so (Snakemake never asks about a target whose outputs exist)
        try:
            self.controller.reconcile()
        except Exception as e:  # bookkeeping only: never keep a run from starting for it
            self.logger.warning(f"PBS: could not record how earlier jobs ended: {e}")
        self._check_rule_resources()
        self.next_seconds_between_status_checks = self.poll_interval.current

    def _check_rule_resources(self):
        """Every per-rule PBS resource of the jobs this run needs, checked before anything is
        submitted (a bad one stops the run here, naming rule and resource). Jobs whose
        resources cannot be evaluated yet are checked when they are submitted."""
        dag = getattr(self.workflow, "dag", None)
        try:
            jobs = list(dag.needrun_jobs()) if dag is not None else []
        except Exception:  # an older Snakemake, or a DAG not built: checked at submission
            jobs = []
        seen = set()
        for job in jobs:
            try:
                resources = job.resources
                raw = [resources.get(name) for name in RULE_RESOURCES]
            except Exception:  # not evaluable before the job's inputs exist
                continue
            if any(type(value).__name__ == "TBDString" for value in raw):
                continue  # Snakemake's "to be determined": depends on inputs not made yet
            values = tuple(str(value) for value in raw)
            if (job.name, values) not in seen:
                seen.add((job.name, values))
                _rule_settings(job.name, resources)

    def _check_array_rules(self, names: frozenset[str]) -> None:
        """A rule named in --pbs-array-jobs that the workflow lacks is a typo: say so."""
        try:
            known = {rule.name for rule in self.workflow.rules}
        except (AttributeError, TypeError):  # a Snakemake that does not show its rules
            return
        unknown = sorted(names - known - {ALL_RULES})
        if unknown and known:
            raise WorkflowError(
                f"--pbs-array-jobs names {', '.join(unknown)}, which the workflow does not "
                f"have; its rules: {', '.join(sorted(known))}"
            )

    def target(self, job: JobExecutorInterface) -> Target:
        """What the controller needs to know about a Snakemake job."""
        outputs = tuple(str(path) for path in job.output)
        resources = job.resources
        rule = _rule_settings(job.name, resources)
        return Target(
            name=job_name(
                outputs or [f"{job.name}:{job.get_target_spec()}"],
                prefix=self.workflow.executor_settings.job_name_prefix,
            ),
            rule=job.name,
            outputs=outputs,
            command=self.format_job_exec(job),
            threads=job.threads,
            mem_mb=_int_resource(resources, "mem_mb"),
            runtime_minutes=_number_resource(resources, "runtime") or None,
            gpus=_int_resource(resources, "gpu", "gpus") or 0,
            envvars=tuple(self.envvars()),
            queue=rule.queue,
            project=rule.project,
            select=rule.select,
            place=rule.place,
            qsub_extra=rule.qsub_extra,
            wildcards=_wildcards(job),
            incomplete=self._marked_incomplete(job),
        )

    def _marked_incomplete(self, job: JobExecutorInterface) -> bool:
        """Do the job's outputs carry an earlier Snakemake's incomplete mark? Snakemake marks
        a job's outputs when the executor reports its submission and clears the mark when it
        records its end, so a mark seen before this executor reports anything is an earlier
        run's. Asked through Snakemake's own persistence (`external_jobids`: the job ids those
        marks carry; this executor reports every job, also a success it hands over, with
        one). An older Snakemake without it: no mark (the success is then not reported twice
        only where no controller watched it)."""
        try:
            return bool(self.workflow.persistence.external_jobids(job))
        except (AttributeError, TypeError):
            return False

    def run_jobs(self, jobs: list[JobExecutorInterface]):
        for job in jobs:
            self.run_job_pre(job)
        self._start(jobs)

    def run_job(self, job: JobExecutorInterface):
        self._start([job])

    def _start(self, jobs: list[JobExecutorInterface]):
        targets = [(job, self.target(job)) for job in jobs]
        self._submitted_since_check = True
        try:
            results = self.controller.start(target for _, target in targets)
        except UnknownResource as e:
            raise WorkflowError(_unknown_resource_message(e)) from None
        for job, target in targets:
            result = results[target.name]
            if isinstance(result, Finished) and result.succeeded:
                # a job of an earlier controller did it: handed over at the next poll, with
                # its id in Snakemake's incomplete mark until Snakemake records the end
                self.report_job_submission(
                    SubmittedJobInfo(job, external_jobid=result.job_id, aux={"pbs": result})
                )
            elif isinstance(result, Finished):
                self.report_job_error(
                    SubmittedJobInfo(job),
                    msg=_paragraph(result.message),
                    aux_logs=list(result.logs),
                )
            else:
                self.report_job_submission(
                    SubmittedJobInfo(job, external_jobid=result.job_id, aux={"pbs": result})
                )

    async def check_active_jobs(
        self, active_jobs: list[SubmittedJobInfo]
    ) -> AsyncGenerator[SubmittedJobInfo, None]:
        if not active_jobs:
            self.next_seconds_between_status_checks = self.poll_interval.shortest
            return
        done = {j.aux["pbs"].target.name: j.aux["pbs"] for j in active_jobs
                if isinstance(j.aux["pbs"], Finished)}  # fmt: skip
        tracked = [j.aux["pbs"] for j in active_jobs if not isinstance(j.aux["pbs"], Finished)]
        results = {}
        if tracked:
            async with self.status_rate_limiter:
                results = self.controller.poll(tracked)
        results.update(done)
        self.next_seconds_between_status_checks = self.poll_interval.next(
            self._changed(results), jobs=len(tracked)
        )
        for job_info in active_jobs:
            result = results[job_info.aux["pbs"].target.name]
            if isinstance(result, Finished) and result.succeeded:
                self.report_job_success(job_info)
            elif isinstance(result, Finished):
                self.report_job_error(
                    job_info, msg=_paragraph(result.message), aux_logs=list(result.logs)
                )
            else:  # still going, maybe as a new job after a walltime or memory kill
                job_info.aux["pbs"] = result
                job_info.external_jobid = result.job_id
                yield job_info

    def _changed(self, results: dict) -> bool:
        """Did anything change since the last check: a job submitted, started, ended or
        resubmitted? Each target's (job id, PBS state) is compared with the last check's."""
        seen = {
            name: (r.job_id, r.state) if isinstance(r, Tracked) else (None, "ended")
            for name, r in results.items()
        }
        changed = self._submitted_since_check or any(
            self._last_seen.get(name) != value for name, value in seen.items()
        )
        self._last_seen, self._submitted_since_check = seen, False
        return changed

    def shutdown(self):
        super().shutdown()
        # Record how the jobs ended that ended since the last poll, also those whose outputs
        # made Snakemake skip their targets while they were still ending (wait a little).
        settings = self.workflow.executor_settings
        try:
            self.controller.reconcile(settle_seconds=min(60, 3 * self.poll_interval.shortest))
        except Exception as e:  # bookkeeping only: never fail a finished run for it
            self.logger.warning(f"PBS: could not record how the last jobs ended: {e}")
        if settings.efficiency_report:
            try:
                self._efficiency_report(settings)
            except Exception as e:  # a report only: never fail a finished run for it
                self.logger.warning(f"PBS: could not write the efficiency report: {e}")

    def _efficiency_report(self, settings: ExecutorSettings) -> None:
        """The usage CSV of this run's jobs (usage.py), its path and the wasteful jobs logged."""
        workdir = Path.cwd()
        path = settings.efficiency_report_path
        path = workdir / path if path else default_report_path(workdir / settings.log_dir)
        rows = run_rows(self.controller.registry.records(), since=self.controller.started_at)
        write_report(path, rows)
        self.logger.info(f"PBS: efficiency report of {len(rows)} jobs: {path}")
        threshold = settings.efficiency_threshold
        for row, low in wasteful(rows, threshold):
            values = row.values
            wildcards = f" ({values['wildcards']})" if values["wildcards"] else ""
            self.logger.warning(
                f"PBS: job {values['job_id']} of rule {values['rule']}{wildcards} used "
                f"{' and '.join(low)}: ask for less (--pbs-efficiency-threshold {threshold})"
            )

    def cancel_jobs(self, active_jobs: list[SubmittedJobInfo]):
        self.controller.cancel(
            j.aux["pbs"] for j in active_jobs if not isinstance(j.aux["pbs"], Finished)
        )

    def get_job_args(self, job: JobExecutorInterface, **kwargs) -> str:
        # RemoteExecutor also makes every job wait for this controller's temporary directory;
        # a job adopted by a later controller would wait for it in vain. Wait for inputs only.
        args = RealExecutor.get_job_args(self, job, **kwargs)
        if SharedFSUsage.INPUT_OUTPUT in self.workflow.storage_settings.shared_fs_usage:
            wait_for = list(job.get_wait_for_files())
            if wait_for:
                args = f"{args} {format_cli_arg('--wait-for-files', wait_for)}"
        return args
