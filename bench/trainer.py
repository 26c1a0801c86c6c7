"""Trainer overheads, measured side by side in one run (the machines are shared and noisy).

    python bench/trainer.py [--model resnet8] [--images 2048] [--rounds 5] [--device auto]

Prints three ratios, each the median over interleaved rounds on the same model and batches:
  1. trainer images/s over a minimal hand-written PyTorch loop           (goal >= 0.95)
  2. a KD step over a student step plus a teacher forward                 (goal <= 1.05)
  3. checkpoint save time as a share of one CIFAR epoch (50,000 images)   (goal <= 2 %)
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdflow.checkpoint import save_checkpoint
from kdflow.loader import DeviceBatches, channel_stats
from kdflow.losses import LogitKD
from kdflow.models import build_model
from kdflow.trainer import Run, _train_students, choose_precision, pick_device, rng_state


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def train_epoch(model, teacher, distill, optimizer, batches, seed, epoch, precision):
    """One epoch of one student through the trainer's own code (kdflow.trainer), as a run
    alone trains: its random streams swapped in around each step."""
    run = Run(batches, batches, model, teacher, distill, optimizer, None, precision, rng_state())
    run.scaler = precision.scaler()
    return _train_students([run], seed, epoch)[0]


def minimal_loop(model, optimizer, xs, ys, on_gpu):
    """What a person writes first: pre-normalized batches, forward, loss, backward, step."""
    model.train()
    for x, y in zip(xs, ys, strict=True):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@torch.inference_mode()
def teacher_forward(teacher, batches, on_gpu):
    for x, _ in batches.epoch(0, 0):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            teacher(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet8")
    parser.add_argument("--teacher", default="resnet20")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    precision = choose_precision("auto", device)
    fmt = torch.channels_last if on_gpu else torch.contiguous_format
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (args.images,), generator=g)
    mean, std = channel_stats(images)
    batches = DeviceBatches(
        images, labels, batch_size=args.batch_size, device=device, mean=mean, std=std,
        train=True, crop_padding=4, flip=True, channels_last=on_gpu,
    )  # fmt: skip
    # the minimal loop gets its batches ready-made: normalized, on the device, no augmentation
    order = torch.randperm(args.images, generator=g)[: len(batches) * args.batch_size]
    xs = [
        ((images[i].float() / 255 - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1))
        .to(device)
        .contiguous(memory_format=fmt)
        for i in order.split(args.batch_size)
    ]
    ys = [labels[i].to(device) for i in order.split(args.batch_size)]

    def fresh(name):
        torch.manual_seed(0)
        model = build_model(name, 100).to(device, memory_format=fmt)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)

    student, opt_s = fresh(args.model)
    plain, opt_p = fresh(args.model)
    kd_student, opt_k = fresh(args.model)
    teacher, _ = fresh(args.teacher)
    teacher.eval().requires_grad_(False)
    kd = LogitKD(alpha=0.9, temperature=4)

    # warm-up: allocator, cudnn autotuning, first-touch of the data
    minimal_loop(plain, opt_p, xs[:2], ys[:2], on_gpu)
    train_epoch(student, None, None, opt_s, batches, 0, 0, precision)

    rows = {"trainer": [], "minimal": [], "kd": [], "student": [], "teacher": [], "save": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "checkpoint.pth"
        for r in range(args.rounds):
            rows["minimal"].append(timed(lambda: minimal_loop(plain, opt_p, xs, ys, on_gpu)))
            rows["trainer"].append(
                timed(lambda r=r: train_epoch(student, None, None, opt_s, batches, 0, r, precision))
            )
            rows["teacher"].append(timed(lambda: teacher_forward(teacher, batches, on_gpu)))
            rows["kd"].append(
                timed(
                    lambda r=r: train_epoch(
                        kd_student, teacher, kd, opt_k, batches, 0, r, precision
                    )
                )
            )
            rows["student"].append(rows["trainer"][-1])
            state = {
                "epoch": r,
                "model": student.state_dict(),
                "optimizer": opt_s.state_dict(),
                "rng": rng_state(),
                "history": [{"epoch": e, "test_acc": 0.0} for e in range(240)],
            }
            rows["save"].append(timed(lambda state=state: save_checkpoint(path, state)))

    med = {k: statistics.median(v) for k, v in rows.items()}
    n = batches.num_images
    trainer_ips, minimal_ips = n / med["trainer"], n / med["minimal"]
    kd_ratio = med["kd"] / (med["student"] + med["teacher"])
    cifar_epoch = 50_000 / trainer_ips
    save_share = med["save"] / cifar_epoch

    print(f"device {device}, model {args.model}, teacher {args.teacher}, batch {args.batch_size},")
    print(
        f"{n} images per epoch, {torch.get_num_threads()} threads, median of {args.rounds} rounds"
    )
    print()
    print(f"{'measure':<44}{'value':>12}{'goal':>10}")
    print(f"{'trainer images/s':<44}{trainer_ips:>12.0f}")
    print(f"{'minimal loop images/s':<44}{minimal_ips:>12.0f}")
    print(f"{'  ratio trainer / minimal':<44}{trainer_ips / minimal_ips:>12.3f}{'>= 0.95':>10}")
    print(f"{'KD step (s/epoch)':<44}{med['kd']:>12.3f}")
    print(
        f"{'student step + teacher forward (s/epoch)':<44}{med['student'] + med['teacher']:>12.3f}"
    )
    print(f"{'  ratio KD / (student + teacher)':<44}{kd_ratio:>12.3f}{'<= 1.05':>10}")
    print(f"{'checkpoint save (s)':<44}{med['save']:>12.3f}")
    print(f"{'CIFAR epoch at trainer speed (s)':<44}{cifar_epoch:>12.1f}")
    print(f"{'  save share of an epoch':<44}{100 * save_share:>11.2f}%{'<= 2 %':>10}")


if __name__ == "__main__":
    main()
