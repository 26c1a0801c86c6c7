"""A run SIGKILLed at any instant, even inside a checkpoint write, and rerun ends bit-identical."""

import csv
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakedata import train_params, write_prepared

from kdflow.checkpoint import DIGEST_KEY
from kdflow.config import TrainSpec
from kdflow.pack import train

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


def _assert_identical(out: Path, reference: Path, context: str = ""):
    """Every saved state of `out` equals `reference`'s bit for bit (model, the method's
    modules, optimizer, schedule, RNGs, best epoch, history), times apart."""
    where = f" ({context})" if context else ""
    for name in ("best.pth", "checkpoint.pth"):
        got, want = (torch.load(d / name, weights_only=False) for d in (out, reference))
        for state in (got, want):
            state.pop(DIGEST_KEY)  # save_verified's digest: covered by the rest
            for row in state.get("history", []):
                row.pop("epoch_seconds"), row.pop("images_per_s")
        assert got.keys() == want.keys(), f"{name}{where}"
        for key in want:
            _assert_equal(got[key], want[key], f"{name}: {key}{where}")

    def rows(d):
        with open(d / "history.csv") as f:
            return [
                {k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_s")}
                for row in csv.DictReader(f)
            ]

    assert rows(out) == rows(reference), where
    got, want = (json.loads((d / "metrics.json").read_text()) for d in (out, reference))
    got.pop("train_seconds"), want.pop("train_seconds")
    assert got == want, where
    assert (out / "completed").exists(), where
    assert not list(out.glob(".*.tmp")), f"partial writes must be cleaned up{where}"


def _assert_equal(got, want, where: str) -> None:
    """Equal, recursively: tensors and arrays element for element, in dtype and shape."""
    assert type(got) is type(want), f"{where}: {type(got)} != {type(want)}"
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and torch.equal(got, want), f"{where} differs"
    elif isinstance(want, np.ndarray):
        assert np.array_equal(got, want), f"{where} differs"
    elif isinstance(want, dict):
        assert got.keys() == want.keys(), f"{where}: keys {got.keys()} != {want.keys()}"
        for key in want:
            _assert_equal(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list | tuple):
        assert len(got) == len(want), f"{where}: length {len(got)} != {len(want)}"
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _assert_equal(a, b, f"{where}[{i}]")
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


# Each process restarts its count of os.replace calls: one status write at start, then per
# epoch best.pth (when it improves), the checkpoint rotation, the checkpoint, history, status;
# a resumed run first rewrites history.csv. The driver names the file each kill landed on.
KILLS = [  # each run starts where the last left: (K, mode, the file being renamed)
    (1, "truncated", "status.json"),  # inside the first status write
    (3, "truncated", "checkpoint.pth"),  # inside the first checkpoint write
    (3, "before", "checkpoint.pth"),  # the first checkpoint complete, not renamed
    (4, "after", "history.csv"),  # right after history.csv is renamed
    (4, "truncated", "checkpoint.pth"),  # resumed from epoch 1: inside the checkpoint write
    (5, "after", "status.json"),  # right after the epoch's status write
    (3, "after", "checkpoint.prev.pth"),  # resumed from epoch 2: right after the rotation,
    # checkpoint.pth missing
    (2, "after", "status.json"),  # resumed from .prev: right after a status write
    (4, "truncated", "history.csv"),  # inside the history write
    (8, "before", "checkpoint.pth"),  # resumed from epoch 3: the checkpoint complete, not renamed
]


def _killed_at(result) -> tuple[int, str, str] | None:
    """(K, mode, file) of the kill the driver announced, None if it announced none."""
    found = re.search(r"^KILL (\d+) (\w+) (\S+)$", result.stderr, re.M)
    return (int(found[1]), found[2], found[3]) if found else None


def test_kills_inside_writes_resume_bit_identical(setup):
    root, spec, reference = setup
    out = root / "killed"
    for kill in KILLS:
        result = _run(spec, out, env={"KILL_AT_REPLACE": str(kill[0]), "KILL_MODE": kill[1]})
        assert result.returncode == -signal.SIGKILL, f"{kill}: {result.stderr[-2000:]}"
        assert _killed_at(result) == kill, f"the kill landed elsewhere: {result.stderr[-2000:]}"
        assert not (out / "completed").exists()
    final = _run(spec, out)
    assert final.returncode == 0, final.stderr[-2000:]
    _assert_identical(out, reference)


# A run that cannot finish: it holds before its metrics.json until it is killed, so that every
# kill at a random instant of its training lands, however fast the machine (resume_driver).
UNFINISHABLE = {"KILL_AT_REPLACE": "1", "KILL_NAME": "metrics.json", "KILL_MODE": "hold"}


def test_kills_at_random_instants_while_training_resume_bit_identical(setup):
    """SIGKILL at random instants while the trainer trains (it has written its start status,
    and cannot finish before the kill: UNFINISHABLE): four kills, then a last run ends."""
    root, spec, reference = setup
    out = root / "random"
    with open(reference / "history.csv") as f:
        epoch_seconds = max(float(row["epoch_seconds"]) for row in csv.DictReader(f))
    seed = random.SystemRandom().randrange(2**32)  # train() seeds the global `random`
    rng = random.Random(seed)
    kills = []
    for _ in range(4):
        proc = subprocess.Popen(
            [sys.executable, str(DRIVER), json.dumps(spec), str(out)],
            env={**os.environ, **UNFINISHABLE},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        epoch = _wait_until_training(out, proc)
        assert epoch is not None, f"random kill seed {seed}: the trainer ended by itself"
        time.sleep(rng.uniform(0, (spec["epochs"] - epoch) * epoch_seconds))
        assert proc.poll() is None, f"random kill seed {seed}: the trainer ended by itself"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
        kills.append(epoch)

    final = _run(spec, out)
    assert final.returncode == 0, final.stderr[-2000:]
    _assert_identical(out, reference, f"random kill seed {seed}, kills at epochs {kills}")


def _wait_until_training(out: Path, proc: subprocess.Popen, timeout: float = 300) -> int | None:
    """The epoch process `proc` trains from, once its start status names it (None: it ended)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:
            status = json.loads((out / "status.json").read_text())
        except (OSError, ValueError):
            status = {}
        if status.get("pid") == proc.pid and status.get("status") == "in_progress":
            return status["epoch"]
        assert time.monotonic() < deadline, f"the trainer did not start within {timeout} s"
        time.sleep(0.01)
    return None


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
    before = _contents(out)
    changed = _run({**spec, "lr": 0.1}, out)
    assert changed.returncode != 0
    assert f"{out} finished as a different experiment (lr: 0.05 -> 0.1)" in changed.stderr
    completed = (out / "completed").read_bytes()
    (out / "completed").unlink()  # as if killed before its end: its checkpoint says the same
    changed = _run({**spec, "lr": 0.1}, out)
    assert changed.returncode != 0
    assert "written by a different experiment (lr: 0.05 -> 0.1)" in changed.stderr
    assert str(out / "checkpoint.pth") in changed.stderr
    (out / "completed").write_bytes(completed)
    # refused before it trained: checkpoints, history and metrics as they were (status.json
    # says who last started, nothing else)
    after = _contents(out)
    assert {k: v for k, v in after.items() if k != "status.json"} == {
        k: v for k, v in before.items() if k != "status.json"
    }


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_a_killed_fitnet_run_resumes_bit_identical_regressor_included(setup):
    """FitNet's regressor is trained with the student: its weights, batch-norm statistics and
    momentum buffers must come back from the checkpoint too."""
    root, spec, _ = setup
    fitnet = {**spec, "method": "fitnet", "epochs": 3, "method_settings": {"hint_layer": 2}}
    reference = root / "fitnet_reference"
    assert _run(fitnet, reference).returncode == 0
    regressor = torch.load(reference / "checkpoint.pth", weights_only=False)["method"]
    assert any(k.startswith("regressor") for k in regressor), sorted(regressor)

    out = root / "fitnet_killed"
    for k, mode in [(6, "after"), (7, "truncated"), (9, "before")]:
        result = _run(fitnet, out, env={"KILL_AT_REPLACE": str(k), "KILL_MODE": mode})
        assert result.returncode == -signal.SIGKILL, f"{k} {mode}: {result.stderr[-2000:]}"
        assert _killed_at(result)[:2] == (k, mode), result.stderr[-2000:]
    final = _run(fitnet, out)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "resumed" in final.stderr
    _assert_identical(out, reference)

    changed = _run({**fitnet, "method_settings": {"hint_layer": 1}}, out)
    assert changed.returncode != 0
    assert "different experiment (method_settings.hint_layer: 2 -> 1)" in changed.stderr


def test_a_killed_fp16_run_resumes_bit_identical_its_gradient_scaler_included(setup):
    """fp16 (autocast with a gradient scaler; on this CPU, CPU autocast): the scaler's scale and
    growth tracker come back from the checkpoint, so a resumed run takes the same steps."""
    root, spec, _ = setup
    fp16 = {**spec, "precision": "fp16", "epochs": 3}
    reference = root / "fp16_reference"
    assert _run(fp16, reference).returncode == 0
    scaler = torch.load(reference / "checkpoint.pth", weights_only=False)["scaler"]
    assert scaler["_growth_tracker"] > 0, scaler  # steps since the scale last changed

    out = root / "fp16_killed"
    for k, mode in [(3, "truncated"), (5, "after"), (4, "before")]:
        result = _run(fp16, out, env={"KILL_AT_REPLACE": str(k), "KILL_MODE": mode})
        assert result.returncode == -signal.SIGKILL, f"{k} {mode}: {result.stderr[-2000:]}"
    final = _run(fp16, out)
    assert final.returncode == 0, final.stderr[-2000:]
    assert "resumed" in final.stderr
    _assert_identical(out, reference)
    assert json.loads((out / "metrics.json").read_text())["precision_used"] == "fp16"
