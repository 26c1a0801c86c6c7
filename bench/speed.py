"""Epoch time of the trainer's fast path against the usual alternatives, side by side in one run.

    python bench/speed.py [--model resnet8x4] [--images 50000] [--device auto] [--rounds 2]

Writes a CIFAR-100-shaped dataset in the real on-disk format (`cifar-100-python/` pickles, as
torchvision downloads it), reads it with kdflow's reader, and times one training epoch of the
same model and batch size for:
  1. the device-resident loader (uint8 on the device; crop/flip/normalize per batch there)
     against a torchvision DataLoader pipeline (PIL transforms, worker processes);
  2. bf16 autocast against fp32 (CUDA only; the CPU trains in fp32 so resume is bit-exact);
  3. a KD epoch (resnet32x4 teacher) against a pure one.
On a machine without a GPU use fewer images (e.g. --images 4096 --model resnet8): the ratios are
what matters, and they are printed side by side.
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdflow.data import read_cifar
from kdflow.loader import DeviceBatches, channel_stats
from kdflow.losses import build_method
from kdflow.models import build_model
from kdflow.trainer import Precision, Run, _train_students, choose_precision, pick_device, rng_state


def train_epoch(model, teacher, distill, optimizer, batches, seed, epoch, precision):
    """One epoch of one student through the trainer's own code (kdflow.trainer)."""
    run = Run(batches, batches, model, teacher, distill, optimizer, None, precision, rng_state())
    run.scaler = precision.scaler()
    return _train_students([run], seed, epoch)[0]


def write_cifar100(root: Path, n_train: int, n_test: int = 1000) -> None:
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    g = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        batch = {
            "data": g.integers(0, 256, (n, 3072), dtype=np.uint8),
            "fine_labels": g.integers(0, 100, n).tolist(),
            "coarse_labels": [0] * n,
        }
        (d / name).write_bytes(pickle.dumps(batch))
    meta = {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": ["c"]}
    (d / "meta").write_bytes(pickle.dumps(meta))


def dataloader_epoch(model, optimizer, images, labels, mean, std, batch_size, device, workers):
    """The common torchvision pipeline: PIL images, transforms in worker processes."""
    import torchvision.transforms as T
    from PIL import Image

    class Cifar(torch.utils.data.Dataset):
        transform = T.Compose(
            [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
             T.Normalize(mean.tolist(), std.tolist())]
        )  # fmt: skip

        def __len__(self):
            return len(labels)

        def __getitem__(self, i):
            image = Image.fromarray(images[i].transpose(1, 2, 0))
            return self.transform(image), int(labels[i])

    loader = torch.utils.data.DataLoader(
        Cifar(), batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    model.train()
    on_gpu = device.type == "cuda"
    for x, y in loader:
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet8x4")
    parser.add_argument("--teacher", default="resnet32x4")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = pick_device(args.device)
    on_gpu = device.type == "cuda"
    if on_gpu:
        torch.backends.cudnn.benchmark = True

    with tempfile.TemporaryDirectory() as tmp:
        write_cifar100(Path(tmp), args.images)
        data = read_cifar(Path(tmp), "cifar100")
    images, labels = torch.from_numpy(data.train_x), torch.from_numpy(data.train_y)
    mean, std = channel_stats(images)
    fmt = torch.channels_last if on_gpu else torch.contiguous_format

    def fresh(name):
        torch.manual_seed(0)
        model = build_model(name, 100).to(device, memory_format=fmt)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def batches(channels_last=on_gpu):
        return DeviceBatches(images, labels, batch_size=args.batch_size, device=device,
                             mean=mean, std=std, train=True, crop_padding=4, flip=True,
                             channels_last=channels_last)  # fmt: skip

    fast = batches()
    teacher, _ = fresh(args.teacher)
    teacher.eval().requires_grad_(False)
    kd = build_method("logit", alpha=0.9, temperature=4).to(device)
    auto, fp32 = choose_precision("auto", device), Precision("fp32", device.type, "bench")

    runs = {
        "device-resident loader": lambda m, o, r: train_epoch(m, None, None, o, fast, 0, r, auto),
        "torchvision DataLoader": lambda m, o, r: dataloader_epoch(
            m, o, data.train_x, data.train_y, mean, std, args.batch_size, device, args.workers
        ),
        "KD (teacher " + args.teacher + ")": lambda m, o, r: train_epoch(
            m, teacher, kd, o, fast, 0, r, auto
        ),
    }
    if on_gpu:
        runs["fp32 (no autocast)"] = lambda m, o, r: train_epoch(m, None, None, o, fast, 0, r, fp32)
    times = {name: [] for name in runs}
    for r in range(args.rounds + 1):  # round 0 warms up (cudnn autotuning, allocator, workers)
        for name, run in runs.items():
            model, optimizer = fresh(args.model)
            t = timed(lambda run=run, m=model, o=optimizer, r=r: run(m, o, r))
            if r:
                times[name].append(t)
    med = {name: statistics.median(t) for name, t in times.items()}
    fast_t = med["device-resident loader"]
    print(f"device {device}; {args.model}, batch {args.batch_size}, {len(labels):,} images, "
          f"{torch.get_num_threads()} threads, {args.workers} DataLoader workers; "
          f"median of {args.rounds}")  # fmt: skip
    print(f"{'epoch':<36}{'seconds':>10}{'images/s':>11}{'vs fast path':>14}")
    for name, t in med.items():
        print(f"{name:<36}{t:>10.2f}{len(labels) / t:>11.0f}{t / fast_t:>13.2f}x")
    if not on_gpu:
        print("(no GPU: bf16 against fp32 is measured on CUDA only; the CPU trains in fp32)")


if __name__ == "__main__":
    main()
