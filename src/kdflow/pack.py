"""Train experiments: one alone (`train`, a pack of one) or the students of one teacher together,
in one process with one teacher forward per batch (`train_pack`, docs/PACKS.md).

This is kdflow's one orchestration: claim each directory, build, resume, train epoch by epoch,
finish; the steps are kdflow.trainer's. The students of a pack see exactly the same batches (the
order, crops and flips of epoch e are a function of (seed, e)), so the teacher's forward pass,
most of a KD step, is computed once per batch for all of them. Everything else stays each
student's own: its model, method modules (FitNet's regressor), optimizer, schedule, random
streams (`kdflow.trainer.stream`) and experiment directory. On the CPU each student ends
bit-identical to the same experiment trained alone (tests/test_pack.py), and after a kill at
any instant each resumes from its own last checkpoint: students a kill left at different
epochs train apart until the laggards catch up. A student already `completed` is not trained
again (one finished under another recipe is refused); one that fails (a refused claim, a
damaged checkpoint, a changed recipe, an error while training) is marked `failed` in its
status.json and dropped, and the others go on; `train_pack` then raises `PackError` naming
every failure once the others have finished.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdflow.config import identity_changes
from kdflow.fileio import read_json
from kdflow.trainer import (
    Claim,
    ExperimentFiles,
    Progress,
    Run,
    TrainSpec,
    build,
    build_data,
    choose_precision,
    finish,
    load_teacher,
    resume,
    run_epochs,
    save_epoch,
    stream,
    unclaimed,
)

log = logging.getLogger("kdflow.pack")

# The student whose step is running, if any: its log takes that step's records, and the
# pack's log names it on each of them (`log_handlers`).
_STUDENT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("student", default=None)


class PackError(RuntimeError):
    """Some students of a pack failed (the others finished); `failures` maps each one's
    directory to its error."""

    def __init__(self, failures: dict[Path, BaseException]):
        self.failures = failures
        lines = "\n  ".join(f"{d}: {type(e).__name__}: {e}" for d, e in failures.items())
        super().__init__(f"{len(failures)} student(s) of the pack failed:\n  {lines}")


@dataclass(eq=False)
class Student:
    """One experiment: its spec and files, and while it trains its run and progress."""

    spec: TrainSpec
    files: ExperimentFiles
    run: Run | None = None
    progress: Progress | None = None
    metrics: dict[str, Any] | None = None  # set once finished (or found completed)
    error: BaseException | None = None

    @property
    def training(self) -> bool:
        return self.run is not None and self.metrics is None and self.error is None


def train(spec: TrainSpec, out_dir: str | Path, claim: Claim = unclaimed) -> dict[str, Any]:
    """Train `spec` into `out_dir`, resuming from its checkpoint: a pack of one. Returns the
    final metrics; raises what stopped it (its status.json then says `failed`)."""
    try:
        (metrics,) = train_pack([spec], [out_dir], claim).values()
    except PackError as exc:
        (error,) = exc.failures.values()
        raise error from None
    return metrics


def train_pack(
    specs: Sequence[TrainSpec], out_dirs: Sequence[str | Path], claim: Claim = unclaimed
) -> dict[Path, dict[str, Any]]:
    """Train each spec into its directory, all in this process, with one teacher forward per
    batch; returns each directory's final metrics. Raises PackError after the others finished
    if any student failed.

    `claim` is asked for each directory before anything is written there (scripts/train.py
    passes kdflow.owner.claim, which knows the schedulers); a refusal fails that student only."""
    if len(specs) != len(out_dirs) or not specs:
        raise ValueError("train_pack needs one output directory per spec, and at least one spec")
    keys = [spec.pack_key for spec in specs]
    differ = [name for name in keys[0] if any(key[name] != keys[0][name] for key in keys)]
    if differ:
        raise ValueError(f"these specs cannot train in one pack: their {differ} differ")
    dirs = [Path(d).resolve() for d in out_dirs]
    if len(set(dirs)) != len(dirs):
        raise ValueError("two students of a pack write one directory")
    students = [Student(spec, ExperimentFiles(d)) for spec, d in zip(specs, out_dirs, strict=True)]
    todo = [student for student in students if _start(student, claim)]
    if todo:
        _train(todo)
    failures = {s.files.dir: s.error for s in students if s.error is not None}
    if failures:
        raise PackError(failures) from next(iter(failures.values()))
    return {s.files.dir: s.metrics for s in students}


def _start(student: Student, claim: Claim) -> bool:
    """Whether `student` is to be trained: not if it is completed (or finished as another
    experiment: refused) or its claim is refused; claimed, its interrupted writes removed. A
    completed run asked for more epochs trains on."""
    files = student.files
    with _as(student):
        finished = read_json(files.metrics) if files.completed.exists() else None
        changed = identity_changes(finished, student.spec.identity) if finished else ""
        if changed:
            student.error = RuntimeError(
                f"{files.dir} finished as a different experiment ({changed}); its results are "
                "not those of this config: move the directory away to train it again, or "
                "restore the config it was made with"
            )
            log.error("%s", student.error)
            return False
        if finished and finished.get("epochs") == student.spec.recipe.epochs:
            log.info("%s is completed: not training it again", files.dir)
            student.metrics = finished
            return False
        try:
            files.claim(claim)  # refuses where another live owner trains it
            files.remove_partial_writes()  # only once owned: they may have been a live owner's
        except Exception as exc:
            student.error = exc  # claim logged it; nothing of this directory is written
            return False
    return True


def _train(students: list[Student]) -> None:
    first = students[0].spec
    data = build_data(first)  # the batches every student sees
    precision = choose_precision(first.precision, data.device)
    teacher = None
    if any(s.spec.method != "pure" for s in students):
        kd = next(s.spec for s in students if s.spec.method != "pure")
        teacher = load_teacher(kd, data)
    log.info(
        "training %d experiment(s) on %s, seed %d, teacher %s, in %s (%s)",
        len(students),
        first.dataset,
        first.seed,
        first.teacher if teacher is not None else "none",
        precision.name,
        precision.reason,
    )
    for student in students:
        with _as(student):
            try:
                # each student's initial values are drawn from its own seed, as alone
                student.run = build(student.spec, data, teacher, precision)
                with stream(student.run):
                    student.progress = resume(student.spec, student.run, student.files)
                student.files.precision = {
                    "precision_used": student.progress.used(student.spec.recipe.epochs),
                    "precision_reason": precision.reason,
                }
                student.files.write_status(
                    student.spec,
                    "in_progress",
                    epoch=student.progress.next_epoch,
                    best_acc=max(student.progress.best_acc, 0.0),
                )
                log.info(
                    "training %s from epoch %d, with %d student(s)",
                    student.files.dir,
                    student.progress.next_epoch + 1,
                    len(students),
                )
            except Exception as exc:
                _fail(student, exc)

    by_run = {id(s.run): s for s in students if s.run is not None}
    while True:
        for student in students:
            if student.training and student.progress.next_epoch >= student.spec.recipe.epochs:
                _finish(student)  # e.g. killed after its last checkpoint, before `completed`
        training = [s for s in students if s.training]
        if not training:
            return
        # students a kill left at different epochs: the laggards train first, and alone,
        # until they catch up (each epoch's batches depend on (seed, epoch) only)
        epoch = min(s.progress.next_epoch for s in training)
        group = [s for s in training if s.progress.next_epoch == epoch]
        rows = run_epochs(
            [s.run for s in group],
            first.seed,
            epoch,
            failed=lambda run, exc: _fail(by_run[id(run)], exc),
        )
        for student, row in zip(group, rows, strict=True):
            if row is None:
                continue
            with _as(student):
                try:
                    with stream(student.run):
                        save_epoch(student.spec, student.run, student.progress, student.files, row)
                except Exception as exc:
                    _fail(student, exc)


def _finish(student: Student) -> None:
    with _as(student):
        try:
            student.metrics = finish(student.spec, student.run, student.files, student.progress)
        except Exception as exc:
            _fail(student, exc)
            return
    student.run = None  # its memory goes back; the others go on


def _fail(student: Student, exc: BaseException) -> None:
    """Drop a failed student: say so in the logs and its status.json; the others go on."""
    with _as(student):
        log.error("student %s failed: %s", student.files.dir, exc, exc_info=exc)
        student.error = exc
        student.run = None
        try:
            student.files.write_status(student.spec, "failed", error=f"{type(exc).__name__}: {exc}")
        except Exception as write_error:  # a full disk: the log has said it
            log.error("could not record the failure in %s: %s", student.files.status, write_error)


@contextmanager
def _as(student: Student) -> Iterator[None]:
    """Inside, log records are `student`'s (its own log takes them)."""
    token = _STUDENT.set(student.files.dir)
    try:
        yield
    finally:
        _STUDENT.reset(token)


