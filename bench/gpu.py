"""GPU acceptance in one command (a few minutes): what `precision: auto` does on this machine.

    python bench/gpu.py [--images N] [--batch-size 64] [--rounds N] [--parity-steps N]
                        [--device auto] [--threads 1]
    # defaults: on a GPU 4096 images, 3 rounds, 30 parity steps; on the CPU 64, 1 and 10

Prints, measured with the trainer's own code (kdflow.trainer: build, _train_students, _step):
  1. which precision `auto` chose here and why (kdflow.trainer.choose_precision);
  2. images/s of a resnet8x4 training epoch under each precision the device runs;
  3. images/s and student-epochs/s of a pack of 12 (resnet32x4 -> resnet8x4, logit, dkd and
     fitnet at 4 alphas each, one teacher forward per batch) under each precision;
  4. loss parity: the same resnet8x4, weights and batches trained --parity-steps steps in fp16
     (with its gradient scaler) and in bf16 against fp32, the losses' largest and mean relative
     difference.
On the CPU it runs too (small sizes), and says what it cannot measure there: tensor cores,
hence any speed of fp16 or bf16 that means something for a GPU (CPU autocast is emulation);
the parity check does run, through CPU autocast, as a check of the code path. Figures are
medians of interleaved rounds on a shared machine: noisy; nothing here is asserted.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from packs import timed  # bench/ is on the path of a script run from there

from kdflow.config import TrainSpec
from kdflow.data import ImageSet, save_prepared
from kdflow.models import build_model
from kdflow.trainer import (
    Precision,
    _step,
    _teach,
    _train_students,
    build,
    build_data,
    choose_precision,
    pick_device,
    stream,
)

METHODS = {"logit": {}, "dkd": {"beta": 8}, "fitnet": {}}  # the published settings
ALPHAS = (0.25, 0.5, 0.75, 1.0)


def precisions(device: torch.device) -> tuple[list[str], list[str]]:
    """The precisions to measure here, and what is left out and why."""
    if device.type != "cuda":
        return ["fp32"], ["bf16 and fp16: the CPU has no tensor cores; CPU autocast is no measure"]
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) >= (8, 0):
        return ["fp32", "bf16", "fp16"], []
    return ["fp32", "fp16"], [f"bf16: compute capability {major}.{minor} has no bf16 tensor cores"]


def spec_params(data_path: str, args, **kw) -> dict:
    return {
        "dataset": "bench", "data_path": data_path, "model": "resnet8x4", "seed": 0,
        "epochs": 1, "batch_size": args.batch_size, "lr": 0.05, "momentum": 0.9,
        "weight_decay": 5e-4, "lr_milestones": [], "lr_decay": 0.1, "crop_padding": 4,
        "flip": True, "threads": args.threads, "device": args.device, **kw,
    }  # fmt: skip


def students(data_path, args, data, teacher, precision) -> list:
    """The 12 runs of a pack, as kdflow.pack builds them (the teacher's weights: random)."""
    runs = []
    for method, settings in METHODS.items():
        for alpha in ALPHAS:
            kd = {"method": method, "alpha": alpha, "method_settings": settings}
            kd.update(teacher="resnet32x4", teacher_dir="(random weights)")
            spec = TrainSpec.from_params(spec_params(data_path, args, **kd))
            runs.append(build(spec, data, teacher, precision))
    return runs


def speeds(data_path, args, data, teacher, precision) -> tuple[float, float, float, int]:
    """Median seconds of an epoch of resnet8x4 alone, of the pack, of the teacher's forwards
    alone; and the pack's size."""
    alone_spec = TrainSpec.from_params(spec_params(data_path, args))
    single = [build(alone_spec, data, None, precision)]  # resnet8x4 alone
    pack = students(data_path, args, data, teacher, precision)
    _train_students(single, 0, 0)  # warm-up: allocator, cuDNN autotuning
    _train_students(pack, 0, 0)

    def teach(r):
        for x, _ in data.train_batches.epoch(0, r):
            with precision.autocast():
                _teach(teacher, x, True)

    alone, packed, taught = [], [], []
    for r in range(1, args.rounds + 1):
        alone.append(timed(lambda r=r: _train_students(single, 0, r)))
        packed.append(timed(lambda r=r: _train_students(pack, 0, r)))
        taught.append(timed(lambda r=r: teach(r)))
    return (*map(statistics.median, (alone, packed, taught)), len(pack))


def parity(data_path, args, data, name: str) -> tuple[float, float, float]:
    """(largest, mean relative loss difference against fp32, last fp32 loss) over the steps."""
    spec = TrainSpec.from_params(spec_params(data_path, args))
    losses = {}
    for which in ("fp32", name):
        run = build(spec, data, None, Precision(which, data.device.type, "bench"))
        run.model.train()
        out, batches = [], iter(())
        for step in range(args.parity_steps):
            x_y = next(batches, None)
            if x_y is None:  # the next epoch's batches, the same for both precisions
                batches = data.train_batches.epoch(0, step)
                x_y = next(batches)
            totals = (torch.zeros((), device=data.device), torch.zeros((), device=data.device))
            with stream(run):
                _step(run, *x_y, None, 0, totals)
            out.append(totals[0].item() / len(x_y[1]))
        losses[which] = np.array(out)
    relative = np.abs(losses[name] - losses["fp32"]) / np.abs(losses["fp32"])
    return float(relative.max()), float(relative.mean()), float(losses["fp32"][-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, help="training images an epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--parity-steps", type=int)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    args = parser.parse_args()
    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    n = args.images or (4096 if on_gpu else 64)
    args.rounds = args.rounds or (3 if on_gpu else 1)
    args.parity_steps = args.parity_steps or (30 if on_gpu else 10)
    auto = choose_precision("auto", device)
    where = torch.cuda.get_device_name(device) if on_gpu else "the CPU"
    print(f"device: {where}; torch {torch.__version__}")
    print(f"precision auto: {auto.name} ({auto.reason})")
    measured, left_out = precisions(device)
    for reason in left_out:
        print(f"not measured here: {reason}")

    with tempfile.TemporaryDirectory() as tmp:
        g = np.random.default_rng(0)
        images = ImageSet(
            train_x=g.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
            train_y=g.integers(0, 100, n).astype(np.int64),
            test_x=g.integers(0, 256, (args.batch_size, 3, 32, 32), dtype=np.uint8),
            test_y=g.integers(0, 100, args.batch_size).astype(np.int64),
            classes=[str(i) for i in range(100)],
        )
        data_path = str(Path(tmp) / "prepared.npz")
        save_prepared(images, Path(data_path))
        data = build_data(TrainSpec.from_params(spec_params(data_path, args)))
        images_per_epoch = data.train_batches.num_images
        print(
            f"{images_per_epoch} images an epoch in batches of {args.batch_size}, 32x32, 100 "
            f"classes; median of {args.rounds} round(s) after a warm-up; noisy figures"
        )
        teacher = build_model("resnet32x4", 100).to(device, memory_format=data.memory_format)
        teacher.eval().requires_grad_(False)

        print(f"\n{'precision':<10}{'resnet8x4 img/s':>18}{'pack of 12 img/s':>20}"
              f"{'student-epochs/s':>19}{'teacher fwd img/s':>19}")  # fmt: skip
        for name in measured:
            precision = Precision(name, device.type, "bench")
            t1, tp, tt, k = speeds(data_path, args, data, teacher, precision)
            per_epoch = images_per_epoch
            print(
                f"{name:<10}{per_epoch / t1:>18.0f}{k * per_epoch / tp:>20.0f}"
                f"{k / tp:>19.3f}{per_epoch / tt:>19.0f}"
            )
            if on_gpu:
                torch.cuda.empty_cache()

        print(f"\nloss parity against fp32: resnet8x4, {args.parity_steps} SGD steps from the "
              "same weights and batches")  # fmt: skip
        for name in ("bf16", "fp16"):
            if on_gpu and name not in measured:
                print(f"  {name}: skipped (not native here)")
                continue
            worst, mean, last = parity(data_path, args, data, name)
            kind = "" if on_gpu else " (CPU autocast)"
            print(
                f"  {name}{kind}: loss differs from fp32's by at most {100 * worst:.2f}% "
                f"(mean {100 * mean:.2f}%; fp32's last loss {last:.4f})"
            )
        if not on_gpu:
            print(
                "\nOn the CPU: no GPU speed is measured (tensor cores, cuDNN's fp16 and bf16 "
                "kernels); run this on a GPU node: python bench/gpu.py"
            )


if __name__ == "__main__":
    main()
