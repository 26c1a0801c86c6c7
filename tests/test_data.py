"""Dataset readers, TinyImageNet val reorganization, downloads and the prepared cache."""

from __future__ import annotations

import dataclasses
import os
import pickle
import re
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from fakedata import write_cifar, write_svhn, write_tinyimagenet

from kdflow import data
from kdflow.data import DatasetError, ImageSet


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to download, through torchvision or a raw socket, fails the test."""
    import torchvision.datasets.cifar
    import torchvision.datasets.svhn
    import torchvision.datasets.utils

    def refuse(*args, **kwargs):
        raise AssertionError(f"tests must not download: {args} {kwargs}")

    for module, attr in [
        (torchvision.datasets.utils, "download_url"),
        (torchvision.datasets.utils, "download_and_extract_archive"),
        (torchvision.datasets.cifar, "download_and_extract_archive"),
        (torchvision.datasets.svhn, "download_url"),
    ]:
        monkeypatch.setattr(module, attr, refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def assert_layout(images: ImageSet, size: int) -> None:
    for x, y in ((images.train_x, images.train_y), (images.test_x, images.test_y)):
        assert x.dtype == np.uint8 and x.flags.c_contiguous
        assert x.shape == (len(y), 3, size, size)
        assert y.dtype == np.int64
    assert images.image_size == size


def assert_same(a: ImageSet, b) -> None:
    np.testing.assert_array_equal(a.train_x, b.train_x)
    np.testing.assert_array_equal(a.train_y, b.train_y)
    np.testing.assert_array_equal(a.test_x, b.test_x)
    np.testing.assert_array_equal(a.test_y, b.test_y)
    assert a.classes == b.classes


# ----------------------------------------------------------------------------- CIFAR / SVHN


@pytest.mark.parametrize(("name", "num_classes"), [("cifar10", 10), ("cifar100", 100)])
def test_cifar_roundtrip_is_exact(tmp_path, name, num_classes):
    written = write_cifar(tmp_path, name, n_train=11, n_test=3)
    images = data.read_cifar(tmp_path, name)
    assert_layout(images, 32)
    assert_same(images, written)
    assert images.num_classes == num_classes


def test_cifar_wrong_data_shape_names_the_file(tmp_path):
    write_cifar(tmp_path, "cifar10")
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with bad.open("rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch["data"] = batch["data"][:, :3000]
    with bad.open("wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(DatasetError, match=r"data_batch_3.*\(N, 3072\)"):
        data.read_cifar(tmp_path, "cifar10")


def test_cifar_label_out_of_range_names_the_file(tmp_path):
    write_cifar(tmp_path, "cifar100")
    bad = tmp_path / "cifar-100-python" / "test"
    with bad.open("rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch["fine_labels"][1] = 100
    with bad.open("wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + ".*out of range"):
        data.read_cifar(tmp_path, "cifar100")


def test_cifar_missing_or_garbled_file_is_named(tmp_path):
    write_cifar(tmp_path, "cifar10")
    base = tmp_path / "cifar-10-batches-py"
    (base / "data_batch_5").unlink()
    with pytest.raises(DatasetError, match=r"data_batch_5: file is missing"):
        data.read_cifar(tmp_path, "cifar10")
    (base / "data_batch_5").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError, match=r"data_batch_5: not a readable pickle"):
        data.read_cifar(tmp_path, "cifar10")


def test_svhn_roundtrip_maps_label_10_to_digit_0(tmp_path):
    written = write_svhn(tmp_path, n_train=12, n_test=5)
    images = data.read_svhn(tmp_path)
    assert_layout(images, 32)
    assert_same(images, written)
    assert images.train_y[0] == 0 and images.classes == [str(d) for d in range(10)]
    assert images.train_y.max() <= 9


def test_svhn_wrong_shape_names_the_file(tmp_path):
    import scipy.io

    write_svhn(tmp_path)
    bad = tmp_path / "test_32x32.mat"
    y = np.ones((2, 1), dtype=np.uint8)
    scipy.io.savemat(bad, {"X": np.zeros((32, 32, 1, 2), dtype=np.uint8), "y": y})
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + r".*\(32, 32, 3, N\)"):
        data.read_svhn(tmp_path)


# ----------------------------------------------------------------------------- TinyImageNet


def val_layout(root: Path) -> list[str]:
    val = root / "tiny-imagenet-200" / "val"
    return sorted(str(p.relative_to(val)) for p in val.rglob("*"))


def assert_jpeg_close(images: ImageSet, written) -> None:
    for got, want in ((images.train_x, written.train_x), (images.test_x, written.test_x)):
        diff = np.abs(got.astype(np.int16) - want.astype(np.int16))
        assert diff.mean() < 3 and diff.max() < 40  # JPEG is lossy; smooth images survive


def test_tinyimagenet_reads_in_wnids_order(tmp_path):
    written = write_tinyimagenet(tmp_path, n_classes=3, n_train_per_class=4, n_val_per_class=2)
    wnids = (tmp_path / "tiny-imagenet-200" / "wnids.txt").read_text().split()
    # The fixture is only a test of the class order if val lists the classes differently.
    assert written.val_annotations[0][1] != wnids[0]
    assert wnids != sorted(wnids)

    images = data.read_tinyimagenet(tmp_path)
    assert_layout(images, 64)
    np.testing.assert_array_equal(images.train_y, written.train_y)
    np.testing.assert_array_equal(images.test_y, written.test_y)
    assert images.classes == ["thing 0", "thing 1", "thing 2"]
    assert_jpeg_close(images, written)
    # Grayscale JPEGs come back as three identical channels.
    assert written.train_gray.any() and written.test_gray.any()
    for x, gray in ((images.train_x, written.train_gray), (images.test_x, written.test_gray)):
        for img in x[gray]:
            assert (img[0] == img[1]).all() and (img[1] == img[2]).all()
        assert any(not (img[0] == img[1]).all() for img in x[~gray])


def test_tinyimagenet_without_words_uses_wnids(tmp_path):
    write_tinyimagenet(tmp_path, n_classes=2, n_train_per_class=1, n_val_per_class=1, words=False)
    wnids = (tmp_path / "tiny-imagenet-200" / "wnids.txt").read_text().split()
    assert data.read_tinyimagenet(tmp_path).classes == wnids


def test_reorganize_val_is_idempotent(tmp_path):
    written = write_tinyimagenet(tmp_path)
    data.reorganize_tinyimagenet_val(tmp_path)
    layout = val_layout(tmp_path)
    expected = sorted(f"{w}/{f}" for f, w in written.val_annotations)
    assert [p for p in layout if p.endswith(".JPEG")] == expected
    assert "images" not in layout
    data.reorganize_tinyimagenet_val(tmp_path)
    assert val_layout(tmp_path) == layout


def test_reorganize_val_resumes_after_partial_moves(tmp_path):
    whole, partial = tmp_path / "whole", tmp_path / "partial"
    write_tinyimagenet(whole)
    written = write_tinyimagenet(partial)
    data.reorganize_tinyimagenet_val(whole)
    # A run killed halfway: the first half moved, the rest still in val/images.
    val = partial / "tiny-imagenet-200" / "val"
    for f, w in written.val_annotations[: len(written.val_annotations) // 2]:
        (val / w).mkdir(exist_ok=True)
        os.replace(val / "images" / f, val / w / f)
    data.reorganize_tinyimagenet_val(partial)
    assert val_layout(partial) == val_layout(whole)
    assert_same(data.read_tinyimagenet(partial), data.read_tinyimagenet(whole))


def test_reorganize_val_names_a_missing_image(tmp_path):
    written = write_tinyimagenet(tmp_path)
    lost = written.val_annotations[-1][0]
    (tmp_path / "tiny-imagenet-200" / "val" / "images" / lost).unlink()
    with pytest.raises(DatasetError, match=re.escape(lost) + ".*missing"):
        data.reorganize_tinyimagenet_val(tmp_path)


def test_tinyimagenet_wrong_image_size_names_the_file(tmp_path):
    from PIL import Image

    write_tinyimagenet(tmp_path, n_classes=2, n_train_per_class=2, n_val_per_class=1)
    wnid = (tmp_path / "tiny-imagenet-200" / "wnids.txt").read_text().split()[1]
    bad = tmp_path / "tiny-imagenet-200" / "train" / wnid / "images" / f"{wnid}_1.JPEG"
    Image.new("RGB", (32, 32)).save(bad, format="JPEG")
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + r".*expected \(64, 64\)"):
        data.read_tinyimagenet(tmp_path)


# ----------------------------------------------------------------------------- digits


def test_digits_split_is_deterministic_and_stratified():
    a, b = data.read_digits(), data.read_digits()
    assert_same(a, b)
    assert_layout(a, 32)
    assert len(a.train_y) + len(a.test_y) == 1797
    assert abs(len(a.test_y) / 1797 - 0.25) < 0.01
    assert np.bincount(a.test_y, minlength=10).min() >= 40  # every class in the test split
    assert a.train_x.max() == 255 and a.train_x.min() == 0
    assert (a.train_x[:, 0] == a.train_x[:, 2]).all()


# ----------------------------------------------------------------------------- prepare / cache


def test_prepare_writes_a_cache_that_loads_back_identically(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "data" / "cifar10" / "prepared.npz"
    write_cifar(raw, "cifar10")
    prepared = data.prepare("cifar10", raw, out, allow_download=False)
    assert_same(data.load_prepared(out), prepared)
    assert os.listdir(out.parent) == ["prepared.npz"]  # no temp file left behind
    assert_layout(data.load_prepared(out), 32)


def test_prepare_tinyimagenet_and_digits(tmp_path):
    write_tinyimagenet(tmp_path / "raw", n_classes=2, n_train_per_class=2, n_val_per_class=1)
    tiny = data.prepare(
        "tinyimagenet", tmp_path / "raw", tmp_path / "tiny.npz", allow_download=False
    )
    assert_same(data.load_prepared(tmp_path / "tiny.npz"), tiny)
    digits = data.prepare(
        "digits", tmp_path / "nothing", tmp_path / "digits.npz", allow_download=False
    )
    assert_same(data.load_prepared(tmp_path / "digits.npz"), digits)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "tinyimagenet"])
def test_prepare_without_download_names_the_missing_directory(tmp_path, name):
    with pytest.raises(DatasetError, match=r"missing under .*internet") as err:
        data.prepare(name, tmp_path / "raw", tmp_path / "out.npz", allow_download=False)
    assert str(tmp_path / "raw") in str(err.value)
    assert not (tmp_path / "out.npz").exists()


def test_prepare_downloads_only_what_is_missing(tmp_path, monkeypatch):
    calls = []

    def fake_fetch(root):
        calls.append(root)
        write_svhn(root)

    spec = dataclasses.replace(data.DATASETS["svhn"], fetch=fake_fetch)
    monkeypatch.setitem(data.DATASETS, "svhn", spec)
    raw = tmp_path / "raw"
    first = data.prepare("svhn", raw, tmp_path / "a.npz")
    assert calls == [raw]
    second = data.prepare("svhn", raw, tmp_path / "b.npz")
    assert calls == [raw]  # files present: no second download
    assert_same(first, second)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn"])
def test_download_calls_torchvision_only_for_missing_files(tmp_path, monkeypatch, name):
    import torchvision

    calls = []

    def recorder(kind):
        def construct(root, split=None, download=False):
            assert download is True
            calls.append((kind, split))
            if kind == "svhn":
                write_svhn(root)
            else:
                write_cifar(root, kind)

        return construct

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", recorder("cifar10"))
    monkeypatch.setattr(torchvision.datasets, "CIFAR100", recorder("cifar100"))
    monkeypatch.setattr(torchvision.datasets, "SVHN", recorder("svhn"))
    data.download(name, tmp_path)
    assert calls[0][0] == name
    n = len(calls)
    data.download(name, tmp_path)
    assert len(calls) == n


def test_download_svhn_fetches_only_the_missing_split(tmp_path, monkeypatch):
    import torchvision

    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    calls = []

    def construct(root, split, download):
        calls.append(split)
        shutil.copy(Path(root) / "train_32x32.mat", Path(root) / f"{split}_32x32.mat")

    monkeypatch.setattr(torchvision.datasets, "SVHN", construct)
    data.download("svhn", tmp_path)
    assert calls == ["test"]


def test_download_tinyimagenet_uses_the_archive(tmp_path, monkeypatch):
    import torchvision.datasets.utils

    calls = []

    def fetch(url, root, md5=None, **kwargs):
        calls.append((url, md5))
        write_tinyimagenet(root, n_classes=1, n_train_per_class=1, n_val_per_class=1)

    monkeypatch.setattr(torchvision.datasets.utils, "download_and_extract_archive", fetch)
    data.download("tinyimagenet", tmp_path)
    data.download("tinyimagenet", tmp_path)
    assert calls == [(data.TINY_URL, data.TINY_MD5)]


def test_failed_cache_write_keeps_the_old_cache(tmp_path, monkeypatch):
    out = tmp_path / "prepared.npz"
    old = data.prepare("digits", tmp_path, out)
    write_svhn(tmp_path / "raw")

    def crash(src, dst):
        raise OSError("killed mid-write")

    with monkeypatch.context() as m, pytest.raises(OSError, match="killed mid-write"):
        m.setattr(data.os, "replace", crash)
        data.prepare("svhn", tmp_path / "raw", out, allow_download=False)
    assert sorted(os.listdir(tmp_path)) == ["prepared.npz", "raw"]  # temp file removed
    assert_same(data.load_prepared(out), old)


def test_truncated_cache_names_the_path(tmp_path):
    out = tmp_path / "prepared.npz"
    data.prepare("digits", tmp_path, out)
    blob = out.read_bytes()
    out.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match=re.escape(str(out)) + ": .*corrupt or truncated"):
        data.load_prepared(out)


def test_cache_with_wrong_dtype_or_missing_is_an_error(tmp_path):
    bad = tmp_path / "bad.npz"
    x = np.zeros((2, 3, 8, 8), dtype=np.float32)
    y = np.zeros(2, dtype=np.int64)
    np.savez(bad, train_x=x, train_y=y, test_x=x, test_y=y, classes=np.asarray(["a"]))
    with pytest.raises(DatasetError, match=re.escape(str(bad)) + ": train_x must be a uint8"):
        data.load_prepared(bad)
    with pytest.raises(DatasetError, match="missing; run prepare"):
        data.load_prepared(tmp_path / "absent.npz")


def test_registry_names_and_unknown_dataset(tmp_path):
    assert data.dataset_names() == ["cifar10", "cifar100", "svhn", "tinyimagenet", "digits"]
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        data.prepare("mnist", tmp_path, tmp_path / "x.npz")
