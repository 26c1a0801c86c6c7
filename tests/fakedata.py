"""Tiny datasets written in the exact raw on-disk formats of the real ones, for tests."""

from __future__ import annotations

import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

CIFAR10_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]


@dataclass
class Written:
    """What a writer put on disk, in the order and labels the reader should return."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    # TinyImageNet only: which images were saved as grayscale JPEGs, and the annotations.
    train_gray: np.ndarray | None = None
    test_gray: np.ndarray | None = None
    val_annotations: list[tuple[str, str]] = field(default_factory=list)


def _pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Protocol 2 like the original (Python 2) files; readers load them with encoding="latin1".
    with path.open("wb") as f:
        pickle.dump(obj, f, protocol=2)


def _random_images(rng: np.random.Generator, n: int, size: int = 32) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)


def write_cifar(
    root: Path, name: str, n_train: int = 10, n_test: int = 4, seed: int = 0
) -> Written:
    """Write cifar-10-batches-py/ or cifar-100-python/ pickles under `root`."""
    rng = np.random.default_rng(seed)
    num_classes = 10 if name == "cifar10" else 100
    train_x, test_x = _random_images(rng, n_train), _random_images(rng, n_test)
    train_y = rng.integers(0, num_classes, size=n_train).astype(np.int64)
    test_y = rng.integers(0, num_classes, size=n_test).astype(np.int64)
    train_y[0], test_y[0] = num_classes - 1, 0  # the extreme labels always occur

    def batch(x: np.ndarray, y: np.ndarray, label_key: str, title: str) -> dict:
        return {
            "batch_label": title,
            label_key: [int(v) for v in y],  # the real files hold plain lists
            "data": x.reshape(len(x), -1),  # channel-planar rows of 3072 bytes
            "filenames": [f"img_{i:05d}.png" for i in range(len(x))],
        }

    if name == "cifar10":
        base, classes = Path(root) / "cifar-10-batches-py", list(CIFAR10_NAMES)
        chunks = np.array_split(np.arange(n_train), 5)
        for i, idx in enumerate(chunks, start=1):
            title = f"training batch {i} of 5"
            _pickle(base / f"data_batch_{i}", batch(train_x[idx], train_y[idx], "labels", title))
        _pickle(base / "test_batch", batch(test_x, test_y, "labels", "testing batch 1 of 1"))
        meta = {"num_cases_per_batch": len(chunks[0]), "label_names": classes, "num_vis": 3072}
        _pickle(base / "batches.meta", meta)
    elif name == "cifar100":
        base, classes = Path(root) / "cifar-100-python", [f"fine_{i:03d}" for i in range(100)]
        for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
            obj = batch(x, y, "fine_labels", split)
            obj["coarse_labels"] = [int(v) // 5 for v in y]
            _pickle(base / split, obj)
        coarse = [f"coarse_{i:02d}" for i in range(20)]
        _pickle(base / "meta", {"fine_label_names": classes, "coarse_label_names": coarse})
    else:
        raise ValueError(f"unknown CIFAR variant {name!r}")
    return Written(train_x, train_y, test_x, test_y, classes)


def write_svhn(root: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> Written:
    """Write train_32x32.mat and test_32x32.mat (X uint8 (32, 32, 3, N), y (N, 1) in 1..10)."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = _random_images(rng, n)
        digits = rng.integers(0, 10, size=n).astype(np.int64)
        digits[0] = 0  # digit 0 is stored as label 10: make sure the test sees it
        raw_y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)
        # MATLAB layout: (row, col, channel, index).
        scipy.io.savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": raw_y})
        out[split] = (x, digits)
    classes = [str(d) for d in range(10)]
    return Written(*out["train"], *out["test"], classes)


def _smooth_image(rng: np.random.Generator, size: int = 64) -> np.ndarray:
    """A smooth (3, size, size) uint8 image: JPEG keeps it within a few grey levels."""
    ramp = np.linspace(0.0, 1.0, size)
    base = rng.integers(40, 160, size=3)[:, None, None]
    tilt = rng.integers(-60, 60, size=(2, 3))
    img = base + tilt[0][:, None, None] * ramp[None, :, None] + tilt[1][:, None, None] * ramp
    return np.clip(img, 0, 255).astype(np.uint8)


