"""`kdflow status` against the real OpenPBS server: queued (held), running, finished, deleted
and failed jobs, asked about in one qstat; and what it says when the server does not answer."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time

import yaml

from kdflow.status import executor_settings
from snakemake_executor_plugin_pbs.registry import Registry, Submission, TargetRecord
from snakemake_executor_plugin_pbs.submit import job_name

# the executor's settings as profiles/pbs gives them, which `kdflow status` reads too
SETTINGS = executor_settings()
SWEEP = {
    "seeds": [0],
    "datasets": {"cifar100": {}},
    "models": ["resnet32x4", "resnet8x4", "wrn_40_2", "wrn_16_2"],
    "pairs": [{"teacher": "resnet32x4", "student": "resnet8x4"}],
    "alphas": [0.5, 0.9],
    "train": {"epochs": 240},
    # one job per student, so that each state is one experiment's (tests/test_status.py shows
    # the students of a pack job)
    "packing": "none",
}
RUNNING = "results/cifar100/pure/resnet32x4/seed0"
QUEUED = "results/cifar100/pure/resnet8x4/seed0"
DONE = "results/cifar100/pure/wrn_40_2/seed0"
KILLED = "results/cifar100/pure/wrn_16_2/seed0"
WAITING = "results/cifar100/logit/resnet32x4-resnet8x4/alpha0.5/seed0"
FAILED = "results/cifar100/logit/resnet32x4-resnet8x4/alpha0.9/seed0"
WIDE = 1000  # columns: more than any dashboard table needs


def _qsub(openpbs, workdir, *args):
    script = workdir / "sleep.sh"
    script.write_text("#!/bin/bash\nsleep 3600\n")  # alive for the test: deleted after it
    p = openpbs.run("qsub", "-q", "workq", "-l", "select=1:ncpus=1:mem=100mb", *args, script,
                    cwd=workdir)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def _state(openpbs, job_id):
    return openpbs.jobs(job_id, history=True).get(job_id, {}).get("job_state")


def _record(registry, experiment, job_id, **fields):
    target = f"{experiment}/completed"
    submission = Submission(job_id=job_id, submitted_at=time.time(), log_err=f"logs/{job_id}.err")
    name = job_name([target], prefix=SETTINGS.job_name_prefix)
    registry.save(TargetRecord(name=name, rule="train", outputs=[target],
                               submissions=[submission], **fields))  # fmt: skip


def _status(directory, **fields):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "status.json").write_text(json.dumps({"status": "in_progress", **fields}))


def _kdflow_status(openpbs, workdir, *args, env=None):
    """`kdflow status` in `workdir`, as the user types it."""
    return openpbs.run("kdflow", "status", "--configfile", "sweep.yaml", *args, cwd=workdir,
                       env=env)  # fmt: skip


def _as_user(openpbs, workdir):
    """The files the test wrote as root become the user's, as a controller would have left
    them."""
    subprocess.run(["chown", "-R", f"{openpbs.uid}:{openpbs.gid}", str(workdir)], check=True)


def test_dashboard_shows_every_state_from_one_qstat(openpbs):
    workdir = openpbs.workdir("dashboard")
    (workdir / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    registry = Registry(workdir / SETTINGS.registry_dir)
    running = _qsub(openpbs, workdir)
    queued = _qsub(openpbs, workdir, "-h")  # held: waits in the queue
    killed = _qsub(openpbs, workdir)

    # a job's used walltime shows once its mom has reported (~1-3 s after it starts; until
    # then `resources_used` is absent and the dashboard has no elapsed time to show)
    def both_run():
        used = openpbs.jobs(running).get(running, {}).get("resources_used.walltime")
        return _state(openpbs, killed) == "R" and used is not None

    openpbs.wait_for(both_run, 60, what="two jobs running")
    assert openpbs.run("qdel", killed).returncode == 0
    openpbs.wait_for(lambda: _state(openpbs, killed) == "F", 60, what="the deleted job to end")
    _record(registry, RUNNING, running)
    _status(workdir / RUNNING, epoch=30, epochs=240, best_acc=51.25, epoch_seconds=20.0)
    _record(registry, QUEUED, queued)
    _record(registry, KILLED, killed)
    _status(workdir / KILLED, epoch=12, epochs=240, best_acc=40.0)
    (workdir / DONE).mkdir(parents=True)
    (workdir / DONE / "completed").write_text("")
    failed_id = f"1.{openpbs.server}"
    _record(registry, FAILED, failed_id, failed="error: exit status 1, no progress in 3 tries")
    failed_name = job_name([f"{FAILED}/completed"], prefix=SETTINGS.job_name_prefix)
    registry_path = registry.path(failed_name)
    record = json.loads(registry_path.read_text())
    record["submissions"][0]["outcome"] = "error"
    registry_path.write_text(json.dumps(record))
    _as_user(openpbs, workdir)

    before = openpbs.calls("qstat")
    out = openpbs.run(
        "python", "-m", "kdflow.cli", "status", "--configfile", "sweep.yaml", "--json", cwd=workdir
    )
    assert out.returncode == 0, out.stderr
    assert openpbs.calls("qstat") - before == 1  # one query for all jobs (--version uncounted)
    report = json.loads(out.stdout)
    rows = {row["path"]: row for row in report["experiments"]}
    assert len(rows) == 6 and report["note"] is None
    assert report["counts"] == {"running": 1, "queued": 1, "done": 1, "ready": 1, "failed": 1,
                                "waiting": 1}  # fmt: skip

    r = rows[RUNNING]
    assert (r["state"], r["pbs_id"], r["pbs_state"]) == ("running", running, "R")
    assert (r["epoch"], r["epochs"], r["best_acc"]) == (30, 240, 51.25)
    assert r["eta"] == (240 - 30) * 20 and r["elapsed"] >= 0
    q = rows[QUEUED]
    assert (q["state"], q["pbs_id"], q["pbs_state"], q["elapsed"]) == ("queued", queued, "H", None)
    assert rows[DONE]["state"] == "done" and rows[DONE]["pbs_id"] is None
    k = rows[KILLED]
    assert (k["state"], k["pbs_id"], k["epoch"]) == ("ready", killed, 12)
    assert k["reason"] == "job ended; the controller will classify it"
    f = rows[FAILED]
    assert f["state"] == "failed" and f["log"] == f"logs/{failed_id}.err"
    assert f["reason"] == "error: exit status 1, no progress in 3 tries"
    assert rows[WAITING]["state"] == "waiting"

    # wider than the table can be (rich never widens a table past its cells), so no cell wraps
    # whatever the job ids' lengths; how it wraps on a narrow terminal is tests/test_status.py's
    table = _kdflow_status(openpbs, workdir, env={"COLUMNS": str(WIDE)}).stdout
    assert "finished 1/6 (16.7%)" in table
    assert re.search(r"\[R \d+:\d\d:\d\d", table), table  # its elapsed time, whatever it is
    assert "30/240" in table and "1:10:00" in table  # ETA 210 x 20 s
    assert "not started: 1 ready, 1 waiting on a teacher" in table
    assert f"log: logs/{failed_id}.err" in table


def test_dashboard_says_when_qstat_does_not_answer(openpbs):
    """The server cannot be reached (the client is pointed at a port nobody listens on: the
    real qstat exits 255, `cannot connect to server`): the dashboard says so and shows the job
    as submitted, state unknown."""
    workdir = openpbs.workdir("dashboard-down")
    (workdir / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    running = _qsub(openpbs, workdir)
    _record(Registry(workdir / SETTINGS.registry_dir), RUNNING, running)
    _as_user(openpbs, workdir)
    unreachable = {"PBS_BATCH_SERVICE_PORT": "9"}
    down = openpbs.run("qstat", "-f", running, env=unreachable)
    assert down.returncode == 255 and "cannot connect to server" in down.stderr, down
    out = _kdflow_status(openpbs, workdir, "--json", env=unreachable)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["note"].startswith("qstat did not answer")
    assert "cannot connect to server" in report["note"]
    row = next(r for r in report["experiments"] if r["path"] == RUNNING)
    assert row["state"] == "submitted" and row["pbs_id"] == running
    assert "PBS_BATCH_SERVICE_PORT" not in os.environ
