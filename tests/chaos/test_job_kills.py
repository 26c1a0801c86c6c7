"""Job kills: training processes (tests/resume_driver.py, one experiment in a fresh process as a
PBS job runs it) killed again and again, with SIGKILL and SIGTERM, at random instants, inside
checkpoint writes (the KILL_AT_REPLACE hook: half-written temp file, complete but not renamed,
renamed but nothing after) and while a checkpoint's temp file exists. Each run is rerun until
it completes, and ends bit-identical to a run that was never interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from chaoslib import ROOT, differences, lost_epochs
from conftest import COUNTS, FULL
from fakedata import train_params, write_prepared

from kdflow.config import TrainSpec
from kdflow.pack import train

pytestmark = pytest.mark.slow
DRIVER = ROOT / "tests/resume_driver.py"
EPOCHS = 30  # ~0.1 s each here: a run trains for ~3 s after ~3 s of start-up
# a run that cannot finish before a signal aimed at it (tests/resume_driver.py)
UNFINISHABLE = {"KILL_AT_REPLACE": "1", "KILL_NAME": "metrics.json", "KILL_MODE": "hold"}
# how each kill is made, in equal shares
KINDS = (
    "write:truncated",  # KILL_AT_REPLACE: SIGKILL with the temp file half written
    "write:before",  # ... complete, not yet renamed
    "write:after",  # ... renamed, nothing written after it
    "SIGKILL",  # at a random instant
    "SIGTERM",
    "SIGKILL in checkpoint write",  # while .checkpoint.pth.*.tmp exists (else at random)
    "SIGTERM in checkpoint write",
)


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """A tiny 4-class dataset, a teacher, and two uninterrupted references: a baseline and a
    distilled student."""
    root = tmp_path_factory.mktemp("jobkills")
    data = write_prepared(root / "prepared.npz", seed=1)
    base = train_params(data, seed=5, epochs=EPOCHS, lr_milestones=[EPOCHS - 3])
    train(TrainSpec.from_params({**base, "epochs": 1}), root / "teacher")
    student = {**base, "method": "logit", "teacher": "resnet8",
               "teacher_dir": str(root / "teacher"), "alpha": 0.5}  # fmt: skip
    out = []
    for name, spec in (("pure", base), ("logit", student)):
        reference = root / f"reference_{name}"
        done = _start(spec, reference, {}).wait(timeout=300)
        assert done == 0, (reference / "driver.err").read_text()[-3000:]
        out.append((name, spec, reference))
    return root, out


def _start(spec, out: Path, env: dict[str, str]) -> subprocess.Popen:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, str(DRIVER), json.dumps(spec), str(out)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=open(out / "driver.err", "a"),  # noqa: SIM115
    )


def _wait_for_training(out: Path, p: subprocess.Popen, timeout: float = 120) -> None:
    """Until process `p` has written status.json (it then trains), or has ended."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and p.poll() is None:
        try:
            if json.loads((out / "status.json").read_text()).get("pid") == p.pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.01)


def _trained_all(out: Path, spec) -> bool:
    """Has the run in `out` trained all its epochs (only its end is left)?"""
    try:
        return json.loads((out / "status.json").read_text()).get("epoch") == spec["epochs"]
    except (OSError, ValueError):
        return False


def _checkpoint_tmp(out: Path) -> bool:
    try:
        return any(e.name.startswith(".checkpoint.pth.") for e in os.scandir(out))
    except OSError:
        return False


@pytest.mark.timeout(3600 if FULL else 900)
def test_killed_training_resumes_bit_identical(specs, chaos):
    root, runs = specs
    rng = chaos.rng
    plan = [KINDS[i % len(KINDS)] for i in range(COUNTS.job_kills)]
    rng.shuffle(plan)
    kinds: dict[str, int] = {}
    landed_in_write = 0
    completed_runs, problems = [], []
    chaos.detail.update(kinds=kinds, completed_runs=completed_runs)
    run = 0
    name, spec, reference = runs[0]
    out = root / f"run{run}_{name}"

    def finish(spec, out, reference):
        """Run to the end untouched and compare with the reference."""
        p = _start(spec, out, {})
        assert p.wait(timeout=300) == 0, (out / "driver.err").read_text()[-3000:]
        found = differences(out, reference)
        found += [f"{out}: leftover {t.name}" for t in out.glob(".*.tmp")]
        completed_runs.append({"run": out.name, "differences": len(found)})
        chaos.differing += bool(found)
        return found

    for kind in plan:
        while True:
            env = {}
            if kind.startswith("write:"):
                # one status write at start, then per epoch up to 5 replaces (best.pth,
                # the rotation, the checkpoint, history, status): anywhere in 3 epochs
                env = {"KILL_AT_REPLACE": str(rng.randint(1, 16)), "KILL_MODE": kind[6:]}
            else:
                # a run that cannot finish before the signal: it holds before metrics.json
                env = UNFINISHABLE
            p = _start(spec, out, env)
            if kind.startswith("write:"):
                code = p.wait(timeout=300)
            else:
                sig = signal.SIGKILL if kind.startswith("SIGKILL") else signal.SIGTERM
                if "checkpoint write" in kind or rng.random() < 0.75:
                    # while it trains: once it has written its first status
                    _wait_for_training(out, p)
                    deadline = time.monotonic() + rng.uniform(0, 3.0)
                else:  # while it starts up (imports, data, first writes)
                    deadline = time.monotonic() + rng.uniform(0.2, 3.0)
                while time.monotonic() < deadline and p.poll() is None:
                    if "checkpoint write" in kind and _checkpoint_tmp(out):
                        landed_in_write += 1
                        break
                    time.sleep(0.001 if "checkpoint write" in kind else 0.02)
                assert p.poll() is None, (
                    f"{kind}: a run that cannot finish ended (seed {chaos.seed})"
                )
                p.send_signal(sig)
                code = p.wait(timeout=60)
            if code in (-signal.SIGKILL, -signal.SIGTERM):
                kinds[kind] = kinds.get(kind, 0) + 1
                chaos.kills += 1
                chaos.lost_epochs = (chaos.lost_epochs or 0) + lost_epochs(out)
                if not _trained_all(out, spec):
                    break
                # killed where it held, all its epochs trained: it ends untouched below
            else:  # not killed (a write kill past its last write): it must have completed
                err = (out / "driver.err").read_text()[-3000:]
                assert code == 0, f"{kind}: exit {code} (seed {chaos.seed}):\n{err}"
            problems += finish(spec, out, reference)
            run += 1
            name, spec, reference = runs[run % len(runs)]
            out = root / f"run{run}_{name}"
            if code in (-signal.SIGKILL, -signal.SIGTERM):
                break
    problems += finish(spec, out, reference)
    chaos.detail["landed_in_checkpoint_write"] = landed_in_write
    assert chaos.kills == COUNTS.job_kills
    assert not chaos.lost_epochs, "a kill lost an epoch its status had recorded"
    assert problems == [], f"seed {chaos.seed}:\n" + "\n".join(problems)
