"""The steps of training an experiment (a pure baseline or a distilled student): its files,
building it, resuming it exactly after a kill, an epoch, a saved epoch, its end. kdflow.pack
runs them for one experiment or for the students of one teacher together (docs/PACKS.md)."""

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
from dataclasses import dataclass, field
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
from kdflow.config import TrainSpec, identity_changes
from kdflow.data import load_prepared
from kdflow.fileio import atomic_write_json, atomic_write_text, read_json
from kdflow.loader import DeviceBatches, channel_stats
from kdflow.losses import build_method
from kdflow.models import build_model

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


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but torch sees no GPU on this node")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """The arithmetic of a run: fp32, or bf16 or fp16 autocast (fp16 with a gradient scaler,
    whose state the checkpoint keeps), and why it was chosen."""

    name: str  # fp32 | bf16 | fp16
    device_type: str
    reason: str

    def autocast(self):
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)
        return torch.autocast(self.device_type, dtype=dtype, enabled=dtype is not None)

    def scaler(self) -> torch.amp.GradScaler | None:
        # bf16 keeps fp32's exponent range: only fp16 gradients underflow without scaling
        return torch.amp.GradScaler(self.device_type) if self.name == "fp16" else None


def choose_precision(setting: str, device: torch.device) -> Precision:
    """The config's `precision` on this device. auto: fp32 on the CPU; on a GPU bf16 autocast
    where it has native bf16 (compute capability 8.0 and later), else fp16 with a scaler."""
    if setting != "auto":
        return Precision(setting, device.type, f"precision: {setting} in the config")
    if device.type != "cuda":
        return Precision("fp32", device.type, "auto on the CPU: fp32, as the published runs")
    major, minor = torch.cuda.get_device_capability(device)
    name = torch.cuda.get_device_name(device)
    if (major, minor) >= (8, 0):
        why = f"auto on {name} (compute capability {major}.{minor} >= 8.0): native bf16"
        return Precision("bf16", "cuda", why)
    why = (
        f"auto on {name} (compute capability {major}.{minor} < 8.0): no bf16 tensor cores, "
        "fp16 autocast with a gradient scaler"
    )
    return Precision("fp16", "cuda", why)


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


def load_teacher(spec: TrainSpec, data: Data) -> torch.nn.Module:
    """The frozen teacher on the data's device: its run's last.pth (teacher_weights: last) or
    best.pth (best). A teacher that kdflow 0.1 trained has no last.pth: its checkpoint, at its
    last epoch, holds those weights."""
    teacher_dir = Path(spec.teacher_dir)
    path = teacher_dir / f"{spec.teacher_weights}.pth"
    if spec.teacher_weights == "last" and not path.exists():
        path = teacher_dir / "checkpoint.pth"
    try:
        saved = load_verified(path)
        if path.name == "checkpoint.pth":
            epochs = (read_json(teacher_dir / "metrics.json") or {}).get("epochs")
            if saved["epoch"] + 1 != epochs:
                raise CheckpointError(f"{path} is not at the teacher's last epoch ({epochs})")
            saved["model_name"] = saved["identity"]["model"]
    except (CheckpointError, KeyError) as exc:
        raise RuntimeError(
            f"cannot load the teacher's weights: {exc}; retrain the teacher: move "
            f"{spec.teacher_dir} away and run the workflow again"
        ) from exc
    if saved.get("model_name") != spec.teacher:
        raise RuntimeError(
            f"{path} holds a {saved.get('model_name')!r}, but the teacher is {spec.teacher!r}"
        )
    teacher = build_model(spec.teacher, data.num_classes)
    teacher.load_state_dict(saved["model"])
    log.info("teacher %s: %s (epoch %d)", spec.teacher, path, saved["epoch"] + 1)
    teacher.to(data.device, memory_format=data.memory_format)
    return teacher.eval().requires_grad_(False)


# An owner check, handed to the trainer by its caller (scripts/train.py: kdflow.owner.claim, which
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
        self.last = self.dir / "last.pth"
        self.metrics = self.dir / "metrics.json"
        self.completed = self.dir / "completed"
        self.owner: dict[str, Any] = {"owner": None}  # status.json's owner fields (`claim`)
        self.precision: dict[str, Any] = {}  # and the precision used, and why

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
        previous.pop("error", None)  # a failed student's error, once it trains again
        record = {
            **previous,
            "status": status,
            "dataset": spec.dataset,
            "method": spec.method,
            "model": spec.model,
            "teacher": spec.teacher,
            "alpha": spec.alpha if spec.method != "pure" else None,
            "seed": spec.seed,
            "epochs": spec.recipe.epochs,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            **self.owner,
            **self.precision,
            "updated_at": time.time(),
            **fields_,
        }
        record.setdefault("started_at", record["updated_at"])
        atomic_write_json(self.status, record)


@dataclass(eq=False)  # runs are told apart by identity
class Run:
    """What training holds in memory: built by `build`, its states restored by `resume`.

    The students of a pack share `train_batches`, `test_batches`, `teacher` and `precision`
    (the same objects); everything else is each student's own."""

    train_batches: DeviceBatches
    test_batches: DeviceBatches
    model: torch.nn.Module
    teacher: torch.nn.Module | None  # None for a pure run
    distill: Any  # the method (kdflow.losses); None for a pure run
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    precision: Precision
    # The experiment's own random streams (python, numpy, torch: `rng_state`), swapped into
    # the process around each of its steps (`stream`) while others train beside it.
    rng: dict[str, Any]
    scaler: torch.amp.GradScaler | None = None  # fp16 only


