"""kdflow through profiles/slurm (the official snakemake-executor-plugin-slurm) on the real
Slurm with accounting: the demo-shaped sweep completes, the teacher is killed at its walltime,
resubmitted by `retries` and resumes from its checkpoint, and sacct saw every job."""

from __future__ import annotations

import contextlib
import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import kdflow_test_hooks as hooks
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "tests/hooks"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

EPOCHS = 5
# The demo's shape: 1 seed, teacher resnet20 -> student resnet8, a 1-minute walltime (Slurm
# enforces limits every ~30 s: a 60 s job dies at 60-90 s). The teacher's first job past epoch
# 1 holds until Slurm kills it (tests/hooks), so the walltime kill is certain however fast the
# machine; its resubmission resumes (an epoch takes ~7 s on one idle core).
SWEEP = {
    "seeds": [0],
    "datasets": {"digits": {"mem_mb": 4000, "runtime": 1}},
    "models": ["resnet20", "resnet8"],
    "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
    "methods": {"logit": {"temperature": 4}},
    "alphas": [0.5],
    "train": {
        "epochs": EPOCHS,
        "batch_size": 64,
        "lr": 0.05,
        "lr_milestones": [4],
        "crop_padding": 2,
        "flip": False,
    },
    "device": "cpu",
}
TEACHER = "results/digits/pure/resnet20/seed0"
EXPERIMENTS = {  # the plugin's job comment (rule and wildcards) -> the experiment's directory
    "rule_train_pure_wildcards_digits_resnet20_0": TEACHER,
    "rule_train_pure_wildcards_digits_resnet8_0": "results/digits/pure/resnet8/seed0",
    # packing: teacher (the default): the students of resnet20 train in its pack's job
    "rule_train_pack_wildcards_digits_resnet20_resnet8_0": (
        "results/digits/logit/resnet20-resnet8/alpha0.5/seed0"
    ),
}
# this machine has 2 cores and no GPU; everything else comes from profiles/slurm unchanged.
# Only the teacher needs the 1-minute walltime; the student (its pack: profiles' train_kd
# settings apply to packs) gets 10 minutes, so that one kill
# is enough to test. Status checks start at 2 s (the plugin adds 10 s per quiet round). On a
# loaded 2-core machine the teacher's ~100 s can take 3-4 walltimes (each kill lands at
# 60-90 s, ~10 s of it start-up): more retries than the profile's 3, checked on their own below.
ON_THIS_MACHINE = [
    "--set-threads", "train_pure=1", "train_kd=1", "train_pack=1",
    "--set-resources", "train_pure:gpu=0", "train_kd:gpu=0", "train_pack:gpu=0",
    "train_pack:runtime=10",
    "--slurm-init-seconds-before-status-checks", "2",
    "--seconds-between-status-checks", "2",
    "--retries", "6",
]  # fmt: skip


def _sacct(env, *args):
    return subprocess.run(["sacct", *args], env=env, capture_output=True, text=True, timeout=60)


def _run_id(log: str) -> str | None:
    found = re.search(r"SLURM run ID: (\S+)", log)
    return found.group(1) if found else None


