"""Job arrays (--pbs-array-jobs) of the PBS executor on the real OpenPBS, as an ordinary user:
40 ready jobs of one rule go out in at most 2 qsub calls; a SIGKILLed controller's successor
adopts the live subjobs and submits none twice; a subjob deleted by hand is resubmitted alone,
as a plain job; subjobs killed at their walltime and for memory are classified as such; with
arrays off the same workflow runs as 40 jobs.

Conditions are made: the jobs of the 40 hold until the test creates `release`, so they are
alive when the controller is killed and when one is deleted; the walltime jobs hold for ever
(only their 1-minute walltime ends them); the memory hogs hold too, after allocating well over
their request. Every job appends its id to `runs/<n>` as it starts, so a target run twice
shows. Cost (2 shared cores): ~1.5 min for the 40 with the kill and the qdel, ~1 min with
arrays off, ~1.5 min for the kills (the 1-minute walltime).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

TARGETS = 40
SNAKEFILE = """
rule all:
    input:
        expand("naps/{i}.done", i=range(40)),


rule nap:
    output:
        "naps/{i}.done",
    resources:
        mem_mb=400,  # the job's own Snakemake takes ~150 MB
        runtime=30,  # a safety net: the test releases them
    params:
        hold="until [ -e release ]; do sleep 0.2; done" if config.get("hold") else "true",
    shell:
        "mkdir -p runs && echo $PBS_JOBID >> runs/{wildcards.i} && {params.hold} && touch {output}"


rule limits:
    input:
        expand("wall/{i}.done", i=range(2)),
        expand("hog/{i}.done", i=range(2)),


rule wall:
    output:
        "wall/{i}.done",
    resources:
        mem_mb=400,
        runtime=1,  # minutes (Snakemake's runtime is whole minutes); it waits for ever
    shell:
        "until [ -e never ]; do sleep 0.2; done; touch {output}"


rule hog:
    output:
        "hog/{i}.done",
    resources:
        mem_mb=400,  # the hog allocates 900 MB more, and holds on to it
        runtime=10,
    shell:
        "python3 -c 'import os, time; x = bytearray(900 * 2**20); "
        "[time.sleep(0.2) for _ in iter(int, 1) if not os.path.exists(\\"never\\")]'; "
        "touch {output}"
