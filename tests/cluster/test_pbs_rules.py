"""The PBS executor's per-rule settings and its usage report, on the real OpenPBS server (the
`openpbs` fixture), submitted by an ordinary user: what the server itself recorded of each job
(`qstat -x -f` as root) is what the rule asked for, and the CSV shows what the jobs used."""

from __future__ import annotations

import csv
import json

import pytest

pytestmark = pytest.mark.slow

# the server's pbs_version answers only where PBS_EXEC/bin is; the jobs ask it by full path
QSTAT = "/opt/pbs/bin/qstat"


def _run(openpbs, workdir, *args):
    snakefile = openpbs.workflow / "tests/cluster/workflows/per_rule.smk"
    return openpbs.run(
        "python", "-m", "snakemake", "-s", snakefile, "-d", workdir, "--executor", "pbs",
        "--jobs", "4", "--retries", "0", "--pbs-status-interval", "2",
        "--pbs-status-interval-max", "5", *args,
        env={"SNAKEMAKE_PBS_QUEUE": "workq"}, cwd=workdir, timeout=600,
    )  # fmt: skip


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def _records(workdir):
    return [json.loads(p.read_text()) for p in (workdir / ".snakemake-pbs/targets").glob("*.json")]


def test_a_rules_own_select_place_project_and_flags_reach_the_server(openpbs):
    workdir = openpbs.workdir("per-rule")
    _ok(_run(openpbs, workdir, "select.done"))
    (record,) = _records(workdir)
    (submission,) = record["submissions"]
    job_id = submission["job_id"]
    job = openpbs.jobs(job_id, history=True)[job_id]
    assert job["Resource_List.select"] == "2:ncpus=1:mem=300mb"  # exactly the rule's
    assert job["Resource_List.ncpus"] == "2"
    assert job["Resource_List.mem"] == "600mb"  # the server's sum of the chunks
    assert job["Resource_List.place"] == "free"
    assert job["project"] == "rulesproj" and job["Mail_Points"] == "n"
    assert job["Exit_status"] == "0"
    # readable in qstat: the rule, then the identity the registry is keyed by
    assert job["Job_Name"] == f"two_chunks.{record['name']}"


def test_the_usage_report_shows_what_jobs_used(openpbs):
    """Two jobs touch 150 and 300 MB and hold them until the server has seen them; the CSV
    has each with rule and wildcards, the memory the server saw (the job's own Snakemake and
    Python on top: at most ~400 MB more) and its ratio to the request."""
    workdir = openpbs.workdir("usage")
    report = ("--pbs-efficiency-report", "--pbs-efficiency-report-path", "usage.csv")
    result = _run(openpbs, workdir, "memory_jobs", "--config", f"qstat={QSTAT}", *report)
    _ok(result)
    assert f"efficiency report of 2 jobs: {workdir / 'usage.csv'}" in result.stderr
    with open(workdir / "usage.csv") as f:
        rows = {row["wildcards"]: row for row in csv.DictReader(f)}
    assert set(rows) == {"mb=150", "mb=300"}
    used = {}
    for mb in (150, 300):
        row = rows[f"mb={mb}"]
        assert (row["rule"], row["outcome"]) == ("hold_memory", "success")
        used[mb] = float(row["mem_used_mb"])
        assert mb <= used[mb] <= mb + 400, row
        assert float(row["mem_requested_mb"]) == 1200
        assert float(row["mem_ratio"]) == pytest.approx(used[mb] / 1200, abs=0.001)
        assert 0 <= float(row["walltime_used_s"]) <= float(row["walltime_requested_s"]) == 300
        record = next(r for r in _records(workdir) if r["wildcards"] == {"mb": str(mb)})
        assert record["submissions"][-1]["usage"]["mem_mb"] == used[mb]
    # the same overhead in both: the difference is the difference in what they touched
    assert used[300] - used[150] == pytest.approx(150, abs=60)
