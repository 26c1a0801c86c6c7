"""Packs against separate KD runs, measured side by side in one run (the machines are shared
and noisy): the students of one (dataset, teacher, seed), 3 methods x 4 alphas, trained
together with one teacher forward per batch (kdflow.pack), or each alone with its own.

    python bench/packs.py [--images 2048] [--batch-size 64] [--rounds 3] [--device auto]
                          [--pairs resnet32x4:resnet8x4,wrn_40_2:wrn_16_2] [--alphas ...]
    python bench/packs.py --pairs wrn_40_2:wrn_16_2 --images 64 --batch-size 32 --rounds 1
                          # a smoke run on a CPU: 2 batches an epoch, a few minutes

For each pair it prints student-epochs per second of the pack and of the separate runs and
their ratio (goals: resnet32x4 -> resnet8x4 >= 2.2x, wrn_40_2 -> wrn_16_2 >= 1.55x), each
the median over interleaved rounds on the same batches and the same code the trainer runs
(`kdflow.trainer._train_students`); the teacher forward's share of a separate KD step and so
the most a pack can gain on this machine (it saves 11 of 12 teacher forwards and nothing
else; on a CPU a student's backward is slow and the ceiling low); and the peak memory of one
epoch of the pack against one KD run's: GPU memory on CUDA (peak allocated), else the peak
resident size of a fresh process that runs that one epoch (imports and data included).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import time
from pathlib import Path

import torch

from kdflow.loader import DeviceBatches, channel_stats
from kdflow.losses import build_method
from kdflow.models import build_model
from kdflow.trainer import Run, _teach, _train_students, choose_precision, pick_device, rng_state

METHODS = {  # the sweep's settings (config/experiments.yaml), DKD's beta per pair as mdistiller
    "logit": {"temperature": 4},
    "dkd": {"temperature": 4, "warmup": 20},
    "fitnet": {"hint_layer": 2, "regressor": "convreg", "hint_weight": 100},
}
DKD_BETA = {"resnet32x4": 8, "wrn_40_2": 6}
GOALS = {("resnet32x4", "resnet8x4"): 2.2, ("wrn_40_2", "wrn_16_2"): 1.55}


def batches(args, device) -> DeviceBatches:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 100, (args.images,), generator=g)
    mean, std = channel_stats(images)
    return DeviceBatches(
        images, labels, batch_size=args.batch_size, device=device, mean=mean, std=std,
        train=True, crop_padding=4, flip=True, channels_last=device.type == "cuda",
    )  # fmt: skip


def students(teacher_name, student_name, alphas, data, device, limit=None):
    """12 runs (3 methods x the alphas) of one teacher, as kdflow.trainer.build makes them
    (the first `limit` of them), each in its own random streams (as any run now)."""
    fmt = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    precision = choose_precision("auto", device)
    torch.manual_seed(0)
    teacher = build_model(teacher_name, 100).to(device, memory_format=fmt)
    teacher.eval().requires_grad_(False)
    runs = []
    for i, (method, settings) in enumerate(METHODS.items()):
        if method == "dkd":
            settings = {**settings, "beta": DKD_BETA.get(teacher_name, 8)}
        for j, alpha in enumerate(alphas):
            if limit is not None and len(runs) == limit:
                return runs
            torch.manual_seed(100 * i + j)
            model = build_model(student_name, 100).to(device, memory_format=fmt)
            distill = build_method(method, alpha=alpha, **settings)
            distill.setup(model, teacher, image_shape=(3, 32, 32))
            distill.to(device, memory_format=fmt)
            optimizer = torch.optim.SGD(
                [*model.parameters(), *distill.parameters()],
                lr=0.05,
                momentum=0.9,
                weight_decay=5e-4,
            )
            run = Run(data, data, model, teacher, distill, optimizer, None, precision, rng_state())
            run.scaler = precision.scaler()
            runs.append(run)
    return runs


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    start = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - start


def peak_memory(args, pair, alphas, pack: bool) -> float:
    """MiB at the peak of one epoch: of the pack (12 students), or of one KD run."""
    device = pick_device(args.device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        data = batches(args, device)
        runs = students(*pair, alphas, data, device, limit=None if pack else 1)
        _train_students(runs, 0, 0, None)
        sync()
        peak = torch.cuda.max_memory_allocated() / 2**20
        del runs, data
        return peak
    ctx = multiprocessing.get_context("spawn")  # a fresh process: ru_maxrss is its own
    with ctx.Pool(1) as pool:
        return pool.apply(_cpu_peak, (args, pair, alphas, pack))


def _cpu_peak(args, pair, alphas, pack) -> float:
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    data = batches(args, device)
    runs = students(*pair, alphas, data, device, limit=None if pack else 1)
    _train_students(runs, 0, 0, None)
    return _vm_hwm_mib()


def _vm_hwm_mib() -> float:
    """This process's peak resident size. Not ru_maxrss: Linux keeps that across the exec of
    a spawned process, so it would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="resnet32x4:resnet8x4,wrn_40_2:wrn_16_2")
    parser.add_argument("--alphas", default="0.25,0.5,0.75,0.95")
    parser.add_argument("--images", type=int, default=2048, help="training images an epoch")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (a job's count)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak memory runs")
    parser.add_argument(
        "--fitnet", default="2:convreg", help="hint_layer:regressor (kdflow 0.1's: -1:conv1x1_bn)"
    )
    args = parser.parse_args()
    hint, form = args.fitnet.split(":")
    METHODS["fitnet"].update(hint_layer=int(hint), regressor=form)

    torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    alphas = [float(a) for a in args.alphas.split(",")]
    pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
    data = batches(args, device)
    print(
        f"{device.type}, {args.threads} thread(s), {len(data)} batches of {args.batch_size} "
        f"an epoch, {3 * len(alphas)} students a pack, {args.rounds} round(s); "
        "student-epochs per second, median over interleaved rounds"
    )
    for pair in pairs:
        got, base, share, n = speeds(args, pair, alphas, data, device)
        goal = GOALS.get(pair)
        print(
            f"{pair[0]} -> {pair[1]}: pack {got:.3f}, separate {base:.3f} student-epochs/s: "
            f"{got / base:.2f}x" + (f" (goal >= {goal}x)" if goal else "")
        )
        # a pack saves n - 1 of n teacher forwards and nothing else: its ceiling here
        bound = 1 / (1 - share * (n - 1) / n)
        print(
            f"  the teacher's forward is {100 * share:.0f}% of a separate KD step here: "
            f"a pack can gain at most {bound:.2f}x on this machine"
        )
        if not args.no_memory:
            one = peak_memory(args, pair, alphas, pack=False)
            packed = peak_memory(args, pair, alphas, pack=True)
            kind = "GPU allocated" if device.type == "cuda" else "process RSS"
            print(
                f"  peak memory ({kind}): pack of {n} {packed:.0f} MiB, one KD run "
                f"{one:.0f} MiB: {packed / one:.2f}x"
            )


def speeds(args, pair, alphas, data, device) -> tuple[float, float, float, int]:
    """Student-epochs per second of the pack and of the separate runs (medians), the share of
    a separate KD step that is the teacher's forward (median), and the number of students."""
    pack = students(*pair, alphas, data, device)
    alone = students(*pair, alphas, data, device)
    teacher, n = pack[0].teacher, len(pack)

    def teacher_epoch(r):
        for x, _ in data.epoch(0, r):
            with pack[0].precision.autocast():
                _teach(teacher, x, True)

    # warm-up: allocator, cudnn autotuning, first touch of the data
    _train_students(pack, 0, 0, None)
    for run in alone:
        _train_students([run], 0, 0, None)
    together, separate, share = [], [], []
    for r in range(1, args.rounds + 1):
        together.append(n / timed(lambda r=r: _train_students(pack, 0, r, None)))
        seconds = timed(lambda r=r: [_train_students([run], 0, r, None) for run in alone])
        separate.append(n / seconds)
        share.append(timed(lambda r=r: teacher_epoch(r)) / (seconds / n))
    return (
        statistics.median(together),
        statistics.median(separate),
        statistics.median(share),
        n,
    )


if __name__ == "__main__":
    main()
