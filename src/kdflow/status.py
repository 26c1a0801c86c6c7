"""Where a sweep stands: each experiment's state from its files, the PBS registry and one qstat;
and, where scripts/cron.sh drives the sweep, whether its controller is alive."""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kdflow.config import Experiment, Sweep
from kdflow.fileio import read_json
from snakemake_executor_plugin_pbs import ExecutorSettings
from snakemake_executor_plugin_pbs.profile import settings_from_profile
from snakemake_executor_plugin_pbs.registry import Registry, Submission, TargetRecord
from snakemake_executor_plugin_pbs.status import (
    JobInfo,
    StatusUnknown,
    job_id_order,
    lookup,
)
from snakemake_executor_plugin_pbs.submit import job_name

log = logging.getLogger(__name__)

# Display order, and what each state means.
STATES = {
    "done": "finished: `completed` written",
    "running": "a trainer is training it: a PBS or Slurm job, or a local process",
    "queued": "a PBS job waits in the queue (Q, H, W, ...)",
    "submitted": "submitted, but qstat did not answer: state unknown",
    "unknown": "a trainer recorded itself as training it, but whether it still runs could not "
    "be told (another host, a scheduler that did not answer)",
    "held": "its job failed on a full disk or quota: resubmitted at the time in its note",
    "ready": "not running; can start now (a killed run resumes from its checkpoint)",
    "waiting": "waits for its teacher to finish",
    "failed": "given up by the PBS executor; see the reason and log",
}
QUEUED_STATES = frozenset("QHWTSUM")
# The profile the controller runs with (scripts/cron.sh: KDFLOW_PROFILE, else profiles/pbs),
# whose executor settings (registry directory, job-name prefix) the dashboard reads.
DEFAULT_PROFILE = "profiles/pbs"
# kdflow's own checkout, whose profiles/pbs is read where the working directory has none
KDFLOW_ROOT = Path(__file__).resolve().parents[2]
# Where scripts/cron.sh keeps its controller's pid and output (relative to the working directory)
CONTROLLER_PID = ".kdflow/controller.pid"
CONTROLLER_LOG = "logs/cron/controller.log"


@dataclass
class Row:
    """One experiment on the dashboard (also the record of `kdflow status --json`)."""

    path: str
    state: str
    pbs_id: str | None = None  # the job: a PBS job id, a Slurm job id, or `pid N on host`
    pbs_state: str | None = None
    elapsed: int | None = None  # seconds of walltime used by the live job
    epoch: int | None = None  # epochs finished
    epochs: int | None = None
    best_acc: float | None = None
    eta: int | None = None  # seconds until the last epoch, from the last epoch's time
    reason: str | None = None  # why it failed, or where it will resume
    log: str | None = None
    pack: str | None = None  # the pack whose job trains it (packing: teacher)
    epoch_seconds: float | None = None  # the last epoch's seconds: the speed, and the ETA
    owner: dict | None = field(default=None, repr=False)  # status.json's, while in progress


def default_profile(workdir: str | Path = ".") -> Path | None:
    """The profile the controller of `workdir` runs with: $KDFLOW_PROFILE, else profiles/pbs,
    relative to `workdir`; where that is missing, kdflow's own checkout's profiles/pbs; None
    where there is none (kdflow installed without its checkout)."""
    profile = Path(workdir) / os.environ.get("KDFLOW_PROFILE", DEFAULT_PROFILE)
    if profile.exists() or "KDFLOW_PROFILE" in os.environ:
        return profile
    own = KDFLOW_ROOT / DEFAULT_PROFILE
    return own if own.exists() else None


def executor_settings(
    profile: str | Path | None = None, workdir: str | Path = "."
) -> ExecutorSettings:
    """The PBS executor's settings as the controller sees them: from the profile (default:
    default_profile(workdir)) and the environment, else the plugin's defaults."""
    if profile is None:
        profile = default_profile(workdir)
        if profile is None:
            log.warning(
                f"no {DEFAULT_PROFILE} here (nor $KDFLOW_PROFILE): the PBS executor's own "
                "defaults and SNAKEMAKE_PBS_* say where its registry is; give kdflow status "
                "--profile <the profile the controller runs with>"
            )
    return settings_from_profile(profile)


