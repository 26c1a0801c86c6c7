"""Controller kills on the real OpenPBS: a demo-shaped sweep through profiles/pbs, run by the
server's test user, whose controller is SIGKILLed at random instants (and right after a qsub
or a qstat starts) and restarted each time by a cron tick (scripts/cron.sh cron, run as that
user), while a few of its training jobs are killed too (qdel by the user, and qsig -s KILL:
the server's mom SIGKILLs the job's processes). Afterwards every experiment completed exactly
once, no two live jobs ever trained one experiment (queue sampled every second; the server's
own history), and every result is bit-identical to a clean local run."""

from __future__ import annotations

import json
import os
import signal
import time

import kdflow_test_hooks as hooks
import pytest
import yaml
from chaoslib import (
    Sampler,
    alive,
    controller_pid,
    cron_env,
    differences,
    e2e,
    experiment_dirs,
    give,
    job_history,
    kill_controllers,
    make_project,
    outcomes,
    overlapping_jobs,
    registry,
    registry_problems,
    successes_by_name,
    tick,
    user_snakemake,
    wait_until,
)
from conftest import COUNTS, FULL

from snakemake_executor_plugin_pbs.submit import identity_of

pytestmark = pytest.mark.slow

E2E = e2e()
# The demo's shape (tests/cluster/test_e2e_pbs.py's SWEEP: two baselines, one teacher ->
# student pair, one seed, two alphas: one pack of two students) with a smaller teacher and
# fewer epochs, so that it can be killed many times in a few minutes; an hour's walltime, so
# that every end of a job here is a kill of ours or a success, on a machine of any speed.
SWEEP = {
    **E2E.SWEEP,
    "datasets": {"digits": {"mem_mb": 2000, "runtime": 60}},
    "models": ["resnet14", "resnet8"],
    "pairs": [{"teacher": "resnet14", "student": "resnet8"}],
    "train": {**E2E.SWEEP["train"], "epochs": 8, "lr_milestones": [6]},
}
EXPERIMENTS = sorted(
    [
        "results/digits/pure/resnet14/seed0",
        "results/digits/pure/resnet8/seed0",
        "results/digits/logit/resnet14-resnet8/alpha0.5/seed0",
        "results/digits/logit/resnet14-resnet8/alpha0.9/seed0",
    ]
)
# one thread per job, profiles/pbs otherwise unchanged (the server is a GPU site: ngpus=1 as
# the profile asks; the sweep trains on the CPU), the site's queue and project as a user
# exports them (as in test_e2e_pbs.py); a poll every 2 s
ARGS = [*E2E.ON_OPENPBS, "--pbs-status-interval", "2"]
# Each job's epochs are paced at least this many seconds apart (tests/hooks): a job trains for
# 7 x PACE seconds or more, however fast the machine, and the job kills find one training.
PACE = 2.0
# half at random instants, a quarter as a qsub starts, a quarter as a poll starts
KILL_MODES = ("random", "random", "qsub", "qstat")


def _wait_and_kill(openpbs, pid: int, mode: str, rng) -> bool | str:
    """SIGKILL the controller `pid` at an instant chosen by `mode`; False if it ended first,
    "landed" if the qsub or qstat it waited for started (else it kills after 20 s anyway).

    random: after 0.5-6 s. qsub: as soon as a qsub starts (its job may or may not exist
    yet; the registry holds only the intent). qstat: just after one of its polls starts
    (`qstat -x`). Calls are seen by the session's counting wrappers in front of the real
    commands.
    """
    deadline, landed = time.monotonic() + 20, False
    if mode == "random":
        deadline = time.monotonic() + rng.uniform(0.5, 6)
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
    else:
        tool = "qsub" if mode == "qsub" else "qstat"
        start = len(openpbs.call_args(tool))
        while time.monotonic() < deadline and alive(pid):
            new = openpbs.call_args(tool)[start:]
            if tool == "qsub" and new or any(" -x " in f" {line} " for line in new):
                time.sleep(rng.uniform(0, 0.3))
                landed = True
                break
            time.sleep(0.01)
    if not alive(pid):
        return False
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10, 0.05)
    return "landed" if landed else True