# -- logs: handlers for the script that runs a job to install (the library configures none) ---

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _Only(logging.Filter):
    """A student's log: its own records and the pack's, not the other students'."""

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = directory

    def filter(self, record: logging.LogRecord) -> bool:
        owner = _STUDENT.get()
        return owner is None or owner.resolve() == self.directory


class _Named(logging.Filter):
    """The pack's log: each of a student's records begins with its directory."""

    def filter(self, record: logging.LogRecord) -> bool:
        owner = _STUDENT.get()
        record.student = f"{owner}: " if owner is not None else ""
        return True


def log_handlers(
    log_path: str | Path | None, students: Mapping[str | Path, str | Path] | None = None
) -> list[logging.Handler]:
    """The handlers of a training job's logs, for its script to install (`logging.basicConfig(
    handlers=...)`): stderr and `log_path` take every line, and with `students` (directory ->
    its log) each line of a student names it, and each student's log takes its own lines and
    the pack's, as its log would alone."""
    shared: list[logging.Handler] = [logging.StreamHandler()]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        shared.append(logging.FileHandler(log_path))
    for handler in shared:
        handler.setFormatter(logging.Formatter(FORMAT))
        if students:
            handler.addFilter(_Named())
            named = FORMAT.replace("%(message)s", "%(student)s%(message)s")
            handler.setFormatter(logging.Formatter(named))
    own = []
    for directory, path in (students or {}).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.addFilter(_Only(Path(directory).resolve()))
        handler.setFormatter(logging.Formatter(FORMAT))
        own.append(handler)
    return shared + own