def collect(
    sweep: Sweep,
    workdir: str | Path = ".",
    registry_dir: str | Path | None = None,
    qstat=None,
    job_name_prefix: str | None = None,
    profile: str | Path | None = None,
) -> tuple[list[Row], str | None]:
    """Every experiment's Row, and a note if the scheduler could not be asked.

    `qstat` is the executor's Qstat (one call for all open jobs); None asks no scheduler.
    The registry directory and job-name prefix are the executor's under `profile` (see
    executor_settings) unless given. Plain os.path for the experiment files on purpose: this
    reads two files per experiment, 10,000 experiments in a second or two.
    """
    if registry_dir is None or job_name_prefix is None:
        settings = executor_settings(profile, workdir)
        registry_dir = settings.registry_dir if registry_dir is None else registry_dir
        job_name_prefix = job_name_prefix or settings.job_name_prefix
    workdir = "" if str(workdir) == "." else str(workdir)  # paths as the user sees them
    experiments = sweep.experiments()
    rows = _rows_from_files(sweep, experiments, workdir)
    jobs = sweep.jobs()
    if sweep.packing == "teacher":
        packs = {student: pack.name for pack in sweep.packs() for student in pack.students}
        for experiment, row in zip(experiments, rows, strict=True):
            row.pack = packs.get(experiment)
    records = _records(
        Registry(Path(workdir) / registry_dir),
        {i: jobs[experiments[i]] for i, row in enumerate(rows) if row.state != "done"},
        job_name_prefix,
    )
    open_jobs = {
        i: record.last
        for i, record in records.items()
        if record.last is not None and record.last.is_open and record.last.job_id
    }
    infos, forgotten, note = _ask_scheduler(qstat, open_jobs)
    now = time.time()
    for i, record in records.items():
        if i in open_jobs:
            _show_job(rows[i], open_jobs[i], infos.get(i), i in forgotten, note is not None, now)
        else:
            _show_record(rows[i], record, now)
    trainers = [
        row
        for i, row in enumerate(rows)
        if row.state in ("ready", "waiting") and row.owner and i not in open_jobs
    ]
    _show_trainers(trainers, qstat, now)
    for experiment, row in zip(experiments, rows, strict=True):
        if row.state == "ready" and not row.reason:
            row.reason = f"resumes after epoch {row.epoch}" if row.epoch else "starts"
        elif row.state == "waiting":
            row.reason = f"waits for its teacher, {experiment.teacher_directory}"
    return rows, note


def _show_trainers(rows: list[Row], qstat, now: float) -> None:
    """Experiments whose status.json names a trainer that records itself as training them
    (a local process, a Slurm or PBS job: whatever ran it, with or without the PBS executor):
    running where its process or job is alive, ready where it has certainly ended, unknown
    where that cannot be told. One squeue and one qstat for all, never one per experiment;
    `qstat` None asks no scheduler."""
    from kdflow import owner as owners

    me = owners.current()
    found = [(row, owners.Owner.from_record(row.owner)) for row in rows]
    found = [(row, who) for row, who in found if who is not None]
    slurm = [who.job_id for _, who in found if who.scheduler == "slurm" and who.job_id]
    pbs = [who.job_id for _, who in found if who.scheduler == "pbs" and who.job_id]
    asked = qstat is not None
    slurm_states = _squeue(slurm) if asked and slurm else {}
    pbs_answer = None
    if asked and pbs:
        try:
            pbs_answer = qstat.query(sorted(set(pbs), key=job_id_order))
        except StatusUnknown:
            pbs_answer = None
    for row, who in found:
        row.pbs_id = who.job_id if who.job_id else f"pid {who.pid} on {who.host}"
        alive = _liveness(who, me, slurm_states, pbs_answer)
        if alive is owners.Liveness.ALIVE:
            row.state = "running"
            if row.epoch_seconds and row.epoch is not None and row.epochs:
                row.eta = round((row.epochs - row.epoch) * row.epoch_seconds)
        elif alive is owners.Liveness.UNKNOWN:
            row.state = "unknown"
            row.reason = f"{who}: cannot tell whether it still trains"
        # ended: ready (resumes after its last epoch), or waiting, as its files say


