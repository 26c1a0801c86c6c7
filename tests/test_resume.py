"""A run SIGKILLed at any instant, even inside a checkpoint write, and rerun ends bit-identical."""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fakedata import train_params, write_prepared

from kdflow.trainer import TrainSpec, train

DRIVER = Path(__file__).with_name("resume_driver.py")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny 4-class dataset, and a teacher trained on it."""
    root = tmp_path_factory.mktemp("resume")
    base = train_params(write_prepared(root / "prepared.npz"), seed=3, lr_milestones=[3])
    train(TrainSpec.from_params({**base, "model": "resnet8", "epochs": 1}), root / "teacher")
    student = {
        **base,
        "model": "resnet8",
        "epochs": 5,
        "method": "logit",
        "teacher": "resnet8",
        "teacher_dir": str(root / "teacher"),
        "alpha": 0.5,
    }
    reference = root / "reference"
    assert _run(student, reference).returncode == 0
    return root, student, reference


def _run(spec, out, env=None, **kw):
    return subprocess.run(
        [sys.executable, str(DRIVER), json.dumps(spec), str(out)],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        **kw,
    )


def _assert_identical(out: Path, reference: Path):
    for name, part in [
        ("best.pth", "model"),
        ("checkpoint.pth", "model"),
        ("checkpoint.pth", "method"),
    ]:
        got = torch.load(out / name, weights_only=False)[part]
        want = torch.load(reference / name, weights_only=False)[part]
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), f"{name}: {part} {key} differs"

    def rows(d):
        with open(d / "history.csv") as f:
            return [
                {k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_s")}
                for row in csv.DictReader(f)
            ]

    assert rows(out) == rows(reference)
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (out, reference))
    assert {k: v for k, v in got.items() if k != "train_seconds"} == {
        k: v for k, v in want.items() if k != "train_seconds"
    }
    assert (out / "completed").exists()
    assert not list(out.glob(".*.tmp")), "partial writes must be cleaned up"


# Each process restarts its count of os.replace calls: one status write at start, then per
# epoch best.pth (when it improves), the checkpoint rotation, the checkpoint, history, status.
KILLS = [  # where each lands (traced with this setup's spec; each run starts where the last left)
    (1, "truncated"),  # inside the first status write
    (3, "truncated"),  # inside the first checkpoint write
    (3, "before"),  # the first checkpoint complete, not renamed
    (4, "after"),  # right after history.csv is renamed
    (4, "truncated"),  # resumed from epoch 1: inside the checkpoint write
    (5, "after"),  # right after the epoch's status write
    (3, "after"),  # resumed from epoch 2: right after the rotation, checkpoint.pth missing
    (2, "after"),  # resumed from .prev: right after a status write
    (4, "truncated"),  # inside the history write
    (8, "before"),  # resumed from epoch 3: the checkpoint complete, not renamed
]


def test_kills_inside_writes_and_at_random_instants_resume_bit_identical(setup):
    root, spec, reference = setup
    out = root / "killed"
    for k, mode in KILLS:
        result = _run(spec, out, env={"KILL_AT_REPLACE": str(k), "KILL_MODE": mode})
        assert result.returncode == -signal.SIGKILL, (k, mode, result.stderr[-2000:])
        assert not (out / "completed").exists()

    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kills = 0
    while kills < 4:
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), json.dumps(spec), str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(rng.uniform(0.5, 4.0))
        if proc.poll() is not None:
            break  # finished before the kill: nothing more to interrupt
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1

    final = _run(spec, out)
    assert final.returncode == 0, final.stderr[-2000:]
    _assert_identical(out, reference), f"random kill seed {seed}"


def test_corrupt_checkpoint_is_reported_and_the_previous_one_used(setup):
    root, spec, reference = setup
    out = root / "corrupt"
    assert _run({**spec, "epochs": 3}, out).returncode == 0  # stops after epoch 2
    checkpoint = out / "checkpoint.pth"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # bit rot / truncating copy
    final = _run(spec, out)
    assert final.returncode == 0, final.stderr[-2000:]
    assert f"checkpoint {checkpoint} cannot be loaded" in final.stderr
    _assert_identical(out, reference)


def test_a_changed_recipe_is_refused_not_silently_mixed(setup):
    root, spec, reference = setup
    out = root / "changed"
    assert _run({**spec, "epochs": 2}, out).returncode == 0
    changed = _run({**spec, "lr": 0.1}, out)
    assert changed.returncode != 0
    assert "written by a different experiment (lr: 0.05 -> 0.1)" in changed.stderr
    assert str(out / "checkpoint.pth") in changed.stderr


def test_a_killed_fitnet_run_resumes_bit_identical_regressor_included(setup):
    """FitNet's regressor is trained with the student: its weights, batch-norm statistics and
    momentum buffers must come back from the checkpoint too."""
    root, spec, _ = setup
    fitnet = {**spec, "method": "fitnet", "epochs": 3, "method_settings": {"hint_layer": 2}}
    reference = root / "fitnet_reference"
    assert _run(fitnet, reference).returncode == 0
    assert torch.load(reference / "checkpoint.pth", weights_only=False)["method"]

    out = root / "fitnet_killed"
    for k, mode in [(6, "after"), (7, "truncated"), (9, "before")]:
        result = _run(fitnet, out, env={"KILL_AT_REPLACE": str(k), "KILL_MODE": mode})
        assert result.returncode == -signal.SIGKILL, (k, mode, result.stderr[-2000:])
    final = _run(fitnet, out)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "resumed" in final.stderr
    _assert_identical(out, reference)

    changed = _run({**fitnet, "method_settings": {"hint_layer": 1}}, out)
    assert changed.returncode != 0
    assert "different experiment (method_settings.hint_layer: 2 -> 1)" in changed.stderr
