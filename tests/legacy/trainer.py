"""Train one experiment (pure baseline or distilled student); resume exactly after a kill."""

from __future__ import annotations

import csv
import io
import logging
import os
import random
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from kdflow.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_verified,
    save_checkpoint,
    save_verified,
)
from kdflow.data import load_prepared
from kdflow.fileio import atomic_write_json, atomic_write_text, read_json
from kdflow.loader import DeviceBatches, channel_stats
from kdflow.models import build_model
from legacy.losses import build_method, resolve_settings

log = logging.getLogger("kdflow.trainer")

HISTORY_FIELDS = [
    "epoch",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "lr",
    "epoch_seconds",
    "images_per_s",
]

# Changing these mid-run would make the resumed run a different experiment.
IDENTITY_FIELDS = (
    "dataset",
    "model",
    "seed",
    "method",
    "teacher",
    "alpha",
    "method_settings",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "lr_milestones",
    "lr_decay",
    "crop_padding",
    "flip",
)


@dataclass(frozen=True)
class TrainSpec:
    """Everything one experiment needs; built from the validated config by rules/common.smk."""

    dataset: str
    data_path: str
    model: str
    seed: int
    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_milestones: tuple[int, ...]
    lr_decay: float
    crop_padding: int = 4
    flip: bool = True
    eval_batch_size: int = 1000
    method: str = "pure"
    teacher: str | None = None
    teacher_dir: str | None = None
    alpha: float = 0.0
    method_settings: dict[str, Any] = field(default_factory=dict)  # config's `methods.<method>`
    threads: int = 1
    device: str = "auto"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> TrainSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"unknown training parameters {unknown}; known: {sorted(known)}")
        values = dict(params)
        values["lr_milestones"] = tuple(values.get("lr_milestones", ()))
        method, settings = values.get("method", "pure"), values.get("method_settings") or {}
        if method == "pure":
            if settings:
                raise ValueError(f"a pure run has no method settings, got {settings}")
        else:
            # every setting, defaults included, so that the checkpoint identity is complete
            values["method_settings"] = resolve_settings(method, settings)
        spec = cls(**values)
        if spec.method != "pure" and not (spec.teacher and spec.teacher_dir):
            raise ValueError(f"method {spec.method!r} needs a teacher and its teacher_dir")
        return spec

    @property
    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: list(d[k]) if isinstance(d[k], tuple) else d[k] for k in IDENTITY_FIELDS}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no GPU on this node")
    return torch.device(name)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_teacher(spec: TrainSpec, num_classes: int, device: torch.device) -> torch.nn.Module:
    """The frozen teacher from its run's best.pth (its `completed` is this job's input)."""
    return _load_teacher_weights(build_model(spec.teacher, num_classes), spec, device)


def _load_teacher_weights(
    teacher: torch.nn.Module, spec: TrainSpec, device: torch.device
) -> torch.nn.Module:
    path = Path(spec.teacher_dir) / "best.pth"
    try:
        saved = load_verified(path)
    except CheckpointError as exc:
        raise RuntimeError(
            f"cannot load the teacher's weights: {exc}; retrain the teacher: move "
            f"{spec.teacher_dir} away and run the workflow again (its checkpoint holds the last "
            f"epoch's weights, not the best)"
        ) from exc
    if saved.get("model_name") != spec.teacher:
        raise RuntimeError(
            f"{path} holds a {saved.get('model_name')!r}, but the teacher is {spec.teacher!r}"
        )
    teacher.load_state_dict(saved["model"])
    teacher.to(device).eval().requires_grad_(False)
    return teacher


# An owner check, handed to `train` by its caller (scripts/train.py: kdflow.owner.claim, which
# claims the directory atomically with a claim file). Asked before anything is written, with
# the experiment directory and the status.json the last trainer left ({} if none), it raises
# to refuse (another job or process that may be alive trains the experiment), or returns the
# status.json fields that record this trainer as the owner.
Claim = Callable[[Path, dict[str, Any]], dict[str, Any]]