def _liveness(who, me, slurm_states: dict[str, str], pbs_answer):
    """Whether trainer `who` is alive, from the one squeue and one qstat answer (None: PBS
    was not asked or did not answer) or, for a local process, this host's process table."""
    from kdflow.owner import SLURM_ALIVE, SLURM_ENDED, Liveness, probe_local

    if who.scheduler == "local":
        return probe_local(who, me).liveness
    if who.scheduler == "slurm":
        state = slurm_states.get(who.job_id)
        if state in SLURM_ALIVE:
            return Liveness.ALIVE
        return Liveness.ENDED if state in SLURM_ENDED else Liveness.UNKNOWN
    if who.scheduler == "pbs" and pbs_answer is not None:
        info = lookup(pbs_answer, who.job_id)
        if info is not None:
            return Liveness.ALIVE if info.alive else Liveness.ENDED
        if pbs_answer.forgotten(who.job_id):
            return Liveness.ENDED
    return Liveness.UNKNOWN


def _squeue(job_ids: list[str], timeout: float = 60) -> dict[str, str]:
    """Slurm's state of each job it still knows, in one `squeue` call ({} if it cannot be
    asked: every job then stays unknown)."""
    from kdflow.owner import run_command

    ids = sorted(set(job_ids))
    result = run_command(["squeue", "-h", "-t", "all", "-j", ",".join(ids), "-o", "%i %T"], timeout)
    if result.returncode != 0:
        return {}
    states = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            states[parts[0]] = parts[1]
    return states


def _rows_from_files(sweep: Sweep, experiments: list[Experiment], workdir: str) -> list[Row]:
    """Each experiment's Row from its own files: done (`completed`), waiting (its teacher's
    `completed` is missing) or ready, with the progress its status.json records."""
    epochs = {dataset: sweep.recipe(dataset).epochs for dataset in sweep.datasets}
    rows = []
    for experiment in experiments:
        directory = os.path.join(workdir, experiment.directory)
        status = read_json(os.path.join(directory, "status.json")) or {}
        row = Row(
            path=experiment.directory,
            state="ready",
            epoch=status.get("epoch"),
            epochs=status.get("epochs") or epochs[experiment.dataset],
            best_acc=status.get("best_acc"),
        )
        rows.append(row)
        if os.path.exists(os.path.join(directory, "completed")):
            row.state = "done"
            continue
        if not experiment.is_pure and not os.path.exists(
            os.path.join(workdir, experiment.teacher_directory, "completed")
        ):
            row.state = "waiting"
        row.epoch_seconds = status.get("epoch_seconds")
        if status.get("status") == "in_progress" and isinstance(status.get("owner"), dict):
            row.owner = status["owner"]
    return rows


def _records(
    registry: Registry, jobs: dict[int, tuple[str, ...]], prefix: str
) -> dict[int, TargetRecord]:
    """The registry's record of the job of each experiment that has one, by the same index
    (the students of a pack share their pack's record); `jobs` gives each job's outputs.

    Read-only, located by Registry.path: Registry.load would set an unreadable record aside
    (a write: the controller is the registry's one writer) and makes up a record for a
    target that has none."""
    if not jobs or not os.path.isdir(registry.targets_dir):
        return {}
    found: dict[tuple[str, ...], TargetRecord | None] = {}
    for outputs in set(jobs.values()):
        try:
            text = registry.path(job_name(outputs, prefix=prefix)).read_text()
            found[outputs] = TargetRecord.from_json(text)
        except (OSError, ValueError, TypeError, KeyError):
            continue  # no record: never submitted through PBS (or unreadable: the controller
            # sets those aside and looks for the job by name)
    return {i: found[outputs] for i, outputs in jobs.items() if outputs in found}


def _ask_scheduler(
    qstat, open_jobs: dict[int, Submission]
) -> tuple[dict[int, JobInfo | None], set[int], str | None]:
    """One qstat for every open job (ids in the order the server gave them out): what it
    says of each, which ones it said it does not know, and a note if it did not answer."""
    if not open_jobs or qstat is None:
        return {}, set(), None
    ids = sorted({s.job_id for s in open_jobs.values()}, key=job_id_order)
    try:
        answer = qstat.query(ids)
    except StatusUnknown as exc:
        return {}, set(), f"qstat did not answer ({exc}); PBS states unknown"
    infos = {i: lookup(answer, s.job_id) for i, s in open_jobs.items()}
    forgotten = {i for i, s in open_jobs.items() if answer.forgotten(s.job_id)}
    return infos, forgotten, None


