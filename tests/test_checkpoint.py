"""Atomic files and checkpoints that fall back to the previous one."""

import logging

import pytest
import torch

from kdflow.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_verified,
    previous_path,
    save_checkpoint,
    save_verified,
)
from kdflow.fileio import atomic_write_text, read_json


def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "a.txt"
    atomic_write_text(path, "old")

    def disk_full(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("kdflow.fileio.os.fsync", disk_full)
    with pytest.raises(OSError, match="No space left"):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_checkpoint_keeps_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"epoch": 0, "w": torch.zeros(3)})
    save_checkpoint(path, {"epoch": 1, "w": torch.ones(3)})
    assert load_checkpoint(path)["epoch"] == 1
    assert torch.load(previous_path(path))["epoch"] == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "wrong_object"])
def test_damaged_checkpoint_falls_back_to_the_previous(tmp_path, caplog, damage):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"epoch": 0})
    save_checkpoint(path, {"epoch": 1})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a torch file" * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save([1, 2, 3], path)
    with caplog.at_level(logging.WARNING):
        state = load_checkpoint(path)
    assert state["epoch"] == 0
    assert str(path) in caplog.text


def test_kill_between_rotation_and_write_resumes_from_previous(tmp_path):
    path = tmp_path / "checkpoint.pth"
    save_checkpoint(path, {"epoch": 4})
    previous_path(path).write_bytes(path.read_bytes())
    path.unlink()  # the state right after `checkpoint -> checkpoint.prev`
    assert load_checkpoint(path)["epoch"] == 4


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    assert load_checkpoint(tmp_path / "checkpoint.pth") is None


def test_all_checkpoints_damaged_names_every_file(tmp_path):
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(b"junk")
    previous_path(path).write_bytes(b"junk")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value) and str(previous_path(path)) in str(err.value)
    assert "move these files away" in str(err.value)


def test_read_json_tolerates_damage(tmp_path, caplog):
    path = tmp_path / "status.json"
    assert read_json(path) is None
    path.write_text('{"status": "in_prog')
    with caplog.at_level(logging.WARNING):
        assert read_json(path) is None
    assert str(path) in caplog.text


def test_a_changed_tensor_in_a_verified_file_is_refused_by_path(tmp_path):
    """torch.load reads a flipped bit in a tensor without complaint; the SHA-256 does not."""
    path = tmp_path / "best.pth"
    save_verified(path, {"model": {"w": torch.arange(4.0)}, "model_name": "r8"})
    assert torch.equal(load_verified(path)["model"]["w"], torch.arange(4.0))
    saved = torch.load(path, weights_only=False)
    saved["model"]["w"][2] = 2.0000002  # one bit of one weight
    torch.save(saved, path)
    with pytest.raises(CheckpointError, match="SHA-256") as err:
        load_verified(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("content", [b"", b"junk" * 10, None], ids=["empty", "garbage", "a list"])
def test_an_unreadable_verified_file_is_refused_by_path(tmp_path, content):
    path = tmp_path / "best.pth"
    if content is None:
        torch.save([1, 2], path)
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_verified(path)
    assert str(path) in str(err.value)
