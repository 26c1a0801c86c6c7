"""Datasets: read each raw on-disk format once and cache it as one uint8 array file."""

from __future__ import annotations

import contextlib
import functools
import os
import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdflow.config import DATASET_NAMES, check_registry
from kdflow.fileio import atomic_file

CIFAR_SIZE = 32
SVHN_SIZE = 32
TINY_SIZE = 64
DIGITS_SIZE = 32
TINY_DIR = "tiny-imagenet-200"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_MD5 = "90528d7ca1a48142e341f4ef8d21d0de"
CACHE_KEYS = ("train_x", "train_y", "test_x", "test_y", "classes")


class DatasetError(ValueError):
    """Raw or cached data is missing or not what it should be; the message names the file."""


@dataclass(frozen=True)
class ImageSet:
    """A whole dataset in memory: uint8 (N, 3, H, W) images and int64 labels per split."""

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[2])


def check_imageset(images: ImageSet, source: Path | str) -> ImageSet:
    """Return `images` if every array has the promised dtype, layout and label range."""
    classes = images.classes
    if not classes or not all(isinstance(c, str) for c in classes):
        raise DatasetError(f"{source}: class names must be a non-empty list of strings")
    sizes = set()
    for split in ("train", "test"):
        x, y = getattr(images, f"{split}_x"), getattr(images, f"{split}_y")
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4:
            raise DatasetError(f"{source}: {split}_x must be a uint8 (N, 3, H, W) array")
        if x.shape[1] != 3 or x.shape[2] != x.shape[3] or x.shape[0] == 0:
            raise DatasetError(f"{source}: {split}_x has shape {x.shape}, expected (N>0, 3, H, H)")
        if not x.flags.c_contiguous:
            raise DatasetError(f"{source}: {split}_x is not C-contiguous")
        if not isinstance(y, np.ndarray) or y.dtype != np.int64 or y.shape != (len(x),):
            raise DatasetError(f"{source}: {split}_y must be int64 of shape ({len(x)},)")
        _check_labels(y, len(classes), source)
        sizes.add(x.shape[2])
    if len(sizes) != 1:
        raise DatasetError(f"{source}: train and test image sizes differ: {sorted(sizes)}")
    return images


def _check_labels(labels: np.ndarray, num_classes: int, source: Path | str) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DatasetError(
            f"{source}: label out of range [0, {num_classes}): "
            f"found {int(labels.min())}..{int(labels.max())}"
        )


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise DatasetError(f"{path}: file is missing")
    return path


# ----------------------------------------------------------------------------- CIFAR


@dataclass(frozen=True)
class _CifarLayout:
    folder: str
    train: tuple[str, ...]
    test: tuple[str, ...]
    meta: str
    label_key: str
    names_key: str


_CIFAR = {
    "cifar10": _CifarLayout(
        folder="cifar-10-batches-py",
        train=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test=("test_batch",),
        meta="batches.meta",
        label_key="labels",
        names_key="label_names",
    ),
    "cifar100": _CifarLayout(
        folder="cifar-100-python",
        train=("train",),
        test=("test",),
        meta="meta",
        label_key="fine_labels",
        names_key="fine_label_names",
    ),
}


def _cifar_layout(name: str) -> _CifarLayout:
    if name not in _CIFAR:
        raise DatasetError(f"unknown CIFAR variant {name!r}; expected one of {sorted(_CIFAR)}")
    return _CIFAR[name]


def _load_pickle(path: Path) -> dict:
    _require_file(path)
    try:
        with path.open("rb") as f:
            # The batches were pickled by Python 2; latin1 maps their byte strings 1:1 to str.
            obj = pickle.load(f, encoding="latin1")
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError, IndexError) as exc:
        raise DatasetError(f"{path}: not a readable pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _read_cifar_batch(
    path: Path, label_key: str, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    batch = _load_pickle(path)
    for key in ("data", label_key):
        if key not in batch:
            raise DatasetError(f"{path}: key {key!r} is missing")
    data = np.asarray(batch["data"])
    pixels = 3 * CIFAR_SIZE * CIFAR_SIZE
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != pixels:
        raise DatasetError(
            f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, {pixels})"
        )
    labels = np.asarray(batch[label_key], dtype=np.int64)
    if labels.shape != (len(data),):
        raise DatasetError(f"{path}: {len(labels)} labels for {len(data)} images")
    _check_labels(labels, num_classes, path)
    # Rows are channel-planar (1024 R, 1024 G, 1024 B), so a reshape is already (N, C, H, W).
    return data.reshape(-1, 3, CIFAR_SIZE, CIFAR_SIZE), labels


