"""Ownership on the real Slurm: a second Slurm job for an experiment that a live Slurm job
trains refuses to write beside it.

This is what happens after a controller running profiles/slurm is SIGKILLed: its jobs keep
running, and the next controller (after `--unlock`) submits each of their experiments again.
Here the first job is a trainer run through scripts/train.py (as the rule runs it) in a Slurm
job; the second is the same command in another Slurm job, as the new controller would submit
it. The first is stopped (SIGSTOP, still RUNNING for Slurm) while the second runs, so that its
files stand still and "untouched" can be checked byte for byte.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from fakedata import train_params, wait_stopped, write_prepared
from test_slurm_profile import ROOT, _sacct

from kdflow.owner import Liveness, probe_slurm

DRIVER = ROOT / "tests" / "resume_driver.py"
pytestmark = pytest.mark.slow


def _wait(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s: {what}"
        time.sleep(interval)
    return found


def _status(out: Path) -> dict:
    try:
        return json.loads((out / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_a_second_slurm_job_refuses_an_experiment_a_live_slurm_job_trains(slurm, tmp_path):
    # the job's environment is Slurm's alone: no job id of the session's own leaks in
    env = {k: v for k, v in slurm.items() if not k.startswith(("SLURM_", "PBS_"))}
    name = f"kdflow-owner-{uuid.uuid4().hex[:8]}"
    out, logs = tmp_path / "results/tiny/pure/resnet8/seed0", tmp_path / "logs"
    logs.mkdir()
    spec = train_params(write_prepared(tmp_path / "prepared.npz"), epochs=100_000)

    def submit(which: str) -> str:
        """A Slurm job running scripts/train.py for `out`, as the workflow's rule would."""
        script = tmp_path / f"{which}.sh"
        script.write_text(
            "#!/bin/bash\n"
            f"exec {sys.executable} {DRIVER} --rule '{json.dumps(spec)}' {out} "
            f"{logs / which}.train.log\n"
        )
        p = subprocess.run(
            ["sbatch", "--parsable", "-J", name, "-p", "workq", "-A", "root", "-c", "1",
             "--mem", "2000", "-t", "60", "-o", f"{logs / which}.slurm.log", str(script)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        return p.stdout.strip().split(";")[0]

    def job_log(which: str) -> str:
        parts = [logs / f"{which}.slurm.log", logs / f"{which}.train.log"]
        return "".join(f"--- {p.name}\n{p.read_text()}" for p in parts if p.exists())[-4000:]

    def state(job: str) -> str:
        p = subprocess.run(["squeue", "-h", "-t", "all", "-j", job, "-o", "%T"], env=env,
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        return p.stdout.strip() or p.stderr.strip()

    trainer_pid = None
    try:
        first = submit("first")

        def first_trains():
            status = _status(out)
            if status.get("epoch", 0) >= 1:
                return status
            assert state(first) in ("PENDING", "CONFIGURING", "RUNNING"), job_log("first")
            return None

        status = _wait(first_trains, 300, "the first job to train an epoch")
        trainer_pid = status["pid"]  # the first job's trainer: the only one so far
        os.kill(trainer_pid, signal.SIGSTOP)  # still RUNNING for Slurm; its files stand still
        wait_stopped(trainer_pid)
        before = _contents(out)
        assert probe_slurm(first).liveness is Liveness.ALIVE

        second = submit("second")

        def second_ended():
            # a second trainer writing here shows in status.json (today's PBS-only guard let it)
            assert _status(out).get("pid") == trainer_pid, (
                "the second job trains beside the first:\n" + job_log("second")
            )
            return state(second) not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")

        _wait(second_ended, 300, "the second job to end")
        accounted = _wait(
            lambda: _sacct(
                env, "-n", "-X", "-P", "-j", second, "-o", "State,ExitCode"
            ).stdout.strip(),
            60,
            "sacct to record the second job",
        )
        assert accounted == "FAILED|1:0", accounted + "\n" + job_log("second")
        refusal = (
            f"AlreadyOwned: {out} is being trained by Slurm job {first} (process {trainer_pid} "
            f"on {status['host']}), alive (state RUNNING); this Slurm job {second}"
        )
        assert refusal in (logs / "second.slurm.log").read_text(), job_log("second")
        assert f"stop it with `scancel {first}`" in (logs / "second.slurm.log").read_text()
        assert f"not training {out}: {out} is being trained by Slurm job {first}" in (
            (logs / "second.train.log").read_text()
        )
        assert _contents(out) == before, "the refused job changed the first job's files"
        assert state(first) == "RUNNING"
        # status.json names the first job as the owner
        assert status["owner"] == {
            "scheduler": "slurm",
            "job_id": first,
            "host": status["host"],
            "pid": trainer_pid,
            "started": status["owner"]["started"],
        }
        assert status["pbs_job_id"] is None
    finally:
        if trainer_pid is not None:
            os.kill(trainer_pid, signal.SIGCONT)
        subprocess.run(["scancel", "--name", name], env=env, capture_output=True, timeout=60)

    # the probe on the real squeue: a cancelled job has ended, a forgotten one too
    _wait(lambda: probe_slurm(first).liveness is Liveness.ENDED, 60, "the cancel to show")
    assert probe_slurm(first).detail == "state CANCELLED"
    assert probe_slurm("60000000").liveness is Liveness.ENDED  # never existed: Invalid job id
