"""Train one experiment (pure baseline or distilled student); resume exactly after a kill."""

from __future__ import annotations

import csv
import io
import logging
import os
import random
import socket
import time
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
            "pbs_job_id": os.environ.get("PBS_JOBID", previous.get("pbs_job_id")),
            "updated_at": time.time(),
            **fields_,
        }
        record.setdefault("started_at", record["updated_at"])
        atomic_write_json(self.status, record)


class AlreadyOwned(RuntimeError):
    """Another live PBS job is training this experiment; a second writer would corrupt it."""


def check_owner(files: ExperimentFiles, qstat=None) -> None:
    """Refuse to start where another live PBS job owns the experiment.

    The executor never submits two jobs for one target; this guards against everything else
    (a job started by hand, a second controller in another directory). The owner is the job
    id the last trainer wrote into status.json. If the scheduler cannot be asked, training
    goes ahead: an unanswered qstat must not stall a sweep.
    """
    status = read_json(files.status) or {}
    owner, me = status.get("pbs_job_id"), os.environ.get("PBS_JOBID")
    if status.get("status") != "in_progress" or not owner or owner == me:
        return
    from snakemake_executor_plugin_pbs.status import Qstat, StatusUnknown, lookup

    try:
        info = lookup((qstat or Qstat(timeout=60)).query([owner]), owner)
    except (StatusUnknown, OSError) as exc:
        log.warning("cannot ask PBS whether job %s still owns %s: %s", owner, files.dir, exc)
        return
    if info is not None and info.alive:
        raise AlreadyOwned(
            f"{files.dir} is being trained by PBS job {owner} (state {info.state}); this job "
            f"({me or 'not a PBS job'}) will not write beside it. qdel one of them, or wait."
        )


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


def train(spec: TrainSpec, out_dir: str | Path, log_path: str | Path | None = None) -> dict:
    """Train `spec` into `out_dir`, resuming from its checkpoint; returns the final metrics."""
    files = ExperimentFiles(out_dir)
    files.dir.mkdir(parents=True, exist_ok=True)
    check_owner(files)
    files.remove_partial_writes()
    _setup_logging(log_path)
    torch.set_num_threads(spec.threads)
    device = pick_device(spec.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True

    data = load_prepared(Path(spec.data_path))
    train_x, test_x = torch.from_numpy(data.train_x), torch.from_numpy(data.test_x)
    mean, std = channel_stats(train_x)
    batches = dict(device=device, mean=mean, std=std, channels_last=on_gpu)
    train_batches = DeviceBatches(
        train_x,
        torch.from_numpy(data.train_y),
        batch_size=spec.batch_size,
        train=True,
        crop_padding=spec.crop_padding,
        flip=spec.flip,
        **batches,
    )
    test_batches = DeviceBatches(
        test_x,
        torch.from_numpy(data.test_y),
        batch_size=spec.eval_batch_size,
        train=False,
        **batches,
    )

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
        distill.setup(model, teacher, image_shape=tuple(train_x.shape[1:]))
        distill.to(device, memory_format=memory_format)
        trainable += distill.parameters()  # e.g. FitNet's regressor, trained with the student
    optimizer = torch.optim.SGD(
        trainable,
        lr=spec.lr,
        momentum=spec.momentum,
        weight_decay=spec.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.MultiStepLR(
        optimizer, milestones=list(spec.lr_milestones), gamma=spec.lr_decay
    )

    history: list[dict[str, Any]] = []
    best_acc, best_epoch, start_epoch = -1.0, -1, 0
    state = load_checkpoint(files.checkpoint)
    if state is not None:
        _check_same_experiment(spec, state, files.checkpoint)
        model.load_state_dict(state["model"])
        if distill is not None:
            distill.load_state_dict(state.get("method", {}))
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        history = state["history"]
        best_acc, best_epoch = state["best_acc"], state["best_epoch"]
        start_epoch = state["epoch"] + 1
        if state.get("threads") != spec.threads:
            log.warning(
                "resuming with %d threads where the run started with %s: the result will not "
                "be bit-identical to an uninterrupted run",
                spec.threads,
                state.get("threads"),
            )
        files.write_history(history)  # the csv may be an epoch ahead of the checkpoint
        log.info("resumed %s from epoch %d", files.dir, start_epoch)
    files.write_status(spec, "in_progress", epoch=start_epoch, best_acc=max(best_acc, 0.0))

    for epoch in range(start_epoch, spec.epochs):
        started = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_acc = _train_epoch(
            model, teacher, distill, optimizer, train_batches, spec.seed, epoch, on_gpu
        )
        train_seconds = time.perf_counter() - started
        test_loss, test_acc = evaluate(model, test_batches, on_gpu)
        scheduler.step()
        history.append(
            {
                "epoch": epoch,
                "train_loss": train_loss,
                "train_acc": train_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "lr": lr,
                "epoch_seconds": time.perf_counter() - started,
                "images_per_s": train_batches.num_images / train_seconds,
            }
        )
        # best.pth before the checkpoint: a kill between the two replays this epoch, which
        # rewrites best.pth identically; the other order could leave best.pth an epoch stale.
        if test_acc > best_acc:
            best_acc, best_epoch = test_acc, epoch
            save_verified(
                files.best,
                {
                    "model": model.state_dict(),
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
                "model": model.state_dict(),
                "method": distill.state_dict() if distill is not None else {},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "history": history,
                "best_acc": best_acc,
                "best_epoch": best_epoch,
            },
        )
        files.write_history(history)
        files.write_status(
            spec,
            "in_progress",
            epoch=epoch + 1,
            best_acc=best_acc,
            last_acc=test_acc,
            epoch_seconds=history[-1]["epoch_seconds"],
        )
        log.info(
            "epoch %d/%d loss %.4f train %.2f%% test %.2f%% (best %.2f%%) %.1fs %.0f img/s",
            epoch + 1,
            spec.epochs,
            train_loss,
            train_acc,
            test_acc,
            best_acc,
            history[-1]["epoch_seconds"],
            history[-1]["images_per_s"],
        )

    metrics = {
        **spec.identity,
        "epochs": spec.epochs,
        "best_acc": best_acc,
        "best_epoch": best_epoch,
        "final_acc": history[-1]["test_acc"],
        "train_seconds": sum(row["epoch_seconds"] for row in history),
    }
    atomic_write_json(files.metrics, metrics)
    files.write_status(spec, "completed", epoch=spec.epochs, best_acc=best_acc)
    atomic_write_text(files.completed, f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
    return metrics


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