def test_profile_resubmits_failed_jobs():
    """The Slurm plugin has no walltime-resume logic of its own: `retries` is what resubmits
    a job killed at its walltime (the training then resumes from its checkpoint)."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    assert profile["retries"] >= 1
    assert profile["set-threads"] == {"train_pure": 10, "train_kd": 10, "train_pack": 10}
    assert profile["set-resources"] == {
        "train_pure": {"gpu": 1},
        "train_kd": {"gpu": 1},
        "train_pack": {"gpu": 1},
    }


@pytest.mark.slow
def test_sweep_through_profiles_slurm_resumes_after_a_walltime_kill(slurm, tmp_path):
    env = {
        **slurm,
        "SNAKEMAKE_SLURM_PARTITION": "workq",
        "SNAKEMAKE_SLURM_ACCOUNT": "root",  # slurm.sh registers the cluster: account root
    }
    probe = _sacct(env, "-n", "-X", "-S", "now-1minutes")
    assert probe.returncode == 0, (
        f"sacct does not work ({probe.stderr.strip()}): accounting is off; "
        "run `bash tests/cluster/slurm.sh start` (as root) to turn it on"
    )
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    # Slurm jobs inherit this environment: their Python loads the hooks (tests/hooks)
    hooks_file = tmp_path / hooks.HOOKS_FILE
    hooks_file.write_text(json.dumps({"hold": {TEACHER: 1}}))
    env.update(KDFLOW_TEST_HOOKS=str(hooks_file), PYTHONPATH=str(HOOKS))
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 60))
    log_path = tmp_path / "controller.log"
    with open(log_path, "w") as out:
        controller = subprocess.Popen(
            [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
             "--profile", str(ROOT / "profiles/slurm"),
             "--configfile", "sweep.yaml", "--replace-workflow-config", *ON_THIS_MACHINE],
            env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    returncode = None
    try:
        returncode = controller.wait(timeout=720)
    except subprocess.TimeoutExpired:
        pass  # asserted below, with the log
    finally:
        if controller.poll() is None:  # SIGINT: the plugin scancels its jobs
            controller.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                controller.wait(timeout=30)
            controller.kill()
        run_id = _run_id(log_path.read_text())
        if run_id:  # whatever is left of this run (never other sessions' jobs)
            subprocess.run(["scancel", "--name", run_id], env=env, capture_output=True)
    log = log_path.read_text()
    assert returncode == 0, log[-6000:]
    assert run_id, "the plugin logs its run ID"

    # every experiment completed, all its epochs, and the results table is written
    for directory in EXPERIMENTS.values():
        assert (tmp_path / directory / "completed").exists(), directory
        with open(tmp_path / directory / "history.csv") as f:
            history = list(csv.DictReader(f))
        assert [int(row["epoch"]) for row in history] == list(range(EPOCHS)), directory
        assert json.loads((tmp_path / directory / "metrics.json").read_text())["epochs"] == EPOCHS
    with open(tmp_path / "results/summary/results.csv") as f:
        table = list(csv.DictReader(f))
    assert sorted((row["method"], row["model"]) for row in table) == [
        ("logit", "resnet8"),
        ("pure", "resnet20"),
        ("pure", "resnet8"),
    ]
    assert (tmp_path / "results/summary/results.md").exists()

    # sacct saw every job of this run (named by the run ID), in workq, under account root
    fields = "JobIDRaw,State,Partition,Account,Timelimit,Comment%300"
    jobs = [
        line.split("|")
        for line in _sacct(
            env, "-X", "-P", "-n", "-S", since, "--name", run_id, "-o", fields
        ).stdout.splitlines()
        if line.strip()
    ]
    states: dict[str, list[str]] = {}
    limits: dict[str, set[str]] = {}
    for jobid, state, partition, account, limit, comment in sorted(jobs, key=lambda j: int(j[0])):
        assert (partition, account) == ("workq", "root"), (jobid, partition, account)
        assert comment in EXPERIMENTS, comment
        states.setdefault(comment, []).append(state)
        limits.setdefault(comment, set()).add(limit)
    assert set(states) == set(EXPERIMENTS), jobs
    assert all(s[-1] == "COMPLETED" for s in states.values()), states
    # On a loaded 2-core machine a job step can also fail otherwise (sacct FAILED, e.g. the
    # step killed while the machine thrashes); `retries` covers those too. What must hold:
    # no job ended in a state the profile cannot recover from.
    assert set(sum(states.values(), [])) <= {"COMPLETED", "TIMEOUT", "FAILED"}, states

    # the teacher was killed at its walltime, resubmitted (retries) and resumed
    teacher = states["rule_train_pure_wildcards_digits_resnet20_0"]
    assert limits["rule_train_pure_wildcards_digits_resnet20_0"] == {"00:01:00"}, limits
    assert hooks.held_by(tmp_path, TEACHER), "the teacher should have held after epoch 1"
    assert teacher[0] == "TIMEOUT", teacher
    assert len(teacher) >= 2, teacher
    assert "DUE TO TIME LIMIT" in "".join(
        p.read_text() for p in (tmp_path / "logs/slurm/rule_train_pure").rglob("*.log")
    ), "the kept log of the killed job should say why it died"
    train_log = (tmp_path / "logs/train/digits/pure/resnet20/seed0.log").read_text()
    assert re.search(r"resumed \S+resnet20/seed0 from epoch [1-9]", train_log), train_log[-3000:]


def test_a_partition_without_gpus_is_said_once_before_any_job(slurm, tmp_path):
    """profiles/slurm gives the training rules a GPU; on this Slurm (no GPUs) sbatch would
    refuse each of those jobs. The run stops before the first, naming the switch."""
    env = {**slurm, "SNAKEMAKE_SLURM_PARTITION": "workq", "SNAKEMAKE_SLURM_ACCOUNT": "root"}
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    result = subprocess.run(
        [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path),
         "--profile", str(ROOT / "profiles/slurm"),
         "--configfile", "sweep.yaml", "--replace-workflow-config"],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    log = result.stdout + result.stderr
    run_id = _run_id(log)
    if run_id:
        subprocess.run(["scancel", "--name", run_id], env=env, capture_output=True)
    assert result.returncode != 0, log[-3000:]
    assert "Slurm partition 'workq' has no GPUs" in log, log[-3000:]
    assert "--set-resources train_kd:gpu=0 train_pack:gpu=0 train_pure:gpu=0" in log
    assert log.count("has no GPUs") == 1
    # not one job went to Slurm
    jobs = _sacct(env, "-X", "-P", "-n", "-S", "now-10minutes", "--name", run_id or "-", "-o",
                  "JobIDRaw").stdout.split()  # fmt: skip
    assert run_id and not jobs, jobs
    assert not (tmp_path / "results").exists()