"""
REGISTRY = ".snakemake-pbs"  # the plugin's default


def _workdir(openpbs, name: str) -> Path:
    workdir = openpbs.workdir(name)
    (workdir / "Snakefile").write_text(SNAKEFILE)
    return workdir


def _argv(*args: str) -> list[str]:
    return ["python", "-m", "snakemake", "--executor", "pbs", "--jobs", str(TARGETS),
            "--pbs-status-interval", "2", "--retries", "0", "--keep-going", *args]  # fmt: skip


def _run(openpbs, workdir: Path, *args: str):
    return openpbs.run(*_argv(*args), cwd=workdir, env={"SNAKEMAKE_PBS_QUEUE": "workq"},
                       timeout=600)  # fmt: skip


def _start(openpbs, request, workdir: Path, log: str, *args: str):
    """The controller in the background, as the test user; killed if the test fails."""
    process = openpbs.popen(*_argv(*args), cwd=workdir, log=workdir / log,
                            env={"SNAKEMAKE_PBS_QUEUE": "workq"})  # fmt: skip

    def stop():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    request.addfinalizer(stop)
    return process


def _records(workdir: Path) -> dict[str, dict]:
    """The registry's records by the target's output."""
    records = {}
    for path in (workdir / REGISTRY / "targets").glob("*.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):  # being replaced: read again at the next look
            continue
        records[record["outputs"][0]] = record
    return records


def _log(workdir: Path, name: str, chars: int = 6000) -> str:
    path = workdir / name
    return path.read_text()[-chars:] if path.exists() else f"(no {name})"


def _qsub_lines(openpbs, since: int) -> list[str]:
    return openpbs.call_args("qsub")[since:]


def _is_array(argv_line: str) -> bool:
    return re.search(r"(^| )-J 0-\d+( |$)", argv_line) is not None


def _subjobs(openpbs, workdir: Path) -> dict[str, dict[str, str]]:
    """Every subjob of the arrays submitted from `workdir`, as the server's history tells it
    (`qstat -x -f -t`, as root), by id."""
    arrays = [job_id for job_id, job in openpbs.jobs_of(workdir, history=True).items()
              if job.get("array") == "True"]  # fmt: skip
    if not arrays:
        return {}
    p = subprocess.run(["qstat", "-x", "-f", "-t", *arrays], env=openpbs.root_env,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert p.returncode == 0, p.stderr
    return {job_id: job for job_id, job in openpbs.parse(p.stdout).items() if "[]" not in job_id}


def test_40_jobs_go_out_as_arrays_survive_a_sigkill_and_a_qdel_without_duplicates(openpbs, request):
    workdir = _workdir(openpbs, "arrays")
    qsubs_before = openpbs.calls("qsub")
    first = _start(openpbs, request, workdir, "first.log", "--pbs-array-jobs", "nap",
                   "--config", "hold=1")  # fmt: skip

    def submitted():
        records = _records(workdir)
        return len(records) == TARGETS and all(
            r["submissions"] and r["submissions"][-1]["job_id"] for r in records.values()
        )

    openpbs.wait_for(lambda: first.poll() is not None or submitted(), 300,
                     what="40 subjob ids in the registry")  # fmt: skip
    assert first.poll() is None, _log(workdir, "first.log")
    arrays = _qsub_lines(openpbs, qsubs_before)
    assert 1 <= len(arrays) <= 2 and all(_is_array(argv) for argv in arrays), arrays
    records = _records(workdir)
    subjob_ids = {r["submissions"][0]["job_id"] for r in records.values()}
    assert len(subjob_ids) == TARGETS and all("[" in job_id for job_id in subjob_ids)

    # the controller dies; its subjobs hold (no release yet), certainly alive
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert openpbs.run("python", "-m", "snakemake", "--unlock", cwd=workdir).returncode == 0
    qsubs_at_restart = openpbs.calls("qsub")
    second = _start(openpbs, request, workdir, "second.log", "--pbs-array-jobs", "nap",
                    "--config", "hold=1", "--rerun-incomplete")  # fmt: skip
    openpbs.wait_for(
        lambda: second.poll() is not None
        or _log(workdir, "second.log", 10**7).count("adopting live job") == TARGETS,
        300, what="the restarted controller adopting all 40 subjobs",
    )  # fmt: skip
    assert second.poll() is None, _log(workdir, "second.log")
    assert openpbs.calls("qsub") == qsubs_at_restart, "a restart submitted again"

    # a subjob deleted by hand (once it runs): its target is resubmitted alone, as a plain job
    deleted_index = 7
    deleted_output = f"naps/{deleted_index}.done"
    deleted = records[deleted_output]["submissions"][0]["job_id"]
    openpbs.wait_for(lambda: (workdir / f"runs/{deleted_index}").exists(), 300,
                     what=f"subjob {deleted} to start")  # fmt: skip
    p = openpbs.run("qdel", deleted, cwd=workdir)
    assert p.returncode == 0, p.stderr

    def resubmitted():
        submissions = _records(workdir).get(deleted_output, {}).get("submissions", [])
        return len(submissions) == 2 and submissions[1]["job_id"]

    openpbs.wait_for(lambda: second.poll() is not None or resubmitted(), 300,
                     what="the deleted subjob's target resubmitted")  # fmt: skip
    (workdir / "release").touch()
    assert second.wait(timeout=600) == 0, _log(workdir, "second.log")

    # every target done; the deleted one's second job a plain one, the only qsub after restart
    assert all((workdir / f"naps/{i}.done").exists() for i in range(TARGETS))
    after_restart = _qsub_lines(openpbs, qsubs_at_restart)
    assert len(after_restart) == 1 and not _is_array(after_restart[0]), after_restart
    records = _records(workdir)
    first_try, second_try = records[deleted_output]["submissions"]
    assert first_try["job_id"] == deleted and first_try["outcome"] == "killed"
    assert second_try["array_id"] is None and "[" not in second_try["job_id"]
    assert second_try["outcome"] == "success"
    others = [r for output, r in records.items() if output != deleted_output]
    assert all([s["outcome"] for s in r["submissions"]] == ["success"] for r in others)
    # no target ran twice: each job wrote its id once as it started, the deleted one's two
    # jobs one after the other
    runs = {i: (workdir / f"runs/{i}").read_text().split() for i in range(TARGETS)}
    assert all(len(ids) == 1 for i, ids in runs.items() if i != deleted_index), runs
    assert runs[deleted_index] == [deleted, second_try["job_id"]]
    # and the server agrees: 40 subjobs in the arrays, one plain job, nothing else
    subjobs = _subjobs(openpbs, workdir)
    assert set(subjobs) == subjob_ids, sorted(subjobs)
    plain = [job_id for job_id, job in openpbs.jobs_of(workdir, history=True).items()
             if job.get("array") != "True"]  # fmt: skip
    assert plain == [second_try["job_id"]]
    ended = subjobs[deleted]
    assert openpbs.seconds(ended.get("obittime") or ended["mtime"]) <= openpbs.seconds(
        openpbs.jobs(plain[0], history=True)[plain[0]]["qtime"]
    )


def test_subjobs_killed_at_walltime_and_for_memory_are_classified_as_such(openpbs):
    workdir = _workdir(openpbs, "array-kills")
    qsubs_before = openpbs.calls("qsub")
    # given up at the first kill of each kind: a memory kill at the cap, one walltime kill
    result = _run(openpbs, workdir, "limits", "--pbs-array-jobs", "all",
                  "--pbs-max-stalled-walltime-kills", "1", "--pbs-max-mem-mb", "400")  # fmt: skip
    assert result.returncode != 0  # every target was given up
    arrays = _qsub_lines(openpbs, qsubs_before)
    assert len(arrays) == 2 and all(_is_array(argv) for argv in arrays), arrays
    records = _records(workdir)
    assert len(records) == 4
    for output, record in records.items():
        (submission,) = record["submissions"]
        assert submission["array_id"] and "[" in submission["job_id"]
        kind = "walltime" if output.startswith("wall/") else "memory"
        assert submission["outcome"] == kind, (output, submission)
        exit_status = {"walltime": "-29", "memory": "-27"}[kind]
        assert f"Exit_status {exit_status}" in submission["reason"], submission
        job = openpbs.jobs(submission["job_id"], history=True)[submission["job_id"]]
        assert job["Exit_status"] == exit_status, job
    log = result.stdout + result.stderr
    assert log.count("walltime: killed at its walltime limit") == 2, log[-4000:]
    assert log.count("memory: killed for exceeding its mem limit") == 2, log[-4000:]


def test_the_same_workflow_with_arrays_off_runs_40_jobs(openpbs):
    workdir = _workdir(openpbs, "no-arrays")
    qsubs_before = openpbs.calls("qsub")
    result = _run(openpbs, workdir)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    lines = _qsub_lines(openpbs, qsubs_before)
    assert len(lines) == TARGETS and not any(_is_array(argv) for argv in lines)
    records = _records(workdir)
    assert len(records) == TARGETS
    assert all([s["outcome"] for s in r["submissions"]] == ["success"] for r in records.values())
    assert all(s["array_id"] is None for r in records.values() for s in r["submissions"])
