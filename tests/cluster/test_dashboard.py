"""`kdflow status` against the real scheduler: queued, running, finished, killed and failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from snakemake_executor_plugin_pbs.registry import Registry, Submission, TargetRecord
from snakemake_executor_plugin_pbs.submit import job_name

ROOT = Path(__file__).resolve().parents[2]
SWEEP = {
    "seeds": [0],
    "datasets": {"cifar100": {}},
    "models": ["resnet32x4", "resnet8x4", "wrn_40_2", "wrn_16_2"],
    "pairs": [{"teacher": "resnet32x4", "student": "resnet8x4"}],
    "alphas": [0.5, 0.9],
    "train": {"epochs": 240},
}
RUNNING = "results/cifar100/pure/resnet32x4/seed0"
QUEUED = "results/cifar100/pure/resnet8x4/seed0"
DONE = "results/cifar100/pure/wrn_40_2/seed0"
KILLED = "results/cifar100/pure/wrn_16_2/seed0"
WAITING = "results/cifar100/logit/resnet32x4-resnet8x4/alpha0.5/seed0"
FAILED = "results/cifar100/logit/resnet32x4-resnet8x4/alpha0.9/seed0"


def _qsub(cluster, workdir, *args):
    script = workdir / "sleep.sh"
    script.write_text("#!/bin/bash\nsleep 300\n")
    p = cluster.run("qsub", "-q", "workq", "-l", "select=1:ncpus=1:mem=100mb", *args, str(script),
                    cwd=workdir)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def _record(registry, experiment, job_id, **fields):
    target = f"{experiment}/completed"
    submission = Submission(job_id=job_id, submitted_at=time.time(), log_err=f"logs/{job_id}.err")
    registry.save(TargetRecord(name=job_name([target]), rule="train", outputs=[target],
                               submissions=[submission], **fields))  # fmt: skip


def _status(directory, **fields):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "status.json").write_text(json.dumps({"status": "in_progress", **fields}))


def test_dashboard_shows_every_state_from_one_qstat(pbs_cluster, tmp_path):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    registry = Registry(tmp_path / ".kdflow/pbs")
    running = _qsub(pbs_cluster, tmp_path)
    queued = _qsub(pbs_cluster, tmp_path, "-h")  # held: waits in the queue
    killed = _qsub(pbs_cluster, tmp_path)
    pbs_cluster.wait_for(
        lambda: "job_state = R" in pbs_cluster.run("qstat", "-f", running).stdout, 60
    )
    pbs_cluster.run("qdel", killed)
    pbs_cluster.wait_for(
        lambda: "job_state = F" in pbs_cluster.run("qstat", "-fx", killed).stdout, 60
    )
    _record(registry, RUNNING, running)
    _status(tmp_path / RUNNING, epoch=30, epochs=240, best_acc=51.25, epoch_seconds=20.0)
    _record(registry, QUEUED, queued)
    _record(registry, KILLED, killed)
    _status(tmp_path / KILLED, epoch=12, epochs=240, best_acc=40.0)
    (tmp_path / DONE).mkdir(parents=True)
    (tmp_path / DONE / "completed").write_text("")
    _record(registry, FAILED, "1.pbs-ci", failed="error: exit status 1, no progress in 3 tries")
    registry_path = registry.path(job_name([f"{FAILED}/completed"]))
    record = json.loads(registry_path.read_text())
    record["submissions"][0]["outcome"] = "error"
    registry_path.write_text(json.dumps(record))

    before = pbs_cluster.calls("qstat")
    started = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "kdflow.cli", "status", "--configfile", "sweep.yaml", "--json"],
        env=pbs_cluster.env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    elapsed = time.monotonic() - started
    assert pbs_cluster.calls("qstat") - before == 1  # one query for all jobs (--version uncounted)
    report = json.loads(out.stdout)
    rows = {row["path"]: row for row in report["experiments"]}
    assert len(rows) == 6 and report["note"] is None
    assert report["counts"] == {"running": 1, "queued": 1, "done": 1, "ready": 1, "failed": 1,
                                "waiting": 1}  # fmt: skip

    r = rows[RUNNING]
    assert (r["state"], r["pbs_id"], r["pbs_state"]) == ("running", running, "R")
    assert (r["epoch"], r["epochs"], r["best_acc"]) == (30, 240, 51.25)
    assert r["eta"] == (240 - 30) * 20 and 0 <= r["elapsed"] < 120
    q = rows[QUEUED]
    assert (q["state"], q["pbs_id"], q["pbs_state"], q["elapsed"]) == ("queued", queued, "H", None)
    assert rows[DONE]["state"] == "done" and rows[DONE]["pbs_id"] is None
    k = rows[KILLED]
    assert (k["state"], k["pbs_id"], k["epoch"]) == ("ready", killed, 12)
    assert k["reason"] == "job ended; the controller will classify it"
    f = rows[FAILED]
    assert f["state"] == "failed" and f["log"] == "logs/1.pbs-ci.err"
    assert f["reason"] == "error: exit status 1, no progress in 3 tries"
    assert rows[WAITING]["state"] == "waiting"
    assert elapsed < 10

    table = subprocess.run(
        [sys.executable, "-m", "kdflow.cli", "status", "--configfile", "sweep.yaml"],
        env={**pbs_cluster.env, "COLUMNS": "200"}, cwd=tmp_path, capture_output=True, text=True,
    ).stdout  # fmt: skip
    assert "finished 1/6 (16.7%)" in table
    assert "[R 0:00:" in table and "30/240" in table and "1:10:00" in table  # ETA 210 x 20 s
    assert "not started: 1 ready, 1 waiting on a teacher" in table
    assert "log: logs/1.pbs-ci.err" in table


def test_dashboard_says_when_qstat_does_not_answer(pbs_cluster, tmp_path):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    running = _qsub(pbs_cluster, tmp_path)
    _record(Registry(tmp_path / ".kdflow/pbs"), RUNNING, running)
    env = {**pbs_cluster.env, "PBS_SHIM_QSTAT_FAIL": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "kdflow.cli", "status", "--configfile", "sweep.yaml", "--json"],
        env=env, cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    report = json.loads(out.stdout)
    assert report["note"].startswith("qstat did not answer")
    row = next(r for r in report["experiments"] if r["path"] == RUNNING)
    assert row["state"] == "submitted" and row["pbs_id"] == running
    assert os.environ.get("PBS_SHIM_QSTAT_FAIL") is None
