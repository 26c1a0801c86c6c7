"""A pack (kdflow.pack: the students of one teacher trained in one process, one teacher forward
per batch) ends with every student's files bit-identical to the same experiment trained alone;
again after SIGKILLs at random instants and inside checkpoint writes."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakedata import train_params, write_prepared
from test_resume import UNFINISHABLE, _assert_identical, _contents, _killed_at

import kdflow.trainer
from kdflow.config import TrainSpec
from kdflow.pack import PackError, train, train_pack

DRIVER = Path(__file__).with_name("resume_driver.py")
pytestmark = pytest.mark.slow

# (method, student, alpha, method settings, epochs): two methods at two alphas each, FitNet
# (its regressor, in both forms) included, a third method on another student, and one student
# that trains an epoch longer than the others.
STUDENTS = [
    ("logit", "resnet8", 0.5, {}, 2),
    ("logit", "resnet8", 0.9, {}, 3),
    ("fitnet", "resnet8", 0.5, {"hint_layer": -1, "regressor": "conv1x1_bn"}, 2),
    ("fitnet", "resnet8", 1.0, {}, 2),
    ("dkd", "wrn_16_1", 1.0, {"warmup": 2}, 2),
]
TEACHER = "resnet14"


def _name(spec: dict) -> str:
    return f"{spec['method']}_{spec['model']}_alpha{spec['alpha']}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny 4-class dataset, a teacher trained on it, and each student trained alone."""
    root = tmp_path_factory.mktemp("pack")
    base = train_params(write_prepared(root / "prepared.npz"), seed=3, lr_milestones=[1])
    train(TrainSpec.from_params({**base, "model": TEACHER, "epochs": 1}), root / "teacher")
    specs = [
        {
            **base,
            "model": model,
            "epochs": epochs,
            "method": method,
            "teacher": TEACHER,
            "teacher_dir": str(root / "teacher"),
            "alpha": alpha,
            "method_settings": settings,
        }
        for method, model, alpha, settings, epochs in STUDENTS
    ]
    alone = root / "alone"
    for spec in specs:
        train(TrainSpec.from_params(spec), alone / _name(spec))
    return root, specs, alone


def _assert_all_identical(out: Path, specs, alone: Path, context: str = "") -> None:
    for spec in specs:
        _assert_identical(out / _name(spec), alone / _name(spec), f"{_name(spec)} {context}")


def test_a_pack_ends_bit_identical_to_each_student_alone_with_one_teacher_forward(
    setup, monkeypatch
):
    root, specs, alone = setup
    out = root / "together"
    calls = []
    teach = kdflow.trainer._teach
    monkeypatch.setattr(kdflow.trainer, "_teach", lambda *a: calls.append(1) or teach(*a))
    metrics = train_pack([TrainSpec.from_params(s) for s in specs], [out / _name(s) for s in specs])
    _assert_all_identical(out, specs, alone)
    assert set(metrics) == {(out / _name(s)).resolve() for s in specs}
    # 96 images in batches of 16: 6 batches an epoch, 3 epochs (the longest student's)
    assert len(calls) == 6 * 3, "one teacher forward per batch for all the students"


def test_a_completed_student_is_left_alone_and_a_failing_one_stops_no_other(setup):
    root, specs, alone = setup
    out = root / "partly"
    done, refused = specs[0], specs[3]
    shutil.copytree(alone / _name(done), out / _name(done))
    before = _contents(out / _name(done))
    # a checkpoint of another recipe: this student is refused, the others train
    train(TrainSpec.from_params({**refused, "lr": 0.1, "epochs": 1}), out / _name(refused))
    (out / _name(refused) / "completed").unlink()  # as if killed before its end
    with pytest.raises(PackError, match=r"1 student\(s\) of the pack failed") as failed:
        train_pack([TrainSpec.from_params(s) for s in specs], [out / _name(s) for s in specs])
    assert list(failed.value.failures) == [(out / _name(refused)).resolve()]
    assert "written by a different experiment (lr: 0.1 -> 0.05)" in str(failed.value)
    status = json.loads((out / _name(refused) / "status.json").read_text())
    assert status["status"] == "failed" and "different experiment" in status["error"]
    assert _contents(out / _name(done)) == before, "a completed student must not be retrained"
    _assert_all_identical(out, [s for s in specs if s is not refused], alone)

    # its old run moved away, the next pack trains it alone (the others are completed), and
    # its status forgets the error
    for name in ("checkpoint.pth", "checkpoint.prev.pth", "best.pth", "history.csv"):
        (out / _name(refused) / name).unlink(missing_ok=True)
    train_pack([TrainSpec.from_params(s) for s in specs], [out / _name(s) for s in specs])
    status = json.loads((out / _name(refused) / "status.json").read_text())
    assert status["status"] == "completed" and "error" not in status
    _assert_all_identical(out, specs, alone)