def _save_jpeg(path: Path, img: np.ndarray, gray: bool) -> np.ndarray:
    """Save (3, H, W) as JPEG (grayscale if asked); return the pixels a reader should expect."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if gray:
        g = img.mean(axis=0).astype(np.uint8)
        Image.fromarray(g).save(path, format="JPEG", quality=95)
        return np.repeat(g[None], 3, axis=0)
    Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(
        path, format="JPEG", quality=95
    )
    return img


def write_tinyimagenet(
    root: Path,
    n_classes: int = 3,
    n_train_per_class: int = 4,
    n_val_per_class: int = 2,
    grayscale_every: int = 3,
    seed: int = 0,
    words: bool = True,
) -> Written:
    """Write tiny-imagenet-200/ with wnids.txt (deliberately unsorted), words.txt, train/ and
    the raw, not yet reorganized val/images/ + val_annotations.txt (listed in another class
    order than wnids.txt). Every `grayscale_every`-th image of each split is a grayscale JPEG.
    """
    rng = np.random.default_rng(seed)
    base = Path(root) / "tiny-imagenet-200"
    base.mkdir(parents=True, exist_ok=True)
    # Descending ids: sorted order, wnids.txt order and val order all differ.
    wnids = [f"n{9_000_000 - 1_111_111 * i:08d}" for i in range(n_classes)]
    (base / "wnids.txt").write_text("".join(f"{w}\n" for w in wnids))
    if words:
        lines = [f"{w}\tthing {i}, synonym {i}, other" for i, w in enumerate(wnids)]
        lines.insert(0, "n00000001\tentity")  # words.txt covers far more ids than the 200
        (base / "words.txt").write_text("\n".join(lines) + "\n")

    counter = 0

    def next_is_gray() -> bool:
        nonlocal counter
        counter += 1
        return grayscale_every > 0 and counter % grayscale_every == 0

    train_x, train_y, train_gray = [], [], []
    for label, w in enumerate(wnids):
        saved = []
        for i in range(n_train_per_class):
            name = f"{w}_{i}.JPEG"  # unpadded like the real names, so _10 sorts before _2
            gray = next_is_gray()
            img = _save_jpeg(base / "train" / w / "images" / name, _smooth_image(rng), gray)
            saved.append((name, img, gray))
        boxes = [f"{name}\t0\t0\t63\t63" for name, _, _ in saved]
        (base / "train" / w / f"{w}_boxes.txt").write_text("\n".join(boxes) + "\n")
        for _, img, gray in sorted(saved, key=lambda t: t[0]):  # the reader's order
            train_x.append(img)
            train_y.append(label)
            train_gray.append(gray)

    # Val files are numbered across classes starting with the LAST wnid, as in the real data
    # where val_0 is not of wnids.txt's first class.
    by_class: dict[int, list[tuple[str, np.ndarray, bool]]] = {c: [] for c in range(n_classes)}
    annotations = []
    for _ in range(n_val_per_class):
        for label in reversed(range(n_classes)):
            name = f"val_{len(annotations)}.JPEG"
            gray = next_is_gray()
            pixels = _save_jpeg(base / "val" / "images" / name, _smooth_image(rng), gray)
            by_class[label].append((name, pixels, gray))
            annotations.append((name, wnids[label]))
    lines = [f"{f}\t{w}\t0\t0\t63\t63" for f, w in annotations]
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    # The unlabelled test split exists in the real archive; readers must ignore it.
    _save_jpeg(base / "test" / "images" / "test_0.JPEG", _smooth_image(rng), False)

    # Reader order: class order of wnids.txt, then sorted file name within a class.
    test_x, test_y, test_gray = [], [], []
    for label in range(n_classes):
        for _, pixels, gray in sorted(by_class[label], key=lambda t: t[0]):
            test_x.append(pixels)
            test_y.append(label)
            test_gray.append(gray)
    classes = [f"thing {i}" for i in range(n_classes)] if words else list(wnids)
    return Written(
        train_x=np.stack(train_x),
        train_y=np.asarray(train_y, dtype=np.int64),
        test_x=np.stack(test_x),
        test_y=np.asarray(test_y, dtype=np.int64),
        classes=classes,
        train_gray=np.asarray(train_gray),
        test_gray=np.asarray(test_gray),
        val_annotations=annotations,
    )


# ------------------------------------------------ kdflow's prepared format, for trainer tests


def write_prepared(path: Path, n_train: int = 96, n_test: int = 32, seed: int = 0) -> Path:
    """A 4-class dataset of random 16x16 images in kdflow's prepared format (what
    `prepare_dataset` writes): for tests of the trainer, which need the format, not the content."""
    from kdflow.data import ImageSet, save_prepared

    g = np.random.default_rng(seed)
    images = ImageSet(
        train_x=g.integers(0, 256, (n_train, 3, 16, 16), dtype=np.uint8),
        train_y=g.integers(0, 4, n_train).astype(np.int64),
        test_x=g.integers(0, 256, (n_test, 3, 16, 16), dtype=np.uint8),
        test_y=g.integers(0, 4, n_test).astype(np.int64),
        classes=["a", "b", "c", "d"],
    )
    save_prepared(images, path)
    return path


def train_params(data_path: Path, **overrides) -> dict:
    """The params of a TrainSpec (kdflow.trainer) for a quick run on write_prepared's data:
    one epoch of resnet8 with the CIFAR recipe's optimizer, on one CPU thread."""
    return {
        "dataset": "tiny",
        "data_path": str(data_path),
        "model": "resnet8",
        "seed": 0,
        "epochs": 1,
        "batch_size": 16,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "lr_milestones": [],
        "lr_decay": 0.1,
        "crop_padding": 2,
        "flip": True,
        "threads": 1,
        "device": "cpu",
        **overrides,
    }


# A sweep of one experiment (digits/pure/resnet8/seed0, one epoch on the CPU): the smallest
# config a workflow test can run or report on.
ONE_EXPERIMENT_SWEEP = """\
seeds: [0]
datasets:
  digits: {mem_mb: 2000, runtime: 10}
models: [resnet8]
pairs: []
methods:
  logit: {temperature: 4}
alphas: [0.5]
train: {epochs: 1, batch_size: 64, lr: 0.05, momentum: 0.9, weight_decay: 5.0e-4,
        lr_milestones: [], lr_decay: 0.1, crop_padding: 2, flip: false}
device: cpu
"""


def wait_stopped(pid: int, timeout: float = 60) -> None:
    """After SIGSTOP: wait until every thread of `pid` is stopped (state T), so that nothing of
    it writes any more (a thread inside a write stops when the call returns)."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue
        if states and all(state in ("T", "t") for state in states):
            return
        assert time.monotonic() < deadline, f"process {pid} did not stop: {states}"
        time.sleep(0.01)
