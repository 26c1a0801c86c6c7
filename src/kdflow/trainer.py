"""Train one experiment (pure baseline or distilled student); resume exactly after a kill."""

from __future__ import annotations

import csv
import io
import logging
import os
import random
import socket
import time
from collections.abc import Callable
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
from kdflow.losses import build_method, resolve_settings
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
    teacher = build_model(spec.teacher, num_classes)
    teacher.load_state_dict(saved["model"])
    teacher.to(device).eval().requires_grad_(False)
    return teacher


# An owner check, handed to `train` by its caller (scripts/train.py: kdflow.owner.claim). Asked
# before anything is written, with the experiment directory and the status.json the last
# trainer left ({} if none), it raises to refuse (another live job or process trains the
# experiment), or returns the status.json fields that record this trainer as the owner.
Claim = Callable[[Path, dict[str, Any]], dict[str, Any]]


def unclaimed(directory: Path, status: dict[str, Any]) -> dict[str, Any]:
    """No owner check (tests, benchmarks, a run by hand): nothing refused, no owner recorded
    (status.json's `host` and `pid` still say which process writes)."""
    return {"owner": None}


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
        """Own the experiment if `check` allows (it raises where another live owner trains it);
        every later status write records the owner it returns."""
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


@dataclass
class Run:
    """What training holds in memory: built by `build`, its states restored by `resume`."""

    on_gpu: bool
    train_batches: DeviceBatches
    test_batches: DeviceBatches
    model: torch.nn.Module
    teacher: torch.nn.Module | None  # None for a pure run
    distill: Any  # the method (kdflow.losses); None for a pure run
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler


@dataclass
class Progress:
    """Where training stands: the next epoch, the history so far, the best test accuracy."""

    next_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = -1


def build(spec: TrainSpec) -> Run:
    """The data on the device, the student (with the frozen teacher and the method's own
    modules), optimizer and schedule, every random initial value drawn from the seed."""
    # Keep the count fixed across resubmissions: on the CPU a resumed run ends bit-identical
    # to an uninterrupted one only with the same number of threads (checked in `resume`).
    torch.set_num_threads(spec.threads)
    device = pick_device(spec.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True
    data = load_prepared(Path(spec.data_path))
    train_batches, test_batches = _batches(spec, data, device, on_gpu)

    torch.manual_seed(spec.seed)
    random.seed(spec.seed)
    np.random.seed(spec.seed % 2**32)
    memory_format = torch.channels_last if on_gpu else torch.contiguous_format
    model = build_model(spec.model, data.num_classes).to(device, memory_format=memory_format)
    teacher = distill = None
    trainable = list(model.parameters())
    if spec.method != "pure":
        teacher = load_teacher(spec, data.num_classes, device).to(memory_format=memory_format)
        distill = build_method(spec.method, alpha=spec.alpha, **spec.method_settings)
        distill.setup(model, teacher, image_shape=tuple(data.train_x.shape[1:]))
        distill.to(device, memory_format=memory_format)
        trainable += distill.parameters()  # e.g. FitNet's regressor, trained with the student
    optimizer = torch.optim.SGD(
        trainable, lr=spec.lr, momentum=spec.momentum, weight_decay=spec.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(spec.lr_milestones), gamma=spec.lr_decay
    )
    return Run(on_gpu, train_batches, test_batches, model, teacher, distill, optimizer, scheduler)


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
    started = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    train_loss, train_acc = _train_epoch(
        run.model,
        run.teacher,
        run.distill,
        run.optimizer,
        run.train_batches,
        seed,
        epoch,
        run.on_gpu,
    )
    train_seconds = time.perf_counter() - started
    test_loss, test_acc = evaluate(run.model, run.test_batches, run.on_gpu)
    run.scheduler.step()
    return {
        "epoch": epoch,
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "lr": lr,
        "epoch_seconds": time.perf_counter() - started,
        "images_per_s": run.train_batches.num_images / train_seconds,
    }


def save_epoch(
    spec: TrainSpec, run: Run, progress: Progress, files: ExperimentFiles, row: dict[str, Any]
) -> None:
    """Record a trained epoch: best.pth if it is the best so far, the checkpoint, history.csv,
    status.json; each written atomically, so a kill at any instant loses at most this epoch."""
    epoch, test_acc = row["epoch"], row["test_acc"]
    progress.history.append(row)
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
    model.train()
    if distill is not None:
        distill.train()  # a method's own modules (FitNet's regressor) train with the student
    total_loss = torch.zeros((), device=batches.device)
    correct = torch.zeros((), device=batches.device, dtype=torch.long)
    seen = 0
    for x, y in batches.epoch(seed, epoch):
        # bf16 needs no GradScaler; on the CPU autocast stays off so resume is bit-exact
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            logits, loss = _loss(model, teacher, distill, x, y, epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        # accumulate on the device: a .item() per step would stall the GPU
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
        seen += len(y)
    return total_loss.item() / seen, 100.0 * correct.item() / seen


def _loss(model, teacher, distill, x, y, epoch):
    """The student's logits and its training loss on one batch: CE alone, or the method's."""
    if teacher is None:
        logits = model(x)
        return logits, F.cross_entropy(logits, y)
    features = distill.needs_features  # stage maps only for methods that use them
    student_maps, logits = _forward(model, x, features)
    with torch.inference_mode():
        teacher_maps, teacher_logits = _forward(teacher, x, features)
    # inference tensors cannot be saved for backward: the method gets ordinary copies
    loss = distill(
        logits,
        teacher_logits.clone(),
        y,
        epoch=epoch,
        student_features=student_maps,
        teacher_features=[m.clone() for m in teacher_maps] if features else None,
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