def unclaimed(directory: Path, status: dict[str, Any]) -> dict[str, Any]:
    """No owner check (tests, benchmarks, a run by hand): nothing refused, no owner or claim
    recorded (status.json's `host` and `pid` still say which process writes)."""
    return {"owner": None, "claim": None}


class ExperimentFiles:
    """The files of one experiment directory (the contract of DESIGN.md)."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.status = self.dir / "status.json"
        self.history = self.dir / "history.csv"
        self.checkpoint = self.dir / "checkpoint.pth"
        self.best = self.dir / "best.pth"
        self.metrics = self.dir / "metrics.json"
        self.completed = self.dir / "completed"
        self.owner: dict[str, Any] = {"owner": None}  # status.json's owner fields (`claim`)

    def claim(self, check: Claim) -> None:
        """Own the experiment if `check` allows (it raises where another owner that may be
        alive trains it, and leaves the directory's files as they were); every later status
        write records the owner it returns."""
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.owner = check(self.dir, read_json(self.status) or {})
        except Exception as exc:
            log.error("not training %s: %s", self.dir, exc)  # into the job's log, too
            raise

    def remove_partial_writes(self) -> None:
        """Delete temp files of atomic writes that a kill interrupted (they were never renamed)."""
        for tmp in self.dir.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def write_history(self, rows: list[dict[str, Any]]) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.history, buffer.getvalue())

    def write_status(self, spec: TrainSpec, status: str, **fields_: Any) -> None:
        previous = read_json(self.status) or {}
        previous.pop("error", None)  # a failed pack student's error, once it trains again
        record = {
            **previous,
            "status": status,
            "dataset": spec.dataset,
            "method": spec.method,
            "model": spec.model,
            "teacher": spec.teacher,
            "alpha": spec.alpha if spec.method != "pure" else None,
            "seed": spec.seed,
            "epochs": spec.epochs,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **self.owner,
            "updated_at": time.time(),
            **fields_,
        }
        record.setdefault("started_at", record["updated_at"])
        atomic_write_json(self.status, record)


def _flat(identity: dict[str, Any]) -> dict[str, Any]:
    """{'method_settings': {'beta': 8}} -> {'method_settings.beta': 8}, for readable diffs."""
    out = {}
    for key, value in identity.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _check_same_experiment(spec: TrainSpec, state: dict[str, Any], path: Path) -> None:
    saved, wanted = _flat(state.get("identity", {})), _flat(spec.identity)
    changed = {
        k: (saved.get(k), wanted.get(k))
        for k in {**saved, **wanted}
        if saved.get(k) != wanted.get(k)
    }
    if changed:
        detail = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise RuntimeError(
            f"{path} was written by a different experiment ({detail}); move the directory "
            "away to restart it, or restore the config it was started with"
        )
    if spec.epochs < state["epoch"] + 1:
        raise RuntimeError(
            f"{path} has already trained {state['epoch'] + 1} epochs, more than the "
            f"{spec.epochs} the config asks for"
        )


# -- one experiment: claim its directory, build, resume, train epoch by epoch, finish ----------


def train(
    spec: TrainSpec,
    out_dir: str | Path,
    log_path: str | Path | None = None,
    claim: Claim = unclaimed,
) -> dict:
    """Train `spec` into `out_dir`, resuming from its checkpoint; returns the final metrics.

    `claim` is asked before anything is written whether this trainer may own the experiment
    (scripts/train.py passes kdflow.owner.claim, which knows the schedulers)."""
    files = ExperimentFiles(out_dir)
    _setup_logging(log_path)
    files.claim(claim)  # refuses where another live job or process trains this experiment
    files.remove_partial_writes()  # only once owned: they may have been a live owner's
    run = build(spec)
    progress = resume(spec, run, files)
    files.write_status(
        spec, "in_progress", epoch=progress.next_epoch, best_acc=max(progress.best_acc, 0.0)
    )
    for epoch in range(progress.next_epoch, spec.epochs):
        row = run_epoch(run, spec.seed, epoch)
        save_epoch(spec, run, progress, files, row)
    return finish(spec, files, progress)


@dataclass(eq=False)  # runs are told apart by identity
class Run:
    """What training holds in memory: built by `build`, its states restored by `resume`.

    The students of a pack (kdflow.pack) share `train_batches`, `test_batches` and `teacher`
    (the same objects); everything else is each student's own."""

    on_gpu: bool
    train_batches: DeviceBatches
    test_batches: DeviceBatches
    model: torch.nn.Module
    teacher: torch.nn.Module | None  # None for a pure run
    distill: Any  # the method (kdflow.losses); None for a pure run
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    # The experiment's own random streams (python, numpy, torch: `rng_state`) while other
    # experiments train in the same process (a pack); None: the process's global ones.
    rng: dict[str, Any] | None = None


@dataclass
class Progress:
    """Where training stands: the next epoch, the history so far, the best test accuracy."""

    next_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = -1


@dataclass
class Data:
    """The data on the device, as every experiment of one (dataset, seed, batch recipe) sees
    it: built once, shared by the students of a pack."""

    device: torch.device
    on_gpu: bool
    train_batches: DeviceBatches
    test_batches: DeviceBatches
    num_classes: int
    image_shape: tuple[int, ...]

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.on_gpu else torch.contiguous_format


def build_data(spec: TrainSpec) -> Data:
    """The device, and the training and test images on it (normalized per batch)."""
    # Keep the count fixed across resubmissions: on the CPU a resumed run ends bit-identical
    # to an uninterrupted one only with the same number of threads (checked in `resume`).
    torch.set_num_threads(spec.threads)
    device = pick_device(spec.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    data = load_prepared(Path(spec.data_path))
    train_batches, test_batches = _batches(spec, data, device, on_gpu)
    image_shape = tuple(data.train_x.shape[1:])
    return Data(device, on_gpu, train_batches, test_batches, data.num_classes, image_shape)


def build(
    spec: TrainSpec,
    data: Data | None = None,
    teacher: torch.nn.Module | None = None,
    own_rng: bool = False,
) -> Run:
    """The data on the device, the student (with the frozen teacher and the method's own
    modules), optimizer and schedule, every random initial value drawn from the seed.

    A pack passes the `data` and the loaded `teacher` its students share, and `own_rng`: the
    run then keeps the random streams its build left (`Run.rng`, used through `stream`), so
    that each student draws exactly what it would draw alone."""
    data = data or build_data(spec)
    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    np.random.seed(spec.seed % 2**32)
    memory_format = data.memory_format
    model = build_model(spec.model, data.num_classes).to(data.device, memory_format=memory_format)
    distill = None
    trainable = list(model.parameters())
    if spec.method == "pure":
        teacher = None
    else:
        # The teacher's random initial values are drawn here, after the student's, whether its
        # weights are loaded into this network (a run alone) or the pack's shared teacher is
        # used: what is drawn next (FitNet's regressor) is the same either way.
        drawn = build_model(spec.teacher, data.num_classes)
        if teacher is None:
            teacher = _load_teacher_weights(drawn, spec, data.device)
            teacher = teacher.to(memory_format=memory_format)
        del drawn
        distill = build_method(spec.method, alpha=spec.alpha, **spec.method_settings)
        distill.setup(model, teacher, image_shape=data.image_shape)
        distill.to(data.device, memory_format=memory_format)
        trainable += distill.parameters()  # e.g. FitNet's regressor, trained with the student
    optimizer = torch.optim.SGD(
        trainable, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(spec.lr_milestones), gamma=spec.lr_decay
    )
    return Run(
        data.on_gpu,
        data.train_batches,
        data.test_batches,
        model,
        teacher,
        distill,
        optimizer,
        scheduler,
        rng=rng_state() if own_rng else None,
    )


@contextmanager
def stream(run: Run) -> Iterator[None]:
    """Inside, the process's random streams are `run`'s own (a no-op for a run alone): every
    draw of one student (initial values, dropout, the RNG states its checkpoint saves) is then
    the same whether it trains alone or in a pack, whatever the others draw."""
    if run.rng is None:
        yield
        return
    set_rng_state(run.rng)
    try:
        yield
    finally:
        run.rng = rng_state()


def _batches(spec: TrainSpec, data, device, on_gpu: bool) -> tuple[DeviceBatches, DeviceBatches]:
    """Train and test images on the device, normalized by the training set's channel stats."""
    train_x, test_x = torch.from_numpy(data.train_x), torch.from_numpy(data.test_x)
    mean, std = channel_stats(train_x)
    common = dict(device=device, mean=mean, std=std, channels_last=on_gpu)
    train_batches = DeviceBatches(
        train_x,
        torch.from_numpy(data.train_y),
        batch_size=spec.batch_size,
        train=True,
        crop_padding=spec.crop_padding,
        flip=spec.flip,
        **common,
    )
    test_batches = DeviceBatches(
        test_x,
        torch.from_numpy(data.test_y),
        batch_size=spec.eval_batch_size,
        train=False,
        **common,
    )
    return train_batches, test_batches


def resume(spec: TrainSpec, run: Run, files: ExperimentFiles) -> Progress:
    """Where the last checkpoint left off, its states loaded into `run` (every RNG too, so the
    run goes on exactly as if it had never stopped); a fresh start without one."""
    state = load_checkpoint(files.checkpoint)
    if state is None:
        return Progress()
    _check_same_experiment(spec, state, files.checkpoint)
    run.model.load_state_dict(state["model"])
    if run.distill is not None:
        run.distill.load_state_dict(state.get("method", {}))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    if state.get("threads") != spec.threads:
        log.warning(
            "resuming with %d threads where the run started with %s: the result will not "
            "be bit-identical to an uninterrupted run",
            spec.threads,
            state.get("threads"),
        )
    progress = Progress(
        next_epoch=state["epoch"] + 1,
        history=state["history"],
        best_acc=state["best_acc"],
        best_epoch=state["best_epoch"],
    )
    files.write_history(progress.history)  # the csv may be an epoch ahead of the checkpoint
    log.info("resumed %s from epoch %d", files.dir, progress.next_epoch)
    return progress


def run_epoch(run: Run, seed: int, epoch: int) -> dict[str, Any]:
    """Train one epoch, test, step the schedule: the epoch's row of history.csv."""
    return run_epochs([run], seed, epoch)[0]


# Told of a student that raised in a pack's epoch (it is dropped, the others go on).
Failed = Callable[[Run, Exception], None]


def run_epochs(
    runs: list[Run], seed: int, epoch: int, failed: Failed | None = None
) -> list[dict[str, Any] | None]:
    """Train one epoch of each run, test each, step each schedule: their rows of history.csv.

    The runs share their batches and teacher (a pack, or a run alone): one teacher forward per
    batch serves them all. Without `failed` an error propagates; with it, a run that raises is
    dropped, `failed` is told, its row is None and the others go on. Timings are the epoch's
    wall time for all runs together (what one job spends per epoch)."""
    started = time.perf_counter()
    lrs = [run.optimizer.param_groups[0]["lr"] for run in runs]
    trained = _train_students(runs, seed, epoch, failed)
    train_seconds = time.perf_counter() - started
    rows: list[dict[str, Any] | None] = []
    for run, lr, result in zip(runs, lrs, trained, strict=True):
        if result is None:
            rows.append(None)
            continue
        try:
            with stream(run):
                test_loss, test_acc = evaluate(run.model, run.test_batches, run.on_gpu)
                run.scheduler.step()
        except Exception as exc:
            _failed(failed, run, exc)
            rows.append(None)
            continue
        train_loss, train_acc = result
        rows.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": lr,
            }
        )
    epoch_seconds = time.perf_counter() - started
    for run, row in zip(runs, rows, strict=True):
        if row is not None:
            row["epoch_seconds"] = epoch_seconds
            row["images_per_s"] = run.train_batches.num_images / train_seconds
    return rows


