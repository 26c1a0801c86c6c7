"""Train a pack: every student of one teacher on one (dataset, seed), in one process, with one
teacher forward per batch (docs/PACKS.md).

The students of a (dataset, teacher, seed) see exactly the same batches (the order, crops and
flips of epoch e are a function of (seed, e)), so the teacher's forward pass, most of a KD step,
is computed once per batch for all of them. Everything else stays each student's own: its
model, method modules (FitNet's regressor), optimizer, schedule, random streams
(`kdflow.trainer.stream`) and experiment directory, whose files are those `kdflow.trainer.train`
writes, in the same formats and order. On the CPU each student ends bit-identical to the same
experiment trained alone (tests/test_pack.py), and after a kill at any instant each resumes
from its own last checkpoint: students a kill left at different epochs train apart until the
laggards catch up. A student already `completed` is not trained again; one that fails (a
refused claim, a damaged checkpoint, a changed recipe, an error while training) is marked
`failed` in its status.json and dropped, and the others go on; `train_pack` then raises
`PackError` naming every failure once the others have finished.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdflow.fileio import read_json
from kdflow.trainer import (
    Claim,
    ExperimentFiles,
    Progress,
    Run,
    TrainSpec,
    _setup_logging,
    build,
    build_data,
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
# pack's log names it on each of them.
_STUDENT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("student", default=None)

# What the students of one pack must share: the batches (data, seed, batch recipe), the
# teacher, and how the process computes (threads, device). Everything else may differ:
# model, method, alpha, method settings, optimizer recipe, epochs.
PACK_KEY = (
    "dataset",
    "data_path",
    "seed",
    "batch_size",
    "crop_padding",
    "flip",
    "eval_batch_size",
    "threads",
    "device",
    "teacher",
    "teacher_dir",
)


def pack_key(spec: TrainSpec) -> tuple[Any, ...]:
    """Specs with equal keys can train in one pack."""
    return tuple(getattr(spec, name) for name in PACK_KEY)


class PackError(RuntimeError):
    """Some students of a pack failed (the others finished); `failures` maps each one's
    directory to its error."""

    def __init__(self, failures: dict[Path, BaseException]):
        self.failures = failures
        lines = "\n  ".join(f"{d}: {type(e).__name__}: {e}" for d, e in failures.items())
        super().__init__(f"{len(failures)} student(s) of the pack failed:\n  {lines}")


@dataclass(eq=False)
class Student:
    """One experiment of a pack: its spec and files, and while it trains its run and progress."""

    spec: TrainSpec
    files: ExperimentFiles
    run: Run | None = None
    progress: Progress | None = None
    metrics: dict[str, Any] | None = None  # set once finished (or found completed)
    error: BaseException | None = None

    @property
    def training(self) -> bool:
        return self.run is not None and self.metrics is None and self.error is None


def train_pack(
    specs: Sequence[TrainSpec],
    out_dirs: Sequence[str | Path],
    log_path: str | Path | None = None,
    claim: Claim = unclaimed,
    student_logs: Sequence[str | Path] | None = None,
) -> dict[Path, dict[str, Any]]:
    """Train each spec into its directory, all in this process, with one teacher forward per
    batch; returns each directory's final metrics. Raises PackError after the others finished
    if any student failed.

    `claim` is asked for each directory, as `kdflow.trainer.train` asks it; a refusal fails
    that student only. `log_path` takes every line, each naming its student; `student_logs`
    (one per spec) take a student's own lines and the pack's, as its log would alone."""
    if len(specs) != len(out_dirs) or not specs:
        raise ValueError("train_pack needs one output directory per spec, and at least one spec")
    keys = {pack_key(spec) for spec in specs}
    if len(keys) > 1:
        differ = [name for i, name in enumerate(PACK_KEY) if len({key[i] for key in keys}) > 1]
        raise ValueError(f"these specs cannot train in one pack: their {differ} differ")
    dirs = [Path(d).resolve() for d in out_dirs]
    if len(set(dirs)) != len(dirs):
        raise ValueError("two students of a pack write one directory")
    if student_logs is not None and len(student_logs) != len(specs):
        raise ValueError("train_pack needs one student log per spec, or none")
    students = [Student(spec, ExperimentFiles(d)) for spec, d in zip(specs, out_dirs, strict=True)]
    _setup_logging(log_path)
    handlers = _student_handlers(students, student_logs or [])
    try:
        todo = []
        for student in students:
            with _as(student):
                if student.files.completed.exists():
                    log.info("%s is completed: not training it again", student.files.dir)
                    student.metrics = read_json(student.files.metrics) or {}
                    continue
                try:
                    student.files.claim(claim)  # refuses where another live owner trains it
                    student.files.remove_partial_writes()  # only once owned
                except Exception as exc:
                    student.error = exc  # claim logged it; nothing of this directory is written
                    continue
            todo.append(student)
        if todo:
            _train(todo)
    finally:
        for handler in handlers:
            logging.getLogger().removeHandler(handler)
            handler.close()
    failures = {s.files.dir: s.error for s in students if s.error is not None}
    if failures:
        raise PackError(failures) from next(iter(failures.values()))
    return {s.files.dir: s.metrics for s in students}


@contextmanager
def _as(student: Student) -> Iterator[None]:
    """Inside, log records are `student`'s (its own log takes them)."""
    token = _STUDENT.set(student.files.dir)
    try:
        yield
    finally:
        _STUDENT.reset(token)