@dataclass
class Progress:
    """Where training stands: the next epoch, the history so far, the best test accuracy, and
    the precision of each stretch of epochs ([first epoch, name], ...)."""

    next_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = -1
    precisions: list[list[Any]] = field(default_factory=list)

    def used(self, epochs: int) -> str:
        """The precision used, for people: `bf16`, or `bf16 (epochs 1-36), fp16 (37-240)`."""
        if len(self.precisions) == 1:
            return self.precisions[0][1]
        ends = [first for first, _ in self.precisions[1:]] + [epochs]
        return ", ".join(
            f"{name} ({'epochs ' * (i == 0)}{first + 1}-{end})"
            for i, ((first, name), end) in enumerate(zip(self.precisions, ends, strict=True))
        )


@dataclass
class Data:
    """The data on the device, as every experiment of one (dataset, seed, batch recipe) sees
    it: built once, shared by the students of a pack."""

    device: torch.device
    train_batches: DeviceBatches
    test_batches: DeviceBatches
    num_classes: int
    image_shape: tuple[int, ...]

    @property
    def memory_format(self) -> torch.memory_format:
        on_gpu = self.device.type == "cuda"
        return torch.channels_last if on_gpu else torch.contiguous_format


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
    train_x, test_x = torch.from_numpy(data.train_x), torch.from_numpy(data.test_x)
    mean, std = channel_stats(train_x)
    common = dict(device=device, mean=mean, std=std, channels_last=on_gpu)
    recipe = spec.recipe
    train_batches = DeviceBatches(
        train_x,
        torch.from_numpy(data.train_y),
        batch_size=recipe.batch_size,
        train=True,
        crop_padding=recipe.crop_padding,
        flip=recipe.flip,
        **common,
    )
    test_batches = DeviceBatches(
        test_x,
        torch.from_numpy(data.test_y),
        batch_size=recipe.eval_batch_size,
        train=False,
        **common,
    )
    shape = tuple(data.train_x.shape[1:])
    return Data(device, train_batches, test_batches, data.num_classes, shape)


def build(
    spec: TrainSpec, data: Data, teacher: torch.nn.Module | None, precision: Precision
) -> Run:
    """The student (with the method's own modules), optimizer, schedule and scaler, every
    random initial value drawn from the seed, in the run's own random streams (`Run.rng`).

    `teacher` is the loaded teacher (the same object for every student of a pack)."""
    if _holder:  # the streams the process holds go back to their run before seeding
        _holder.pop().rng = rng_state()
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
        # A teacher's random initial values, drawn after the student's and thrown away: what
        # is drawn next (FitNet's regressor) is what kdflow 0.1 drew, which loaded the
        # teacher's weights into a network built here.
        build_model(spec.teacher, data.num_classes)
        distill = build_method(spec.method, alpha=spec.alpha, **spec.method_settings)
        distill.setup(model, teacher, image_shape=data.image_shape)
        distill.to(data.device, memory_format=memory_format)
        trainable += distill.parameters()  # e.g. FitNet's regressor, trained with the student
    recipe = spec.recipe
    optimizer = torch.optim.SGD(
        trainable, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(recipe.lr_milestones), gamma=recipe.lr_decay
    )
    batches = (data.train_batches, data.test_batches)
    run = Run(*batches, model, teacher, distill, optimizer, scheduler, precision, rng_state())
    run.scaler = precision.scaler()
    return run


