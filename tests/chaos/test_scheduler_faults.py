"""Scheduler faults on the real OpenPBS: quick jobs through the PBS executor (as the server's
test user) while qstat fails every k-th call, answers later than the executor's command
timeout, the server keeps no job history, qsub fails transiently or is refused for a queue
limit, and all of these at once. The sweep completes; no job is marked failed or killed that
was not; never two jobs for one target."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest
from chaoslib import (
    FAULT_BIN,
    HERE,
    Sampler,
    job_history,
    line_count,
    overlapping_jobs,
    qsub_log,
    registry,
    registry_problems,
    successes_by_name,
    user_snakemake,
    wait_until,
)
from conftest import COUNTS, FULL, server_setting

pytestmark = pytest.mark.slow
WORKFLOW = HERE / "workflows/Snakefile"
JOBS = 4
# --pbs-command-timeout: ample for a real qsub or qstat on a loaded machine; a slow qstat
# (the wrapper's delay) outlasts it by far, so it is abandoned every time, on any machine
TIMEOUT = 10
SLOW = {"KDFLOW_CHAOS_SLOW_QSTAT_DELAY": str(TIMEOUT * 6)}
QUEUE_LIMIT = ("set server max_queued = [u:PBS_GENERIC=1]", "unset server max_queued")
NO_HISTORY = ("set server job_history_enable = False", "set server job_history_enable = True")

# What OpenPBS cannot do on demand (fail or stall a qstat, fail a qsub) goes through the thin
# wrappers of tests/chaos/bin, in front of the real commands and on the executor's PATH alone
# (they count only its calls: the queue sampler asks the server directly). What the server can
# do, it does: no job history, a per-user queue limit (qmgr, as root, undone after the run).
SCENARIOS = {
    "qstat fails every 2nd call": {"env": {"KDFLOW_CHAOS_QSTAT_FAIL_EVERY": "2"}},
    "qstat slower than the timeout every 3rd call": {
        "env": {**SLOW, "KDFLOW_CHAOS_SLOW_QSTAT_EVERY": "3"}
    },
    "no job history": {"qmgr": [NO_HISTORY]},
    "qsub fails every 2nd call": {"env": {"KDFLOW_CHAOS_QSUB_FAIL_EVERY": "2"}},
    "queue limit of 1 queued job": {"qmgr": [QUEUE_LIMIT]},
    "all at once": {
        "env": {
            "KDFLOW_CHAOS_QSTAT_FAIL_EVERY": "3",
            **SLOW,
            "KDFLOW_CHAOS_SLOW_QSTAT_EVERY": "4",
            "KDFLOW_CHAOS_QSUB_FAIL_EVERY": "3",
        },
        "qmgr": [NO_HISTORY, QUEUE_LIMIT],
    },
}
# small counts: every fault at once; full counts: each fault alone too, fault_rounds times
RUNS = [
    (name, i)
    for name in (SCENARIOS if FULL else ["all at once"])
    for i in range(COUNTS.fault_rounds)
]


def _faults(scenario, fault_dir, qsubs, history):
    """How many faults were injected into the executor's calls during the run."""
    env, qmgr = scenario.get("env", {}), scenario.get("qmgr", [])
    out = {}
    if "KDFLOW_CHAOS_QSTAT_FAIL_EVERY" in env:
        out["qstat failed"] = line_count(fault_dir / "qstat-fail.faults")
    if "KDFLOW_CHAOS_SLOW_QSTAT_EVERY" in env:
        out["qstat too slow"] = line_count(fault_dir / "slow-qstat.faults")
    if "KDFLOW_CHAOS_QSUB_FAIL_EVERY" in env:
        out["qsub failed"] = line_count(fault_dir / "qsub-fail.faults")
    if NO_HISTORY in qmgr:
        # ended jobs that `qstat -x` no longer knew: only the accounting records tell of them
        out["ended jobs unknown to qstat"] = sum(
            j["source"] == "accounting" for j in history.values()
        )
    if QUEUE_LIMIT in qmgr:
        out["qsub refused: queue limit"] = sum(call["rc"] == 38 for call in qsubs)
    return out


