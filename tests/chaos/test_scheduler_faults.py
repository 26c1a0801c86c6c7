"""Scheduler faults: quick jobs through the PBS executor while qstat fails every k-th call,
answers later than the executor's command timeout, keeps no job history, while qsub fails
transiently or is refused for a queue limit, and all of these at once. The sweep completes;
no job is marked failed or killed that was not; never two jobs for one target."""

from __future__ import annotations

import subprocess

import pytest
from chaoslib import (
    HERE,
    SNAKEMAKE,
    Sampler,
    call_lines,
    job_history,
    line_count,
    overlapping_jobs,
    registry,
    registry_problems,
    successes_by_name,
)
from conftest import COUNTS, FULL

pytestmark = pytest.mark.slow
WORKFLOW = HERE / "workflows/Snakefile"
JOBS = 4
TIMEOUT = 3  # --pbs-command-timeout: a slow qstat (5 s) is abandoned after this
SLOW = {"KDFLOW_CHAOS_SLOW_QSTAT_DELAY": str(TIMEOUT + 2)}

# qstat faults go through tests/chaos/bin/qstat, which counts only the executor's calls (the
# shim's own PBS_SHIM_QSTAT_FAIL also counts the queue sampler's, which can fall into step with
# the polls and take every fault, or none); qsub is called by the executor alone.
SCENARIOS = {
    "qstat fails every 2nd call": {"KDFLOW_CHAOS_QSTAT_FAIL_EVERY": "2"},
    "qstat slower than the timeout every 3rd call": {**SLOW, "KDFLOW_CHAOS_SLOW_QSTAT_EVERY": "3"},
    "no job history": {"PBS_SHIM_HISTORY": "0"},
    "qsub fails every 2nd call": {"PBS_SHIM_QSUB_FAIL": "2"},
    "queue limit of 1 queued job": {"PBS_SHIM_MAX_QUEUED": "1"},
    "all at once": {
        "KDFLOW_CHAOS_QSTAT_FAIL_EVERY": "3",
        **SLOW,
        "KDFLOW_CHAOS_SLOW_QSTAT_EVERY": "4",
        "PBS_SHIM_HISTORY": "0",
        "PBS_SHIM_QSUB_FAIL": "3",
        "PBS_SHIM_MAX_QUEUED": "1",
    },
}
# small counts: every fault at once; full counts: each fault alone too, fault_rounds times
RUNS = [
    (name, i)
    for name in (SCENARIOS if FULL else ["all at once"])
    for i in range(COUNTS.fault_rounds)
]


def _faults(knobs, qsub_lines, first_qsub, fault_dir, jobs_made):
    """How many faults were injected into the executor's calls during the run."""
    out = {}
    if "KDFLOW_CHAOS_QSTAT_FAIL_EVERY" in knobs:
        out["qstat failed"] = line_count(fault_dir / "qstat-fail.faults")
    if "KDFLOW_CHAOS_SLOW_QSTAT_EVERY" in knobs:
        out["qstat too slow"] = line_count(fault_dir / "slow-qstat.faults")
    k = int(knobs.get("PBS_SHIM_QSUB_FAIL", 0))
    if k:
        out["qsub failed"] = sum(1 for n in range(first_qsub + 1, first_qsub + 1 + len(qsub_lines))
                                 if n % k == 0)  # fmt: skip
    if knobs.get("PBS_SHIM_HISTORY") == "0":
        out["ended jobs unknown to qstat"] = jobs_made
    if "PBS_SHIM_MAX_QUEUED" in knobs:
        out["qsub refused: queue limit"] = len(qsub_lines) - jobs_made - out.get("qsub failed", 0)
    return out


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario, round_", RUNS, ids=[f"{n} #{i + 1}" for n, i in RUNS])
def test_scheduler_faults_fail_nothing_and_duplicate_nothing(
    pbs_cluster, chaos, tmp_path, scenario, round_
):
    knobs = SCENARIOS[scenario]
    workdir, fault_dir = tmp_path / "work", tmp_path / "faults"
    workdir.mkdir()
    env = {
        **pbs_cluster.env,
        "PATH": f"{HERE / 'bin'}:{pbs_cluster.env['PATH']}",  # the faulty qstat first
        "KDFLOW_CHAOS_FAULTS": str(fault_dir),
        "SNAKEMAKE_PBS_QUEUE": "workq",
        **knobs,
    }
    first_qsub = line_count(pbs_cluster.state_dir / "qsub.calls")
    with Sampler(pbs_cluster.env, workdir) as sampler:
        result = subprocess.run(
            [*SNAKEMAKE, "-s", str(WORKFLOW), "-d", str(workdir), "--executor", "pbs",
             "--jobs", "8", "--retries", "0", "--latency-wait", "10",
             "--pbs-status-interval", "1", "--pbs-command-timeout", str(TIMEOUT),
             "--pbs-submit-backoff", "1", "--config", f"jobs={JOBS}", "nap=2"],
            env=env, cwd=workdir, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
    log = result.stdout[-4000:] + result.stderr[-4000:]
    history = job_history(pbs_cluster, workdir)
    faults = _faults(
        knobs, call_lines(pbs_cluster, "qsub", first_qsub), first_qsub, fault_dir, len(history)
    )
    overlaps = overlapping_jobs(history)
    chaos.faults = sum(faults.values())
    chaos.duplicates = len(sampler.duplicates) + len(overlaps)
    chaos.detail.update(faults=faults, jobs=len(history), queue_samples=sampler.samples)

    assert result.returncode == 0, log
    assert len(registry(workdir)) == JOBS and len(history) == JOBS, (history, log)
    # nothing failed, nothing was killed, no qsub lost its job: one successful job per target
    problems = registry_problems(workdir, allowed=("success",)) + overlaps
    problems += [f"{n}: {c} successful jobs" for n, c in successes_by_name(history).items()
                 if c != 1]  # fmt: skip
    assert problems == [] and sampler.duplicates == [], (problems, sampler.duplicates, log)
    assert all(count > 0 for count in faults.values()), f"a fault was never injected: {faults}"
