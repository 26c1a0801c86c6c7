"""Where a sweep stands: each experiment's state from its files, the PBS registry and one qstat."""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kdflow.config import Sweep

# Display order, and what each state means.
STATES = {
    "done": "finished: `completed` written",
    "running": "a PBS job is running it",
    "queued": "a PBS job waits in the queue (Q, H, W, ...)",
    "submitted": "submitted, but qstat did not answer: state unknown",
    "held": "its job failed on a full disk or quota: resubmitted at the time in its note",
    "ready": "not running; can start now (a killed run resumes from its checkpoint)",
    "waiting": "waits for its teacher to finish",
    "failed": "given up by the PBS executor; see the reason and log",
}
QUEUED_STATES = frozenset("QHWTSUM")


@dataclass
class Row:
    """One experiment on the dashboard (also the record of `kdflow status --json`)."""

    path: str
    state: str
    pbs_id: str | None = None
    pbs_state: str | None = None
    elapsed: int | None = None  # seconds of walltime used by the live job
    epoch: int | None = None  # epochs finished
    epochs: int | None = None
    best_acc: float | None = None
    eta: int | None = None  # seconds until the last epoch, from the last epoch's time
    reason: str | None = None  # why it failed, or where it will resume
    log: str | None = None
    epoch_seconds: float | None = field(default=None, repr=False)  # for the ETA only


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return None  # missing, or caught mid-copy: the state comes from the other sources
    return data if isinstance(data, dict) else None


def _read_record(path_without_suffix: str):
    from snakemake_executor_plugin_pbs.registry import TargetRecord

    try:
        with open(path_without_suffix + ".json") as f:
            return TargetRecord.from_json(f.read())
    except (OSError, ValueError, TypeError, KeyError):
        return None  # no record: never submitted through PBS (or unreadable: the controller
        # sets those aside and looks for the job by name)


def collect(
    sweep: Sweep,
    workdir: str | Path = ".",
    registry_dir: str | Path = ".kdflow/pbs",
    qstat=None,
) -> tuple[list[Row], str | None]:
    """Every experiment's Row, and a note if the scheduler could not be asked.

    `qstat` is the executor's Qstat (one call for all open jobs); None asks no scheduler.
    Plain os.path on purpose: this reads two files per experiment, 10,000 experiments in a
    second or two.
    """
    from snakemake_executor_plugin_pbs.submit import job_name

    workdir = str(workdir)
    targets_dir = os.path.join(workdir, str(registry_dir), "targets")
    has_registry = os.path.isdir(targets_dir)
    epochs = {dataset: sweep.recipe(dataset).epochs for dataset in sweep.datasets}

    rows, records = [], {}
    for experiment in sweep.experiments():
        directory = os.path.join(workdir, experiment.directory)
        status = _read_json(os.path.join(directory, "status.json")) or {}
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
        if has_registry:
            record = _read_record(os.path.join(targets_dir, job_name([experiment.target])))
            if record is not None:
                records[len(rows) - 1] = record
        if not experiment.is_pure and not os.path.exists(
            os.path.join(workdir, experiment.teacher_directory, "completed")
        ):
            row.state = "waiting"
        row.epoch_seconds = status.get("epoch_seconds")

    open_jobs = {
        i: record.last
        for i, record in records.items()
        if record.last is not None and record.last.is_open and record.last.job_id
    }
    infos, forgotten, note = {}, set(), None
    if open_jobs and qstat is not None:
        from snakemake_executor_plugin_pbs.status import StatusUnknown, lookup

        try:
            answer = qstat.query([s.job_id for s in open_jobs.values()])
            infos = {i: lookup(answer, s.job_id) for i, s in open_jobs.items()}
            forgotten = {i for i, s in open_jobs.items() if answer.forgotten(s.job_id)}
        except StatusUnknown as exc:
            note = f"qstat did not answer ({exc}); PBS states unknown"

    now = time.time()
    for i, record in records.items():
        row = rows[i]
        submission = open_jobs.get(i)
        if submission is not None:
            row.pbs_id, row.log = submission.job_id, submission.log_err
            info = infos.get(i)
            if note is not None or (info is None and i not in forgotten):
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
        elif record.failed:
            row.state = "failed"
            row.reason = record.failed
            row.log = record.last.log_err if record.last else None
        elif record.hold_until is not None and record.hold_until > now and record.last:
            row.state = "held"
            until = time.strftime("%H:%M", time.localtime(record.hold_until))
            row.reason = f"{record.last.reason}; resubmitted at {until}"
            row.log = record.last.log_err
    for row in rows:
        if row.state == "ready" and row.epoch and not row.reason:
            row.reason = f"resumes after epoch {row.epoch}"
    return rows, note


def counts(rows: list[Row]) -> Counter:
    return Counter(row.state for row in rows)


def clock(seconds: int | None) -> str:
    if seconds is None:
        return ""
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def render(rows: list[Row], note: str | None, console=None) -> None:
    """The dashboard: totals, then one table of everything that is not done."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    n = counts(rows)
    total = len(rows)
    done = n["done"]
    console.print(
        f"[bold]finished {done}/{total}[/] ({100 * done / max(total, 1):.1f}%)   "
        + "   ".join(f"{state} {n[state]}" for state in STATES if state != "done" and n[state])
    )
    ready = [r for r in rows if r.state == "ready"]
    waiting = n["waiting"]
    if ready or waiting:
        console.print(f"not started: {len(ready)} ready, {waiting} waiting on a teacher")
    if note:
        console.print(f"[yellow]{note}[/]")
    table = Table(show_lines=False, header_style="bold")
    for column in ("experiment", "state", "PBS", "epoch", "best acc", "ETA", "note"):
        table.add_column(column, overflow="fold")
    order = {s: i for i, s in enumerate(["failed", "held", "running", "queued", "submitted"])}
    shown = sorted((r for r in rows if r.state in order), key=lambda r: (order[r.state], r.path))
    for r in shown:
        pbs = f"[{r.pbs_state} {clock(r.elapsed)}] {r.pbs_id}" if r.pbs_state else (r.pbs_id or "")
        table.add_row(
            r.path,
            r.state,
            pbs,
            f"{r.epoch or 0}/{r.epochs}" if r.epochs else "",
            f"{r.best_acc:.2f}" if r.best_acc is not None else "",
            clock(r.eta),
            " ".join(x for x in (r.reason, r.log and f"log: {r.log}") if x),
        )
    if shown:
        console.print(table)


def to_json(rows: list[Row], note: str | None) -> str:
    return json.dumps(
        {
            "time": time.time(),
            "note": note,
            "counts": dict(counts(rows)),
            "experiments": [
                {k: v for k, v in asdict(r).items() if k != "epoch_seconds"} for r in rows
            ],
        },
        indent=1,
    )