# The run whose random streams the process holds: `stream` swaps only when another's are
# needed (a pack), so that a run alone never pays for a swap (some 70 us, a GPU batch's 2 %).
_holder: list[Run] = []


@contextmanager
def stream(run: Run) -> Iterator[None]:
    """Inside, the process's random streams are `run`'s own: every draw of one student
    (initial values, dropout, the RNG states its checkpoint saves) is then the same whether it
    trains alone or in a pack, whatever the others draw (nothing draws outside a stream)."""
    if not _holder or _holder[0] is not run:
        if _holder:
            _holder[0].rng = rng_state()
        set_rng_state(run.rng)
        _holder[:] = [run]
    yield


def resume(spec: TrainSpec, run: Run, files: ExperimentFiles) -> Progress:
    """Where the last checkpoint left off, its states loaded into `run` (every RNG too, so the
    run goes on exactly as if it had never stopped); a fresh start without one."""
    state = load_checkpoint(files.checkpoint)
    now = run.precision.name
    if state is None:
        return Progress(precisions=[[0, now]])
    changed = identity_changes(state.get("identity", {}), spec.identity)
    if changed:
        raise RuntimeError(
            f"{files.checkpoint} was written by a different experiment ({changed}); move the "
            "directory away to restart it, or restore the config it was started with"
        )
    if spec.recipe.epochs < state["epoch"] + 1:
        raise RuntimeError(
            f"{files.checkpoint} has already trained {state['epoch'] + 1} epochs, more than "
            f"the {spec.recipe.epochs} the config asks for"
        )
    run.model.load_state_dict(state["model"])
    if run.distill is not None:
        run.distill.load_state_dict(state.get("method", {}))
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if run.scaler is not None and "scaler" in state:
        run.scaler.load_state_dict(state["scaler"])
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
        precisions=state.get("precision", [[0, "unrecorded"]]),
    )
    if progress.precisions[-1][1] != now:  # `auto` on another kind of GPU
        log.warning("resuming in %s where the run trained in %s", now, progress.precisions[-1][1])
        progress.precisions.append([progress.next_epoch, now])
    files.write_history(progress.history)  # the csv may be an epoch ahead of the checkpoint
    log.info("resumed %s from epoch %d", files.dir, progress.next_epoch)
    return progress


# Told of a student that raised in an epoch (it is dropped, the others go on).
Failed = Callable[[Run, Exception], None]


def run_epochs(
    runs: list[Run], seed: int, epoch: int, failed: Failed | None = None
) -> list[dict[str, Any] | None]:
    """Train one epoch of each run, test each, step each schedule: their rows of history.csv.

    The runs share their batches and teacher: one teacher forward per batch serves them all.
    Without `failed` an error propagates; with it, a run that raises is dropped, `failed` is
    told, its row is None and the others go on. Timings are the epoch's wall time for all
    runs together (what one job spends per epoch)."""
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
                test_loss, test_acc = evaluate(run.model, run.test_batches, run.precision)
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
        _save_weights(files.best, spec, run, epoch, test_acc)
    scaler = {"scaler": run.scaler.state_dict()} if run.scaler is not None else {}
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
            "precision": progress.precisions,
            **scaler,
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
        spec.recipe.epochs,
        row["train_loss"],
        row["train_acc"],
        test_acc,
        progress.best_acc,
        row["epoch_seconds"],
        row["images_per_s"],
    )


def _save_weights(path: Path, spec: TrainSpec, run: Run, epoch: int, test_acc: float) -> None:
    state = {"model": run.model.state_dict(), "model_name": spec.model}
    save_verified(path, {**state, "epoch": epoch, "test_acc": test_acc})