def _show_job(
    row: Row,
    submission: Submission,
    info: JobInfo | None,
    forgotten: bool,
    unanswered: bool,
    now: float,
) -> None:
    """A target whose last job the controller has not classified yet, as qstat shows it."""
    row.pbs_id, row.log = submission.job_id, submission.log_err
    if unanswered or (info is None and not forgotten):
        row.state = "submitted"  # no word about it: it may be queued or running
    elif info is not None and info.alive:
        row.pbs_state = info.state
        row.elapsed = info.walltime_used
        started = info.time("stime")
        if row.elapsed is None and started is not None and info.state == "R":
            row.elapsed = max(0, round(now - started))  # the mom has not reported yet
        row.state = "queued" if info.state in QUEUED_STATES else "running"
        if row.state == "running" and row.epoch_seconds and row.epoch:
            row.eta = round((row.epochs - row.epoch) * row.epoch_seconds)
    else:  # ended since the controller last looked; it will classify it
        row.state = "ready"
        row.reason = "job ended; the controller will classify it"


def _show_record(row: Row, record: TargetRecord, now: float) -> None:
    """A target with no open job: given up (failed), or held back after a full disk."""
    if record.failed:
        row.state = "failed"
        row.reason = record.failed
        row.log = record.last.log_err if record.last else None
    elif record.hold_until is not None and record.hold_until > now and record.last:
        row.state = "held"
        until = time.strftime("%H:%M", time.localtime(record.hold_until))
        row.reason = f"{record.last.reason}; resubmitted at {until}"
        row.log = record.last.log_err


@dataclass
class Controller:
    """The controller scripts/cron.sh keeps alive for a directory (`controller` in --json)."""

    state: str  # "alive" | "not running"
    pid: int | None  # the live controller's; else the last one the pid file named
    log: str  # its output, CONTROLLER_LOG
    tail: list[str] = field(default_factory=list)  # the log's last lines (when not running)


def controller(workdir: str | Path = ".", lines: int = 10) -> Controller | None:
    """The cron.sh controller of `workdir`: alive (the pid file's process is a snakemake
    running in `workdir`, as cron.sh checks it) or not running, with the last `lines` of its
    log. None where cron.sh never ran a controller here (neither file exists)."""
    workdir = Path(workdir)
    pid_file, log = workdir / CONTROLLER_PID, workdir / CONTROLLER_LOG
    try:
        text = pid_file.read_text().strip()
        pid = int(text) if text.isdigit() else None
    except OSError:
        pid = None
        if not log.exists():
            return None
    if pid is not None and _is_controller(pid, workdir):
        return Controller("alive", pid, CONTROLLER_LOG)
    return Controller("not running", pid, CONTROLLER_LOG, _tail(log, lines))


def _is_controller(pid: int, workdir: Path) -> bool:
    """Whether `pid` is a live snakemake whose working directory is `workdir` (a pid the
    system gave to another process since is not)."""
    proc = Path(f"/proc/{pid}")
    if not Path("/proc/self").exists():  # no /proc (not Linux): the pid alone
        try:
            os.kill(pid, 0)
        except PermissionError:
            return True
        except OSError:
            return False
        return True
    try:
        cmdline = (proc / "cmdline").read_bytes()
        cwd = os.readlink(proc / "cwd")
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return b"snakemake" in cmdline and state != "Z" and cwd == os.path.realpath(workdir)