def _run_pack(specs, out: Path, env=None, **kw):
    return subprocess.run(
        _pack_command(specs, out),
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        **kw,
    )


def _pack_command(specs, out: Path) -> list[str]:
    dirs = [str(out / _name(s)) for s in specs]
    return [sys.executable, str(DRIVER), "--pack", json.dumps(specs), json.dumps(dirs)]


def test_kills_inside_writes_resume_each_student_bit_identical(setup):
    """SIGKILL at a rename drawn at random (inside the write, before or right after the
    rename), every other time at a checkpoint write, until a run ends: kills land between
    two students' checkpoints of one epoch, in `completed`, in a status write..."""
    root, specs, alone = setup
    out = root / "killed"
    seed = random.SystemRandom().randrange(2**32)  # train() seeds `random`
    rng = random.Random(seed)
    landed = []
    for i in range(16):
        mode = rng.choice(["truncated", "before", "after"])
        if i % 2:  # within half an epoch's renames (5 students x ~5): never so far that too
            # few checkpoint writes are left for the next kills to land in
            env = {"KILL_AT_REPLACE": str(rng.randint(1, 12))}
        else:  # one of the pack's next 6 checkpoint writes (5 students an epoch)
            env = {"KILL_AT_REPLACE": str(rng.randint(1, 6)), "KILL_NAME": "checkpoint.pth"}
        result = _run_pack(specs, out, env={**env, "KILL_MODE": mode})
        if result.returncode == 0:
            break  # fewer renames were left than K
        assert result.returncode == -signal.SIGKILL, f"seed {seed}: {result.stderr[-2000:]}"
        landed.append(_killed_at(result))
    where = f"kill seed {seed}, kills {landed}"
    assert sum(kill[2] == "checkpoint.pth" for kill in landed) >= 2, where
    final = _run_pack(specs, out)
    assert final.returncode == 0, final.stderr[-2000:]
    _assert_all_identical(out, specs, alone, where)


def test_kills_at_random_instants_resume_each_student_bit_identical(setup):
    """SIGKILLs at random instants of a pack that cannot finish before the kill (it holds
    before its first metrics.json: UNFINISHABLE), four times; then a last run ends."""
    root, specs, alone = setup
    out = root / "random"
    seed = random.SystemRandom().randrange(2**32)  # train() seeds the global `random`
    rng = random.Random(seed)
    for _ in range(4):
        started = time.monotonic()
        proc = subprocess.Popen(
            _pack_command(specs, out),
            env={**os.environ, **UNFINISHABLE},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert _wait_until_training(out, specs, proc), f"kill seed {seed}: the pack ended"
        # within about as long again as its start-up took, and more: mostly while it trains
        time.sleep(rng.uniform(0, 3 * (time.monotonic() - started)))
        assert proc.poll() is None, f"kill seed {seed}: the pack ended by itself"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL
    final = _run_pack(specs, out)
    assert final.returncode == 0, final.stderr[-2000:]
    _assert_all_identical(out, specs, alone, f"random kill seed {seed}, 4 kills")


def _wait_until_training(out: Path, specs, proc: subprocess.Popen, timeout=300) -> bool:
    """True once `proc` has written an in_progress status of one of its students."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        for spec in specs:
            try:
                status = json.loads((out / _name(spec) / "status.json").read_text())
            except (OSError, ValueError):
                continue
            if status.get("pid") == proc.pid and status.get("status") == "in_progress":
                return True
        assert time.monotonic() < deadline, f"the pack did not start within {timeout} s"
        time.sleep(0.01)
    return False