def _injected_while_running(scenario, fault_dir, qsubs) -> bool:
    """Has every fault of `scenario` that can happen while the jobs run happened at least
    once? (The jobs are held until then: on a fast machine they would end before a fault.)"""
    env, qmgr = scenario.get("env", {}), scenario.get("qmgr", [])
    wanted = [
        fault_dir / name
        for variable, name in (
            ("KDFLOW_CHAOS_QSTAT_FAIL_EVERY", "qstat-fail.faults"),
            ("KDFLOW_CHAOS_SLOW_QSTAT_EVERY", "slow-qstat.faults"),
            ("KDFLOW_CHAOS_QSUB_FAIL_EVERY", "qsub-fail.faults"),
        )
        if variable in env
    ]
    refused = QUEUE_LIMIT not in qmgr or any(call["rc"] == 38 for call in qsubs)
    return refused and all(line_count(path) > 0 for path in wanted)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario, round_", RUNS, ids=[f"{n} #{i + 1}" for n, i in RUNS])
def test_scheduler_faults_fail_nothing_and_duplicate_nothing(openpbs, chaos, scenario, round_):
    knobs = SCENARIOS[scenario]
    workdir, fault_dir = openpbs.workdir("faults-work"), openpbs.workdir("faults")
    env = {
        "PATH": f"{FAULT_BIN}:{openpbs.path}",  # the fault wrappers first
        "KDFLOW_CHAOS_FAULTS": str(fault_dir),
        "SNAKEMAKE_PBS_QUEUE": "workq",
        **knobs.get("env", {}),
    }
    argv = user_snakemake(
        openpbs, workdir, "--executor", "pbs", "--jobs", "8", "--retries", "0",
        "--latency-wait", "10", "--pbs-status-interval", "1",
        "--pbs-command-timeout", str(TIMEOUT), "--pbs-submit-backoff", "1",
        "--config", f"jobs={JOBS}", "hold=1", snakefile=WORKFLOW,
    )  # fmt: skip
    with contextlib.ExitStack() as stack:
        for directive, restore in knobs.get("qmgr", []):
            stack.enter_context(server_setting(openpbs, directive, restore))
        with Sampler(openpbs, workdir) as sampler:
            # the jobs wait for `release`, made once every fault has struck while they run
            log_path = workdir / "controller.log"
            run = openpbs.popen(*argv, cwd=workdir, log=log_path, env=env)
            try:
                wait_until(lambda: run.poll() is not None or _injected_while_running(
                    knobs, fault_dir, qsub_log(fault_dir)), 600)  # fmt: skip
                (workdir / "release").touch()
                returncode = run.wait(timeout=600)
            finally:
                if run.poll() is None:
                    os.killpg(run.pid, signal.SIGKILL)
                    run.wait()
        log = log_path.read_text()[-8000:]
        qsubs = qsub_log(fault_dir)
        submitted = {call["job_id"] for call in qsubs if call["job_id"]}
        # read before the history comes back on: what the server can tell of them now
        history = job_history(openpbs, workdir, submitted)
    faults = _faults(knobs, fault_dir, qsubs, history)
    overlaps = overlapping_jobs(history)
    chaos.faults = sum(faults.values())
    chaos.duplicates = len(sampler.duplicates) + len(overlaps)
    chaos.detail.update(
        faults=faults, jobs=len(history), queue_samples=sampler.samples,
        qsub_calls=len(qsubs), history_sources=sorted({j["source"] for j in history.values()}),
    )  # fmt: skip

    assert returncode == 0, log
    assert len(registry(workdir)) == JOBS and len(history) == JOBS, (history, qsubs, log)
    assert set(history) == submitted, (sorted(history), sorted(submitted))
    # nothing failed, nothing was killed, no qsub lost its job: one successful job per target
    problems = registry_problems(workdir, allowed=("success",)) + overlaps
    problems += [f"{n}: {c} successful jobs" for n, c in successes_by_name(history).items()
                 if c != 1]  # fmt: skip
    assert problems == [] and sampler.duplicates == [], (problems, sampler.duplicates, log)
    assert sampler.samples > 3 and sampler.jobs_seen, (sampler.samples, sampler.jobs_seen)
    assert all(count > 0 for count in faults.values()), f"a fault was never injected: {faults}"