def _tail(path: Path, lines: int, max_bytes: int = 65536) -> list[str]:
    """The last `lines` lines of a text file (read from its last `max_bytes`); [] if none."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    return text.splitlines()[-lines:]


def counts(rows: list[Row]) -> Counter:
    return Counter(row.state for row in rows)


def clock(seconds: int | None) -> str:
    if seconds is None:
        return ""
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


# The table's rows, in this order: every experiment that is not done.
TABLE_ORDER = {
    state: i
    for i, state in enumerate(
        ["failed", "held", "running", "unknown", "queued", "submitted", "ready", "waiting"]
    )
}


def render(
    rows: list[Row],
    note: str | None,
    console=None,
    controller: Controller | None = None,
    summary: str | None = None,
) -> None:
    """The dashboard: totals, the cron.sh controller (if any), then one table of every
    experiment that is not done: what trains it and how far, or why it waits; `summary` (the
    results table, given once the sweep is finished) at the end."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    # the lines above the table are whole lines, wrapped by the terminal, not by rich: a path
    # in them copies whole and a grep finds them, on any terminal and in a pipe
    line = functools.partial(console.print, soft_wrap=True)
    n = counts(rows)
    total = len(rows)
    done = n["done"]
    line(
        "   ".join(
            [f"[bold]finished {done}/{total}[/] ({100 * done / max(total, 1):.1f}%)"]
            + [f"{state} {n[state]}" for state in STATES if state != "done" and n[state]]
        )
    )
    ready = [r for r in rows if r.state == "ready"]
    waiting = n["waiting"]
    if ready or waiting:
        line(f"not started: {len(ready)} ready, {waiting} waiting on a teacher")
    if controller is not None:
        if controller.state == "alive":
            line(f"controller: alive (pid {controller.pid}), log {controller.log}")
        elif done == total:
            line("controller: not running; the sweep is finished")
        else:
            line(
                f"[bold red]controller: not running[/] while the sweep is unfinished "
                f"(`scripts/cron.sh cron` starts one); the end of {controller.log}:"
            )
            for tail in controller.tail or ["(empty)"]:
                line(Text(f"  | {tail}"), highlight=False)
    if note:
        line(f"[yellow]{note}[/]")
    table = Table(show_lines=False, header_style="bold")
    shown = sorted((r for r in rows if r.state in TABLE_ORDER),
                   key=lambda r: (TABLE_ORDER[r.state], r.path))  # fmt: skip
    packed = any(r.pack for r in shown)
    columns = ("experiment", "state", "job") + (("pack",) if packed else ())
    for column in columns + ("epoch", "s/epoch", "best acc", "ETA", "note"):
        table.add_column(column, overflow="fold")
    for r in shown:
        job = f"[{r.pbs_state} {clock(r.elapsed)}] {r.pbs_id}" if r.pbs_state else (r.pbs_id or "")
        table.add_row(
            r.path,
            r.state,
            job,
            *((r.pack or "",) if packed else ()),
            f"{r.epoch or 0}/{r.epochs}" if r.epochs else "",
            f"{r.epoch_seconds:.1f}" if r.epoch_seconds and r.state == "running" else "",
            f"{r.best_acc:.2f}" if r.best_acc is not None else "",
            clock(r.eta),
            "\n".join(x for x in (r.reason, r.log and f"log: {r.log}") if x),
        )
    if shown:
        console.print(table)
    if summary is not None:  # as `kdflow report` writes it: the terminal wraps it, not rich,
        # so the markdown stays whole when copied, piped or read on a narrow terminal
        console.print(summary, soft_wrap=True, markup=False, highlight=False)


def results_summary(sweep: Sweep, rows: list[Row], workdir: str | Path = ".") -> str | None:
    """The results table (mean ± std over seeds, as `kdflow report` writes it) once every
    experiment of the sweep is done; None before."""
    if not rows or any(row.state != "done" for row in rows):
        return None
    from kdflow.summary import read_metrics, summarize, to_markdown

    runs = read_metrics(Path(workdir) / e.directory for e in sweep.experiments())[0]
    return "the sweep is finished:\n" + to_markdown(summarize(runs))


def to_json(
    rows: list[Row],
    note: str | None,
    controller: Controller | None = None,
    source: dict[str, str] | None = None,
) -> str:
    """`kdflow status --json`; `source`: the config and directory it read."""
    return json.dumps(
        {
            **(source or {}),
            "time": time.time(),
            "note": note,
            "counts": dict(counts(rows)),
            "controller": asdict(controller) if controller is not None else None,
            "experiments": [{k: v for k, v in asdict(r).items() if k != "owner"} for r in rows],
        },
        indent=1,
    )