def _training(project, record) -> bool:
    """Is the experiment of this registry record training, with an epoch or more to go?
    (A job killed after it wrote `completed` is not a lost experiment: its target is done.)"""
    directory = project / record["outputs"][0].rsplit("/", 1)[0]
    try:
        status = json.loads((directory / "status.json").read_text())
    except (OSError, ValueError):
        return False
    return status.get("status") == "in_progress" and status["epoch"] < status["epochs"] - 1


def _kill_a_training_job(openpbs, project, killed_per_target, how: str) -> str | None:
    """As the test user, qdel (the mom sends SIGTERM, then SIGKILL) or qsig -s KILL (the mom
    SIGKILLs the job's processes at once, the job script's too) one running training job of
    `project` while it trains (at most twice per target, so that the executor's limits never
    give one up)."""
    training = {
        r["name"]
        for r in registry(project)
        if r["rule"].startswith("train") and r["outputs"] and _training(project, r)
    }
    running = [
        (job_id, identity_of(job["Job_Name"]))  # a job's name ends with its target's identity
        for job_id, job in openpbs.jobs_of(project).items()
        if job["job_state"] == "R"
        and identity_of(job["Job_Name"]) in training
        and killed_per_target.get(identity_of(job["Job_Name"]), 0) < 2
    ]
    if not running:
        return None
    job_id, name = running[0]
    p = openpbs.run(*how.split(), job_id)
    if p.returncode != 0:
        return None
    killed_per_target[name] = killed_per_target.get(name, 0) + 1
    return job_id