def _read_cifar_split(
    base: Path, files: tuple[str, ...], layout: _CifarLayout, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    parts = [_read_cifar_batch(base / f, layout.label_key, num_classes) for f in files]
    x = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    y = np.concatenate([p[1] for p in parts])
    return x, y


def read_cifar(root: Path, name: str) -> ImageSet:
    """Read CIFAR-10 or CIFAR-100 from torchvision's extracted python pickles under `root`."""
    layout = _cifar_layout(name)
    base = Path(root) / layout.folder
    meta_path = base / layout.meta
    meta = _load_pickle(meta_path)
    if layout.names_key not in meta:
        raise DatasetError(f"{meta_path}: key {layout.names_key!r} is missing")
    classes = [str(c) for c in meta[layout.names_key]]
    train_x, train_y = _read_cifar_split(base, layout.train, layout, len(classes))
    test_x, test_y = _read_cifar_split(base, layout.test, layout, len(classes))
    return check_imageset(ImageSet(train_x, train_y, test_x, test_y, classes), base)


# ----------------------------------------------------------------------------- SVHN


def _read_svhn_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    _require_file(path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises many unrelated types for a damaged .mat file
        raise DatasetError(f"{path}: not a readable .mat file ({exc})") from exc
    for key in ("X", "y"):
        if key not in mat:
            raise DatasetError(f"{path}: variable {key!r} is missing")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (SVHN_SIZE, SVHN_SIZE, 3):
        raise DatasetError(f"{path}: 'X' is {x.dtype} {x.shape}, expected uint8 (32, 32, 3, N)")
    n = x.shape[3]
    if y.size != n or y.ndim not in (1, 2):
        raise DatasetError(f"{path}: 'y' has shape {y.shape}, expected ({n}, 1)")
    y = y.reshape(-1).astype(np.int64)
    if y.min() < 1 or y.max() > 10:
        raise DatasetError(f"{path}: label out of range 1..10: found {y.min()}..{y.max()}")
    # SVHN stores digit 0 as label 10; % 10 maps it to 0 and leaves 1..9 alone.
    # X is MATLAB (row, col, channel, index); move the index first and channels second.
    return np.ascontiguousarray(x.transpose(3, 2, 0, 1)), y % 10


def read_svhn(root: Path) -> ImageSet:
    """Read SVHN's cropped-digit train and test .mat files (the `extra` split is not used)."""
    root = Path(root)
    train_x, train_y = _read_svhn_split(root / "train_32x32.mat")
    test_x, test_y = _read_svhn_split(root / "test_32x32.mat")
    classes = [str(d) for d in range(10)]
    return check_imageset(ImageSet(train_x, train_y, test_x, test_y, classes), root)


# ----------------------------------------------------------------------------- TinyImageNet


def _read_val_annotations(path: Path) -> list[tuple[str, str]]:
    """(file name, wnid) per line of val_annotations.txt."""
    _require_file(path)
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        # A name with a path separator could move files outside val/; real names are plain.
        if len(fields) < 2 or not fields[0] or Path(fields[0]).name != fields[0]:
            raise DatasetError(f"{path}:{lineno}: expected 'file<TAB>wnid<TAB>box...'")
        pairs.append((fields[0], fields[1].strip()))
    if not pairs:
        raise DatasetError(f"{path}: no annotations")
    return pairs


def reorganize_tinyimagenet_val(root: Path) -> None:
    """Move val/images/*.JPEG into val/<wnid>/ as val_annotations.txt says.

    Each move is one atomic rename and a file already in place is skipped, so a run that was
    interrupted halfway is finished by simply running again.
    """
    val = Path(root) / TINY_DIR / "val"
    images = val / "images"
    for file, wnid in _read_val_annotations(val / "val_annotations.txt"):
        src, dst = images / file, val / wnid / file
        if src.is_file():
            dst.parent.mkdir(exist_ok=True)
            os.replace(src, dst)
        elif not dst.is_file():
            raise DatasetError(f"{src}: listed in val_annotations.txt but missing (also not {dst})")
    # An empty leftover images/ would look like an extra class folder to other tools.
    with contextlib.suppress(OSError):  # already gone, or a stray file left in it
        images.rmdir()


def _read_wnids(path: Path) -> list[str]:
    _require_file(path)
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not wnids:
        raise DatasetError(f"{path}: no class ids")
    if len(set(wnids)) != len(wnids):
        raise DatasetError(f"{path}: duplicate class ids")
    return wnids


def _class_names(words_path: Path, wnids: list[str]) -> list[str]:
    """Human-readable names from words.txt ('wnid<TAB>name, synonym, ...'); else the wnid."""
    if not words_path.is_file():
        return list(wnids)
    words = {}
    for line in words_path.read_text().splitlines():
        wnid, _, names = line.partition("\t")
        words[wnid.strip()] = names.split(",")[0].strip()
    return [words.get(w) or w for w in wnids]


def _decode_images(files: list[Path], size: int) -> np.ndarray:
    """Decode image files into one preallocated uint8 (N, 3, size, size) array."""
    from PIL import Image, UnidentifiedImageError

    # Preallocating keeps the peak at one copy (1.2 GB for the 100k training images).
    out = np.empty((len(files), 3, size, size), dtype=np.uint8)
    for i, path in enumerate(files):
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")  # some TinyImageNet images are grayscale
        except (UnidentifiedImageError, OSError) as exc:
            raise DatasetError(f"{path}: not a readable image ({exc})") from exc
        if rgb.size != (size, size):
            raise DatasetError(f"{path}: image is {rgb.size}, expected ({size}, {size})")
        out[i] = np.asarray(rgb).transpose(2, 0, 1)
    return out


def _labelled_files(dirs: list[Path]) -> tuple[list[Path], np.ndarray]:
    """Sorted *.JPEG of each directory, labelled with the directory's index."""
    files, labels = [], []
    for label, d in enumerate(dirs):
        if not d.is_dir():
            raise DatasetError(f"{d}: class directory is missing")
        found = sorted(d.glob("*.JPEG"))
        if not found:
            raise DatasetError(f"{d}: no *.JPEG images")
        files += found
        labels += [label] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def _check_val_matches_annotations(val: Path, files: list[Path]) -> None:
    wanted = {(wnid, file) for file, wnid in _read_val_annotations(val / "val_annotations.txt")}
    found = {(p.parent.name, p.name) for p in files}
    if wanted != found:
        missing, extra = sorted(wanted - found)[:3], sorted(found - wanted)[:3]
        raise DatasetError(
            f"{val}: class folders disagree with val_annotations.txt "
            f"(missing e.g. {missing}, unexpected e.g. {extra})"
        )


def read_tinyimagenet(root: Path) -> ImageSet:
    """Read TinyImageNet-200: train/<wnid>/images and the (reorganized) val/<wnid> folders."""
    base = Path(root) / TINY_DIR
    # Class order comes from wnids.txt only: val_annotations lists classes in another order.
    wnids = _read_wnids(base / "wnids.txt")
    val = base / "val"
    if (val / "images").exists():
        reorganize_tinyimagenet_val(root)
    train_files, train_y = _labelled_files([base / "train" / w / "images" for w in wnids])
    val_files, test_y = _labelled_files([val / w for w in wnids])
    _check_val_matches_annotations(val, val_files)
    images = ImageSet(
        train_x=_decode_images(train_files, TINY_SIZE),
        train_y=train_y,
        test_x=_decode_images(val_files, TINY_SIZE),
        test_y=test_y,
        classes=_class_names(base / "words.txt", wnids),
    )
    return check_imageset(images, base)


# ----------------------------------------------------------------------------- digits


def read_digits(test_fraction: float = 0.25, seed: int = 0) -> ImageSet:
    """scikit-learn's bundled 8x8 digits, upscaled to 3x32x32 uint8; needs no download."""
    import torch
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # Values are 0..16; stretch to the 0..255 range every other dataset uses.
    small = torch.from_numpy(digits.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)
    big = torch.nn.functional.interpolate(
        small, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False
    )
    gray = big.round().clamp(0, 255).to(torch.uint8).numpy()
    x = np.ascontiguousarray(np.repeat(gray, 3, axis=1))
    y = digits.target.astype(np.int64)
    # A fixed seed and stratification give every run (and every node) the same split.
    train_idx, test_idx = train_test_split(
        np.arange(len(y)), test_size=test_fraction, random_state=seed, stratify=y
    )
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    images = ImageSet(
        train_x=np.ascontiguousarray(x[train_idx]),
        train_y=y[train_idx],
        test_x=np.ascontiguousarray(x[test_idx]),
        test_y=y[test_idx],
        classes=[str(d) for d in range(10)],
    )
    return check_imageset(images, "sklearn load_digits")


# ----------------------------------------------------------------------------- downloads


def _fetch_cifar(root: Path, name: str) -> None:
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100}
    cls[name](str(root), download=True)


def _fetch_svhn(root: Path) -> None:
    import torchvision

    for split in ("train", "test"):
        # Only the missing split: the other may be large and already verified.
        if not (Path(root) / f"{split}_32x32.mat").is_file():
            torchvision.datasets.SVHN(str(root), split=split, download=True)


def _fetch_tinyimagenet(root: Path) -> None:
    import torchvision.datasets.utils

    torchvision.datasets.utils.download_and_extract_archive(TINY_URL, str(root), md5=TINY_MD5)


@dataclass(frozen=True)
class DatasetSpec:
    """How to get one dataset: the raw paths whose absence means 'download', and the reader."""

    read: Callable[[Path], ImageSet]
    required: Callable[[Path], list[Path]]
    fetch: Callable[[Path], None] | None


def _cifar_required(root: Path, name: str) -> list[Path]:
    layout = _CIFAR[name]
    return [Path(root) / layout.folder / f for f in (*layout.train, *layout.test, layout.meta)]


def _svhn_required(root: Path) -> list[Path]:
    return [Path(root) / f"{split}_32x32.mat" for split in ("train", "test")]


def _tiny_required(root: Path) -> list[Path]:
    base = Path(root) / TINY_DIR
    return [base / "wnids.txt", base / "train", base / "val" / "val_annotations.txt"]


DATASETS: dict[str, DatasetSpec] = {
    "cifar10": DatasetSpec(
        read=functools.partial(read_cifar, name="cifar10"),
        required=functools.partial(_cifar_required, name="cifar10"),
        fetch=functools.partial(_fetch_cifar, name="cifar10"),
    ),
    "cifar100": DatasetSpec(
        read=functools.partial(read_cifar, name="cifar100"),
        required=functools.partial(_cifar_required, name="cifar100"),
        fetch=functools.partial(_fetch_cifar, name="cifar100"),
    ),
    "svhn": DatasetSpec(read=read_svhn, required=_svhn_required, fetch=_fetch_svhn),
    "tinyimagenet": DatasetSpec(
        read=read_tinyimagenet, required=_tiny_required, fetch=_fetch_tinyimagenet
    ),
    "digits": DatasetSpec(read=lambda root: read_digits(), required=lambda root: [], fetch=None),
}


check_registry("dataset", DATASETS, DATASET_NAMES)  # kdflow.config owns the names


def dataset_names() -> list[str]:
    return list(DATASETS)


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name]