class _Only(logging.Filter):
    """A student's log: its own records and the pack's, not the other students'."""

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = directory

    def filter(self, record: logging.LogRecord) -> bool:
        owner = _STUDENT.get()
        return owner is None or owner == self.directory


class _Named(logging.Filter):
    """The pack's log: each of a student's records begins with its directory."""

    def filter(self, record: logging.LogRecord) -> bool:
        owner = _STUDENT.get()
        record.student = f"{owner}: " if owner is not None else ""
        return True


_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _student_handlers(
    students: list[Student], paths: Sequence[str | Path]
) -> list[logging.Handler]:
    """Name the student on the pack's handlers; add one file handler per student log."""
    root = logging.getLogger()
    for handler in root.handlers:
        handler.addFilter(_Named())
        handler.setFormatter(
            logging.Formatter(_FORMAT.replace("%(message)s", "%(student)s%(message)s"))
        )
    added = []
    for student, path in zip(students, paths, strict=False):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path)
        handler.addFilter(_Only(student.files.dir))
        handler.setFormatter(logging.Formatter(_FORMAT))
        root.addHandler(handler)
        added.append(handler)
    return added


def _train(students: list[Student]) -> None:
    first = students[0].spec
    data = build_data(first)  # the batches every student sees
    teacher = None
    if any(s.spec.method != "pure" for s in students):
        kd = next(s.spec for s in students if s.spec.method != "pure")
        teacher = load_teacher(kd, data.num_classes, data.device)
        teacher = teacher.to(memory_format=data.memory_format)
    log.info(
        "pack of %d students of %s on %s, seed %d",
        len(students),
        teacher.__class__.__name__ if teacher is not None else "no teacher",
        first.dataset,
        first.seed,
    )
    for student in students:
        with _as(student):
            try:
                # each student's initial values are drawn from its own seed, as alone
                student.run = build(student.spec, data, teacher, own_rng=True)
                with stream(student.run):
                    student.progress = resume(student.spec, student.run, student.files)
                student.files.write_status(
                    student.spec,
                    "in_progress",
                    epoch=student.progress.next_epoch,
                    best_acc=max(student.progress.best_acc, 0.0),
                )
                log.info(
                    "training %s from epoch %d, in a pack of %d",
                    student.files.dir,
                    student.progress.next_epoch + 1,
                    len(students),
                )
            except Exception as exc:
                _fail(student, exc)

    by_run = {id(s.run): s for s in students if s.run is not None}
    while True:
        for student in students:
            if student.training and student.progress.next_epoch >= student.spec.epochs:
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
            student.metrics = finish(student.spec, student.files, student.progress)
        except Exception as exc:
            _fail(student, exc)
            return
    student.run = None  # its memory goes back; the others go on


def _fail(student: Student, exc: BaseException) -> None:
    """Drop a failed student: say so in the logs and its status.json; the others go on."""
    with _as(student):
        _record_failure(student, exc)


def _record_failure(student: Student, exc: BaseException) -> None:
    log.error("student %s failed: %s", student.files.dir, exc, exc_info=exc)
    student.error = exc
    student.run = None
    try:
        student.files.write_status(student.spec, "failed", error=f"{type(exc).__name__}: {exc}")
    except Exception as write_error:  # a full disk: the log has said it
        log.error("could not record the failure in %s: %s", student.files.status, write_error)