@pytest.mark.timeout(4 * 3600 if FULL else 1200)
def test_sigkilled_controller_is_restarted_by_cron_and_nothing_is_lost(openpbs, chaos):
    rng = chaos.rng
    local = openpbs.workdir("kills-local")
    (local / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    give(openpbs, local / "sweep.yaml")
    # the same sweep, never interrupted, on this machine alongside (the cores are shared), as
    # the test user with the Python and torch its jobs use
    reference = openpbs.popen(
        *user_snakemake(openpbs, local, "--configfile", "sweep.yaml",
                        "--replace-workflow-config", "--profile",
                        openpbs.workflow / "profiles/local", "--cores", "1"),
        cwd=local, log=local / "reference.log",
    )  # fmt: skip
    env = cron_env(openpbs, *ARGS, site=E2E.SITE)
    n = COUNTS.controller_kills
    kills, job_kills, modes, landed = 0, [], {}, {}
    plan = [KILL_MODES[i % len(KILL_MODES)] for i in range(n)]
    rng.shuffle(plan)
    # before which controller kills a training job is killed too (not the first ones: no
    # training job runs yet); one that finds none running is tried again at the next
    job_kill_at = set(rng.sample(range(min(2, n - 1), n), COUNTS.pbs_job_kills))
    pending_job_kills = 0

    def kill_an_owed_job() -> None:
        """qdel and qsig -s KILL in turn, a job of the current round's project that trains."""
        nonlocal pending_job_kills
        how = ("qdel", "qsig -s KILL")[len(job_kills) % 2]
        job = _kill_a_training_job(openpbs, project, killed_per_target, how)
        if job:
            pending_job_kills -= 1
            job_kills.append(f"{how} {job}")

    rounds, problems, projects = [], [], []
    chaos.detail.update(kill_modes=modes, landed=landed, rounds=rounds, job_kills=job_kills)
    try:
        while kills < COUNTS.controller_kills or pending_job_kills:
            # a round: one sweep in a fresh directory, killed until it is finished or the
            # count is reached; a sweep that finishes first is followed by another, and so is
            # one that ends with a job kill still owed (jobs are killed only while they train)
            project = make_project(openpbs, f"round{len(rounds)}", SWEEP)
            (project / hooks.HOOKS_FILE).write_text(json.dumps({"pace": PACE}))
            projects.append(project)
            sampler = Sampler(openpbs, project)
            sampler.start()
            killed_per_target: dict[str, int] = {}
            self_exits, round_kills = 0, 0
            while kills < COUNTS.controller_kills:
                result = tick(openpbs, project, env)
                assert result.returncode == 0, result.stdout + result.stderr
                if "the sweep is finished" in result.stdout:
                    break
                assert "started controller" in result.stdout, result.stdout
                # the pid file names `setsid nohup snakemake` until it has exec'ed snakemake
                pid = wait_until(lambda p=project: controller_pid(p), 15, 0.05)
                if kills in job_kill_at:
                    job_kill_at.discard(kills)
                    pending_job_kills += 1
                if pending_job_kills:
                    time.sleep(rng.uniform(0, 3))
                    kill_an_owed_job()
                mode = plan[kills]
                hit = pid and _wait_and_kill(openpbs, pid, mode, rng)
                if hit:
                    kills += 1
                    round_kills += 1
                    modes[mode] = modes.get(mode, 0) + 1
                    if hit == "landed":
                        landed[mode] = landed.get(mode, 0) + 1
                else:
                    self_exits += 1
                    log = (project / "logs/cron/controller.log").read_text()[-3000:]
                    assert self_exits <= 3, f"the controller keeps exiting by itself:\n{log}"
                chaos.kills = kills + len(job_kills)

            # let the last controller finish the sweep, then check that cron agrees
            for _ in range(3):
                result = tick(openpbs, project, env)
                if "the sweep is finished" in result.stdout:
                    break
                pid = wait_until(lambda p=project: controller_pid(p), 15, 0.05)
                while pending_job_kills and pid and alive(pid):  # job kills still owed
                    time.sleep(rng.uniform(1, 3))
                    kill_an_owed_job()
                if pid:
                    assert wait_until(lambda pid=pid: not alive(pid), 1800, 1), "sweep too slow"
            assert "the sweep is finished" in result.stdout, result.stdout + result.stderr
            sampler.stop.set()
            sampler.join()

            history = job_history(openpbs, project)
            overlaps = overlapping_jobs(history)
            once = {n: c for n, c in successes_by_name(history).items() if c != 1}
            chaos.duplicates += len(sampler.duplicates) + len(overlaps)
            problems += registry_problems(project) + overlaps
            problems += [f"{n}: {c} jobs ended with exit status 0" for n, c in once.items()]
            problems += [f"two live jobs named {n} (queue sample)" for n in sampler.duplicates]
            rounds.append(
                {
                    "kills": round_kills,
                    "jobs": len(history),
                    "queue_samples": sampler.samples,
                    "outcomes": outcomes(project),
                }
            )
            assert sampler.samples >= 3 and sampler.jobs_seen
            assert experiment_dirs(project) == EXPERIMENTS

        chaos.kills = kills + len(job_kills)
        # identical to the uninterrupted local run, bit for bit
        reference.wait(timeout=900)
        assert reference.returncode == 0, (local / "reference.log").read_text()[-3000:]
        assert experiment_dirs(local) == EXPERIMENTS
        for project in projects[: len(rounds)]:
            differing = [d for e in EXPERIMENTS for d in differences(project / e, local / e)]
            if (project / "results/summary/results.csv").read_text() != (
                local / "results/summary/results.csv"
            ).read_text():
                differing.append(f"{project}: results.csv differs")
            chaos.differing += len(differing)
            problems += differing
        assert kills == COUNTS.controller_kills
        assert len(job_kills) == COUNTS.pbs_job_kills, job_kills
        assert problems == [], f"seed {chaos.seed}:\n" + "\n".join(problems)
    finally:
        for project in projects:
            kill_controllers(project)
        if reference.poll() is None:
            os.killpg(reference.pid, signal.SIGKILL)  # a session of its own
            reference.wait()