def _failed(failed: Failed | None, run: Run, exc: Exception) -> None:
    if failed is None:
        raise exc
    failed(run, exc)


def save_epoch(
    spec: TrainSpec, run: Run, progress: Progress, files: ExperimentFiles, row: dict[str, Any]
) -> None:
    """Record a trained epoch: best.pth if it is the best so far, the checkpoint, history.csv,
    status.json; each written atomically, so a kill at any instant loses at most this epoch."""
    epoch, test_acc = row["epoch"], row["test_acc"]
    progress.history.append(row)
    progress.next_epoch = epoch + 1
    # best.pth before the checkpoint: a kill between the two replays this epoch, which
    # rewrites best.pth identically; the other order could leave best.pth an epoch stale.
    if test_acc > progress.best_acc:
        progress.best_acc, progress.best_epoch = test_acc, epoch
        save_verified(
            files.best,
            {
                "model": run.model.state_dict(),
                "model_name": spec.model,
                "epoch": epoch,
                "test_acc": test_acc,
            },
        )
    save_checkpoint(
        files.checkpoint,
        {
            "epoch": epoch,
            "identity": spec.identity,
            "threads": spec.threads,
            "model": run.model.state_dict(),
            "method": run.distill.state_dict() if run.distill is not None else {},
            "optimizer": run.optimizer.state_dict(),
            "scheduler": run.scheduler.state_dict(),
            "rng": rng_state(),
            "history": progress.history,
            "best_acc": progress.best_acc,
            "best_epoch": progress.best_epoch,
        },
    )
    files.write_history(progress.history)
    files.write_status(
        spec,
        "in_progress",
        epoch=epoch + 1,
        best_acc=progress.best_acc,
        last_acc=test_acc,
        epoch_seconds=row["epoch_seconds"],
    )
    log.info(
        "epoch %d/%d loss %.4f train %.2f%% test %.2f%% (best %.2f%%) %.1fs %.0f img/s",
        epoch + 1,
        spec.epochs,
        row["train_loss"],
        row["train_acc"],
        test_acc,
        progress.best_acc,
        row["epoch_seconds"],
        row["images_per_s"],
    )