def missing_files(name: str, root: Path) -> list[Path]:
    """The raw files/folders of `name` that are not under `root` yet."""
    return [p for p in _spec(name).required(Path(root)) if not p.exists()]


def _missing_message(name: str, missing: list[Path]) -> str:
    dirs = sorted({str(p.parent) for p in missing})
    names = ", ".join(p.name for p in missing)
    return (
        f"{name}: raw files missing under {', '.join(dirs)}: {names}. Compute nodes have no "
        f"internet: run prepare for {name!r} with download allowed on a node with internet "
        f"(the login node) first."
    )


def download(name: str, root: Path) -> None:
    """Fetch the raw files of `name` into `root`, only if some are missing."""
    spec, root = _spec(name), Path(root)
    if not missing_files(name, root):
        return
    root.mkdir(parents=True, exist_ok=True)
    spec.fetch(root)
    still = missing_files(name, root)
    if still:
        raise DatasetError("download finished but " + _missing_message(name, still))


# ----------------------------------------------------------------------------- cache


def save_prepared(images: ImageSet, path: Path) -> None:
    """Write the cache atomically: a reader sees the old file or the whole new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:
        np.savez(
            f,
            train_x=images.train_x,
            train_y=images.train_y,
            test_x=images.test_x,
            test_y=images.test_y,
            # A str array, so loading never needs allow_pickle.
            classes=np.asarray(images.classes, dtype=str),
        )


def load_prepared(path: Path) -> ImageSet:
    """Read a cache written by `prepare`; a missing, truncated or corrupt one is a DatasetError."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: prepared dataset is missing; run prepare first")
    try:
        with np.load(path, allow_pickle=False) as z:
            absent = [k for k in CACHE_KEYS if k not in z.files]
            if absent:
                raise DatasetError(f"{path}: cache lacks {absent}; delete it and rerun prepare")
            arrays = {k: z[k] for k in CACHE_KEYS}
    except DatasetError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
        raise DatasetError(
            f"{path}: prepared dataset is corrupt or truncated ({exc}); delete it and rerun prepare"
        ) from exc
    classes = arrays.pop("classes")
    if classes.dtype.kind != "U" or classes.ndim != 1:
        raise DatasetError(f"{path}: 'classes' must be a 1-d string array")
    return check_imageset(ImageSet(**arrays, classes=classes.tolist()), path)


def prepare(name: str, raw_root: Path, out_path: Path, *, allow_download: bool = True) -> ImageSet:
    """Download `name` if allowed and needed, read it, and cache it at `out_path`."""
    spec, raw_root = _spec(name), Path(raw_root)
    missing = missing_files(name, raw_root)
    if missing:
        if not allow_download:
            raise DatasetError(_missing_message(name, missing))
        download(name, raw_root)
    images = check_imageset(spec.read(raw_root), raw_root)
    save_prepared(images, out_path)
    return images