def finish(spec: TrainSpec, run: Run, files: ExperimentFiles, progress: Progress) -> dict[str, Any]:
    """last.pth (the last epoch's weights, which a student's teacher loads by default),
    metrics.json, the final status, and last of all `completed` (the rule's output)."""
    history = progress.history
    _save_weights(files.last, spec, run, history[-1]["epoch"], history[-1]["test_acc"])
    metrics = {
        **spec.identity,
        "epochs": spec.recipe.epochs,
        "best_acc": progress.best_acc,
        "best_epoch": progress.best_epoch,
        "final_acc": history[-1]["test_acc"],
        "train_seconds": sum(row["epoch_seconds"] for row in history),
        "precision_used": progress.used(spec.recipe.epochs),
    }
    atomic_write_json(files.metrics, metrics)
    files.write_status(spec, "completed", epoch=spec.recipe.epochs, best_acc=progress.best_acc)
    atomic_write_text(files.completed, f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    return metrics


# -- the steps of one epoch ------------------------------------------------------------------


def _train_students(
    runs: list[Run], seed: int, epoch: int, failed: Failed | None = None
) -> list[tuple[float, float] | None]:
    """One training epoch of students that see the same batches: (mean loss, accuracy in %)
    of each, None for one that raised (`failed` told). The teacher runs once per batch, with
    the stage maps if any student's method uses them; each student's forward, loss, backward
    and step are those it would compute alone, in its own random streams."""
    batches, precision = runs[0].train_batches, runs[0].precision
    teachers = {id(run.teacher): run.teacher for run in runs if run.teacher is not None}
    if len(teachers) > 1 or any(run.train_batches is not batches for run in runs):
        raise ValueError("students trained together must share their batches and teacher")
    teacher = next(iter(teachers.values()), None)
    features = any(run.distill is not None and run.distill.needs_features for run in runs)
    totals: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for run in runs:
        run.model.train()
        if run.distill is not None:
            run.distill.train()  # a method's own modules (FitNet's regressor) train too
        totals[id(run)] = (
            torch.zeros((), device=batches.device),
            torch.zeros((), device=batches.device, dtype=torch.long),
        )
    active, seen = list(runs), 0
    for x, y in batches.epoch(seed, epoch):
        if not active:
            break
        taught = None
        if teacher is not None:
            with precision.autocast():
                taught = _teach(teacher, x, features)
        for run in list(active):
            try:
                with stream(run):
                    _step(run, x, y, taught, epoch, totals[id(run)])
            except Exception as exc:
                active.remove(run)
                _failed(failed, run, exc)
        seen += len(y)
    return [
        (totals[id(r)][0].item() / seen, 100.0 * totals[id(r)][1].item() / seen)
        if r in active
        else None
        for r in runs
    ]


def _step(run: Run, x, y, taught, epoch: int, totals) -> None:
    """One SGD step of one student (a scaled one in fp16); its loss and hits are added to
    `totals` on the device: a .item() per step would stall the GPU."""
    with run.precision.autocast():
        logits, loss = _student_loss(run.model, run.distill, x, y, taught, epoch)
    run.optimizer.zero_grad(set_to_none=True)
    if run.scaler is None:
        loss.backward()
        run.optimizer.step()
    else:
        run.scaler.scale(loss).backward()
        run.scaler.step(run.optimizer)
        run.scaler.update()
    total_loss, correct = totals
    total_loss += loss.detach() * len(y)
    correct += (logits.argmax(1) == y).sum()


def _teach(teacher, x, features: bool):
    """The frozen teacher's (stage maps or None, logits) for one batch, computed once for all
    the students that see it. Inference tensors cannot be saved for backward: the students get
    ordinary copies, made once and shared (methods never change them in place)."""
    with torch.inference_mode():
        maps, logits = _forward(teacher, x, features)
    return ([m.clone() for m in maps] if features else None), logits.clone()


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
def evaluate(model, batches, precision: Precision) -> tuple[float, float]:
    model.eval()
    total_loss, correct = 0.0, 0
    for x, y in batches.epoch(0, 0):
        with precision.autocast():
            logits = model(x)
        total_loss += F.cross_entropy(logits.float(), y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    n = batches.num_images
    return total_loss / n, 100.0 * correct / n