def finish(spec: TrainSpec, files: ExperimentFiles, progress: Progress) -> dict[str, Any]:
    """metrics.json, the final status, and last of all `completed` (the rule's output)."""
    history = progress.history
    metrics = {
        **spec.identity,
        "epochs": spec.epochs,
        "best_acc": progress.best_acc,
        "best_epoch": progress.best_epoch,
        "final_acc": history[-1]["test_acc"],
        "train_seconds": sum(row["epoch_seconds"] for row in history),
    }
    atomic_write_json(files.metrics, metrics)
    files.write_status(spec, "completed", epoch=spec.epochs, best_acc=progress.best_acc)
    atomic_write_text(files.completed, f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    return metrics


# -- the steps of one epoch ------------------------------------------------------------------


def _train_epoch(model, teacher, distill, optimizer, batches, seed, epoch, on_gpu):
    """One training epoch of one student: (mean loss, accuracy in %)."""
    run = Run(on_gpu, batches, batches, model, teacher, distill, optimizer, scheduler=None)
    return _train_students([run], seed, epoch, None)[0]


def _train_students(
    runs: list[Run], seed: int, epoch: int, failed: Failed | None
) -> list[tuple[float, float] | None]:
    """One training epoch of students that see the same batches: (mean loss, accuracy in %)
    of each, None for one that raised (`failed` told). The teacher runs once per batch, with
    the stage maps if any student's method uses them; each student's forward, loss, backward
    and step are those it would compute alone, in its own random streams."""
    batches, on_gpu = runs[0].train_batches, runs[0].on_gpu
    teachers = {id(run.teacher): run.teacher for run in runs if run.teacher is not None}
    if len(teachers) > 1 or any(run.train_batches is not batches for run in runs):
        raise ValueError("students trained together must share their batches and teacher")
    teacher = next(iter(teachers.values()), None)
    features = any(run.distill is not None and run.distill.needs_features for run in runs)
    totals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    active = []
    for run in runs:
        run.model.train()
        if run.distill is not None:
            run.distill.train()  # a method's own modules (FitNet's regressor) train too
        totals[id(run)] = (
            torch.zeros((), device=batches.device),
            torch.zeros((), device=batches.device, dtype=torch.long),
        )
        active.append(run)
    seen = 0
    for x, y in batches.epoch(seed, epoch):
        if not active:
            break
        taught = None
        if teacher is not None:
            # bf16 needs no GradScaler; on the CPU autocast stays off so resume is bit-exact
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                taught = _teach(teacher, x, features)
        for run in list(active):
            try:
                with stream(run):
                    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
                        logits, loss = _student_loss(run.model, run.distill, x, y, taught, epoch)
                    run.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    run.optimizer.step()
                    # accumulate on the device: a .item() per step would stall the GPU
                    total_loss, correct = totals[id(run)]
                    total_loss += loss.detach() * len(y)
                    correct += (logits.argmax(1) == y).sum()
            except Exception as exc:
                active.remove(run)
                _failed(failed, run, exc)
        seen += len(y)
    out: list[tuple[float, float] | None] = []
    for run in runs:
        if run not in active:
            out.append(None)
            continue
        total_loss, correct = totals[id(run)]
        out.append((total_loss.item() / seen, 100.0 * correct.item() / seen))
    return out


def _teach(teacher, x, features: bool):
    """The frozen teacher's (stage maps or None, logits) for one batch, computed once for all
    the students that see it. Inference tensors cannot be saved for backward: the students get
    ordinary copies, made once and shared (methods never change them in place)."""
    with torch.inference_mode():
        maps, logits = _forward(teacher, x, features)
    return ([m.clone() for m in maps] if features else None), logits.clone()


def _loss(model, teacher, distill, x, y, epoch):
    """The student's logits and its training loss on one batch: CE alone, or the method's."""
    if teacher is None:
        return _student_loss(model, None, x, y, None, epoch)
    return _student_loss(model, distill, x, y, _teach(teacher, x, distill.needs_features), epoch)


def _student_loss(model, distill, x, y, taught, epoch):
    """The student's logits and loss, given the teacher's output `taught` (from `_teach`)."""
    if distill is None:
        logits = model(x)
        return logits, F.cross_entropy(logits, y)
    features = distill.needs_features  # stage maps only for methods that use them
    student_maps, logits = _forward(model, x, features)
    teacher_maps, teacher_logits = taught
    loss = distill(
        logits,
        teacher_logits,
        y,
        epoch=epoch,
        student_features=student_maps,
        teacher_features=teacher_maps if features else None,
    )
    return logits, loss


def _forward(net, x, features: bool):
    """(stage feature maps, or None where they are not needed; logits)."""
    return net.forward_features(x) if features else (None, net(x))


@torch.inference_mode()
def evaluate(model, batches, on_gpu) -> tuple[float, float]:
    model.eval()
    total_loss, correct = 0.0, 0
    for x, y in batches.epoch(0, 0):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    n = batches.num_images
    return total_loss / n, 100.0 * correct / n


def _setup_logging(log_path: str | Path | None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path))
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
