"""kdflow through profiles/pbs on the real scheduler: walltime kills, a SIGKILLed controller,
memory kills and queue limits, with the queue sampled for duplicate jobs all along."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
pytestmark = pytest.mark.slow

# The demo's shape, long enough that the teacher outlives its 1-minute walltime (Slurm
# enforces limits every ~30 s: a 60 s job dies at 60-90 s) and has to resume.
SWEEP = {
    "seeds": [0],
    "datasets": {"digits": {"mem_mb": 2000, "runtime": 1}},
    "models": ["resnet20", "resnet8"],
    "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
    "methods": {"logit": {"temperature": 4}},
    "alphas": [0.5],
    "train": {
        "epochs": 20,
        "batch_size": 64,
        "lr": 0.05,
        "lr_milestones": [15],
        "crop_padding": 2,
        "flip": False,
    },
    "device": "cpu",
}
# this machine has 2 cores and no GPU; everything else comes from profiles/pbs unchanged
ON_THIS_MACHINE = [
    "--set-threads", "train_pure=1", "train_kd=1",
    "--set-resources", "train_pure:gpu=0", "train_kd:gpu=0",
    "--pbs-status-interval", "3",
]  # fmt: skip


class QueueSampler(threading.Thread):
    """Asks the scheduler every second which of the jobs submitted from `workdir` are alive;
    remembers any job name seen twice."""

    def __init__(self, env, workdir):
        super().__init__(daemon=True)
        self.env, self.workdir = env, str(workdir)
        self.stop, self.samples, self.duplicates = threading.Event(), 0, []
        self.jobs_seen: set[str] = set()

    def run(self):
        while not self.stop.is_set():
            out = subprocess.run(
                ["qstat", "-f", "-F", "json"], env=self.env, capture_output=True, text=True
            )
            if out.returncode == 0:
                jobs = json.loads(out.stdout).get("Jobs", {})
                names = [
                    j["Job_Name"]
                    for j in jobs.values()
                    if j["job_state"] not in "FXC"
                    and j.get("Variable_List", {}).get("PBS_O_WORKDIR") == self.workdir
                ]
                self.duplicates += [n for n in set(names) if names.count(n) > 1]
                self.jobs_seen |= set(names)
                self.samples += 1
            self.stop.wait(1.0)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join()


def _controller(workdir, env, *extra):
    return subprocess.Popen(
        [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(workdir), *extra],
        env=env,
        cwd=workdir,
        stdout=open(workdir / "controller.log", "a"),  # noqa: SIM115
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a SIGKILL of the controller must not reach the jobs
    )


def _registry(workdir):
    return [json.loads(p.read_text()) for p in (workdir / ".kdflow/pbs/targets").glob("*.json")]


def _weights(directory):
    return torch.load(directory / "best.pth", weights_only=False)["model"]


def _stop_on_teardown(request, process):
    """A failed assertion must not leave a controller or a reference run going for minutes."""

    def stop():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # started in a session of its own
            process.wait()

    request.addfinalizer(stop)
    return process


def test_sweep_survives_walltime_kills_and_a_sigkilled_controller(pbs_cluster, tmp_path, request):
    env = {**pbs_cluster.env, "SNAKEMAKE_PBS_QUEUE": "workq", "SNAKEMAKE_PBS_PROJECT": "ci"}
    pbs, local = tmp_path / "pbs", tmp_path / "local"
    for d in (pbs, local):
        d.mkdir()
        (d / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    config = ["--configfile", "sweep.yaml", "--replace-workflow-config"]
    profile = ["--profile", str(ROOT / "profiles/pbs"), *config, *ON_THIS_MACHINE]

    # the same sweep on this machine, never interrupted, alongside (the cores are shared)
    reference = subprocess.Popen(
        [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(local), *config,
         "--profile", str(ROOT / "profiles/local"), "--cores", "1"],
        env=env, cwd=local, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    _stop_on_teardown(request, reference)
    sampler = QueueSampler(env, pbs)
    sampler.start()
    first = _stop_on_teardown(request, _controller(pbs, env, *profile))
    # kill the controller while the teacher trains (after its first walltime kill, if that
    # comes first) and the student's baseline is done or running
    pbs_cluster.wait_for(
        lambda: (pbs / "results/digits/pure/resnet20/seed0/status.json").exists(),
        240,
        what="the teacher to start training",
    )
    time.sleep(10)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    live_before = [r for r in _registry(pbs) if r["submissions"][-1]["outcome"] is None]
    assert live_before, "the controller should have had live jobs when it was killed"

    unlock = subprocess.run(
        [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), "-d", str(pbs), *profile, "--unlock"],
        env=env, cwd=pbs, capture_output=True, text=True,
    )  # fmt: skip
    assert unlock.returncode == 0, unlock.stderr
    second = _stop_on_teardown(request, _controller(pbs, env, *profile))
    assert second.wait(timeout=900) == 0, (pbs / "controller.log").read_text()[-5000:]
    sampler.stop.set()
    sampler.join()

    log = (pbs / "controller.log").read_text()
    assert "adopting live job" in log
    assert sampler.samples > 30 and sampler.jobs_seen and sampler.duplicates == []
    records = {r["rule"] + ":" + r["outputs"][0]: r for r in _registry(pbs)}
    teacher = records["train_pure:results/digits/pure/resnet20/seed0/completed"]
    assert teacher["walltime_kills"] >= 1, "the teacher should have been killed at walltime"
    assert all(r["done"] and not r["failed"] for r in records.values())
    # every submission of a target came after the previous one ended: never two at once
    for record in records.values():
        subs = record["submissions"]
        for earlier, later in zip(subs, subs[1:], strict=False):
            assert earlier["ended_at"] is not None and earlier["ended_at"] <= later["submitted_at"]

    # identical to the uninterrupted local run, bit for bit
    _, errors = reference.communicate(timeout=900)
    assert reference.returncode == 0, errors[-3000:]
    for experiment in (
        "results/digits/pure/resnet20/seed0",
        "results/digits/pure/resnet8/seed0",
        "results/digits/logit/resnet20-resnet8/alpha0.5/seed0",
    ):
        got = json.loads((pbs / experiment / "metrics.json").read_text())
        want = json.loads((local / experiment / "metrics.json").read_text())
        for key in ("final_acc", "best_acc", "best_epoch"):
            assert got[key] == want[key], (experiment, key)
        a, b = _weights(pbs / experiment), _weights(local / experiment)
        assert all(torch.equal(a[k], b[k]) for k in b), experiment
    assert (pbs / "results/summary/results.csv").read_text() == (
        local / "results/summary/results.csv"
    ).read_text()


SMALL = ROOT / "tests/cluster/workflows/Snakefile"


def _small(pbs_cluster, workdir, *args, env=None):
    env = {**pbs_cluster.env, "SNAKEMAKE_PBS_QUEUE": "workq", **(env or {})}
    return subprocess.run(
        [*SNAKEMAKE, "-s", str(SMALL), "-d", str(workdir), "--executor", "pbs", "--jobs", "8",
         "--pbs-status-interval", "2", "--retries", "0", *args],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_memory_kill_is_resubmitted_with_more_memory(pbs_cluster, tmp_path):
    result = _small(
        pbs_cluster, tmp_path, "hog.done", "--config", "hog_mb=700", "--pbs-mem-growth", "2"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (record,) = _registry(tmp_path)
    assert record["memory_kills"] >= 1
    first, last = record["submissions"][0], record["submissions"][-1]
    assert first["outcome"] == "memory" and first["mem_mb"] == 500
    assert last["outcome"] == "success" and last["mem_mb"] >= 1000
    assert "memory" in result.stdout + result.stderr


def test_queue_limit_refusals_hold_jobs_back_without_failing(pbs_cluster, tmp_path):
    before = pbs_cluster.calls("qsub")
    result = _small(pbs_cluster, tmp_path, "naps", env={"PBS_SHIM_MAX_QUEUED": "1"})
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    records = _registry(tmp_path)
    assert len(records) == 4 and all(r["done"] for r in records)
    assert all(len(r["submissions"]) == 1 for r in records), "a refusal is not a failure"
    assert pbs_cluster.calls("qsub") - before > 4, "the queue limit should have refused some"


def test_ctrl_c_removes_this_controllers_jobs(pbs_cluster, tmp_path):
    env = {**pbs_cluster.env, "SNAKEMAKE_PBS_QUEUE": "workq"}
    controller = subprocess.Popen(
        [*SNAKEMAKE, "-s", str(SMALL), "-d", str(tmp_path), "--executor", "pbs", "--jobs", "8",
         "--pbs-status-interval", "2", "naps", "--config", "nap=120"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def live_jobs():
        return [
            s["job_id"]
            for r in _registry(tmp_path) if (tmp_path / ".kdflow/pbs/targets").is_dir()
            for s in r["submissions"] if s["job_id"] and s["outcome"] is None
        ]  # fmt: skip

    jobs = pbs_cluster.wait_for(lambda: len(live_jobs()) == 4 and live_jobs(), 60, what="4 jobs")
    controller.send_signal(signal.SIGINT)
    controller.communicate(timeout=120)

    def state(job_id):
        out = pbs_cluster.run("qstat", "-x", "-f", "-F", "json", job_id).stdout
        return json.loads(out)["Jobs"][job_id]["job_state"]

    pbs_cluster.wait_for(lambda: all(state(j) == "F" for j in jobs), 60, what="qdel of all")
    assert not (tmp_path / "nap0.done").exists()
