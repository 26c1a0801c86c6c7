"""kdflow through profiles/pbs on a real OpenPBS server (the `openpbs` fixture), submitted by
an ordinary user: walltime kills and resumes, a SIGKILLed controller, a job deleted by hand,
memory kills, queue limits, Ctrl-C, no job history, and several jobs in one qstat; the queue is
sampled for duplicate jobs all along and the server's own history checked at the end.

tests/chaos uses SWEEP, ON_OPENPBS, SITE and OpenPBSSampler."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from pathlib import Path

import kdflow_test_hooks as hooks
import pytest
import torch
import yaml

pytestmark = pytest.mark.slow

# The demo's shape. The walltime kill, the controller kill and the qdel below are made certain
# by holds (tests/hooks/kdflow_test_hooks.py), never hoped for from the machine's speed.
SWEEP = {
    "seeds": [0],
    "datasets": {"digits": {"mem_mb": 2000, "runtime": 1}},
    "models": ["resnet20", "resnet8"],
    "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
    "methods": {"logit": {"temperature": 4}},
    "alphas": [0.5, 0.9],  # packing: teacher (the default): both students train in one job
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
# On OpenPBS: 5 epochs; the baselines get a 2-minute walltime, the pack of two students 30
# minutes (ON_OPENPBS). The teacher's first job to finish an epoch holds until the server kills
# it at its walltime, so that kill is certain on any machine; the 2 minutes leave room on a slow
# one for a job's start and an epoch (15-35 s each on 2 loaded cores), so that every later job
# makes progress. The pack's first job past epoch 1 holds until the test deletes it, which it
# does after a SIGKILLed controller's successor has adopted it: its 30 minutes are only a
# safety net.
OPENPBS_SWEEP = {
    **SWEEP,
    "datasets": {"digits": {"mem_mb": 2000, "runtime": 2}},
    "train": {**SWEEP["train"], "epochs": 5, "lr_milestones": [4]},
}
# One thread per job; profiles/pbs's GPU request as it is (a CLI --set-resources replaces the
# profile's); a slow machine may kill a job at its walltime before it makes progress: allow
# more of those than the default 2 before giving up.
ON_OPENPBS = [
    "--set-threads", "train_pure=1", "train_kd=1", "train_pack=1",
    "--set-resources", "train_pure:gpu=1", "train_kd:gpu=1", "train_pack:gpu=1",
    "train_pack:runtime=30",
    "--pbs-status-interval", "3", "--pbs-max-stalled-walltime-kills", "5",
]  # fmt: skip
# The site's settings, as a user exports them for profiles/pbs (CHPC's GPU queue name)
SITE = {"SNAKEMAKE_PBS_QUEUE": "gpu_1", "SNAKEMAKE_PBS_PROJECT": "ci"}
TEACHER = "results/digits/pure/resnet20/seed0"
STUDENT = "results/digits/pure/resnet8/seed0"
KD = "results/digits/logit/resnet20-resnet8/alpha0.5/seed0"  # the pack's first student
KD2 = "results/digits/logit/resnet20-resnet8/alpha0.9/seed0"
# the holds: the first job of the teacher, and of the pack (KD is its first student), that has
# finished epoch 1 blocks until it is killed (by the walltime, and by the test's qdel)
HOLDS = {TEACHER: 1, KD: 1}


def _hold(workdir, holds):
    """Make the jobs run from `workdir` hold as `holds` says (tests/hooks)."""
    (workdir / hooks.HOOKS_FILE).write_text(json.dumps({"hold": holds}))


class OpenPBSSampler(threading.Thread):
    """Asks the real server every second which of the jobs submitted from `workdir` are alive
    (text `qstat -f` as root, so every user's jobs are seen: OpenPBS's `-F json` is not to be
    trusted with several jobs); remembers any job name seen twice. A context manager."""

    def __init__(self, openpbs, workdir):
        super().__init__(daemon=True)
        self.openpbs, self.workdir = openpbs, Path(workdir)
        self.stop, self.samples, self.duplicates = threading.Event(), 0, []
        self.jobs_seen: set[str] = set()

    def alive_names(self) -> list[str] | None:
        """Job_Name of every live job of the workdir, one entry per job; None: no answer."""
        try:
            jobs = self.openpbs.jobs_of(self.workdir)
        except RuntimeError:
            return None
        return [j["Job_Name"] for j in jobs.values() if j["job_state"] not in ("F", "X")]

    def run(self):
        while not self.stop.is_set():
            names = self.alive_names()
            if names is not None:
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


def _snakemake(openpbs, workdir, *args):
    """`snakemake` of the session's workflow copy, in `workdir`, as the test user."""
    return ["python", "-m", "snakemake", "-s", openpbs.workflow / "Snakefile", "-d", workdir,
            *args]  # fmt: skip


# Where the registry is: kdflow's profile sets .kdflow/pbs; the small workflows run the
# executor with its defaults, as any Snakemake workflow would.
KDFLOW_REGISTRY, PLUGIN_REGISTRY = ".kdflow/pbs", ".snakemake-pbs"


def _registry(workdir, directory=KDFLOW_REGISTRY):
    return [json.loads(p.read_text()) for p in (workdir / directory / "targets").glob("*.json")]


def _succeeded(record) -> bool:
    return bool(record["submissions"]) and record["submissions"][-1]["outcome"] == "success"


def _weights(directory):
    return torch.load(directory / "best.pth", weights_only=False)["model"]


def _epoch(directory) -> int:
    try:
        return json.loads((directory / "status.json").read_text()).get("epoch") or 0
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def _stop_on_teardown(request, process):
    """A failed assertion must not leave a controller or a reference run going for minutes."""

    def stop():
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)  # started in a session of its own
            process.wait()

    request.addfinalizer(stop)
    return process


def _log(workdir, name="controller.log", chars=6000):
    path = workdir / name
    return path.read_text()[-chars:] if path.exists() else f"(no {name})"


@pytest.mark.timeout(3600)  # a safety net: every wait below is for an event
def test_sweep_survives_walltime_kills_a_sigkilled_controller_and_a_qdel(openpbs, request):
    """The demo-shaped sweep through profiles/pbs (site settings from the environment) on
    OpenPBS: the teacher is killed at its walltime and resumes; the controller is SIGKILLed
    while the students' pack job trains and a new one adopts it; that job is then deleted by
    hand and resubmitted, and both students resume. Never two live jobs for one target
    (sampled every second, and in the server's history), and the results equal a local run's
    bit for bit.

    Each event is made, not hoped for (HOLDS, tests/hooks): the teacher's first job past
    epoch 1 holds until its walltime kills it; the pack's first job past epoch 1 holds until the
    test has killed the controller, seen the next one adopt the job, and deleted it."""
    pbs, local = openpbs.workdir("sweep-pbs"), openpbs.workdir("sweep-local")
    for d in (pbs, local):
        (d / "sweep.yaml").write_text(yaml.safe_dump(OPENPBS_SWEEP))
    _hold(pbs, HOLDS)
    config = ["--configfile", "sweep.yaml", "--replace-workflow-config"]
    profile = ["--profile", openpbs.workflow / "profiles/pbs", *config, *ON_OPENPBS]

    # the same sweep on this machine, never interrupted, alongside (the cores are shared), with
    # the same Python and torch as the jobs
    reference = _stop_on_teardown(request, openpbs.popen(
        *_snakemake(openpbs, local, *config, "--profile", openpbs.workflow / "profiles/local",
                    "--cores", "1"),
        cwd=local, log=local / "reference.log",
    ))  # fmt: skip
    sampler = OpenPBSSampler(openpbs, pbs)
    sampler.start()
    request.addfinalizer(sampler.stop.set)
    first = _stop_on_teardown(
        request,
        openpbs.popen(
            *_snakemake(openpbs, pbs, *profile), cwd=pbs, log=pbs / "controller.log", env=SITE
        ),  # fmt: skip
    )

    def held(directory, controller):
        """The job that holds `directory`; 'controller ended' if the controller ended first."""
        if controller.poll() is not None:
            return "controller ended"
        return hooks.held_by(pbs, directory)

    # the teacher's held job ends at its walltime; the pack starts once a later one finished
    teacher_job = openpbs.wait_for(lambda: held(TEACHER, first), 1200, interval=1,
                                   what="the teacher to finish an epoch and hold")  # fmt: skip
    assert teacher_job != "controller ended", _log(pbs)
    pack_job = openpbs.wait_for(lambda: held(KD, first), 1800, interval=1,
                                what="the pack job to finish an epoch and hold")  # fmt: skip
    assert pack_job != "controller ended", _log(pbs)
    assert json.loads((pbs / KD / "status.json").read_text())["pbs_job_id"] == pack_job

    # SIGKILL the controller while the pack's job trains (held: alive whatever the speed)
    os.killpg(first.pid, signal.SIGKILL)  # the controller, nothing else: jobs are the server's
    first.wait()
    live_before = [r for r in _registry(pbs) if r["submissions"][-1]["outcome"] is None]
    assert pack_job in {r["submissions"][-1]["job_id"] for r in live_before}, live_before
    assert pack_job in openpbs.jobs_of(pbs), "its job should still be alive on the server"

    unlock = openpbs.run(*_snakemake(openpbs, pbs, *profile, "--unlock"), cwd=pbs, env=SITE)
    assert unlock.returncode == 0, unlock.stderr
    second = _stop_on_teardown(
        request,
        openpbs.popen(
            *_snakemake(openpbs, pbs, *profile), cwd=pbs, log=pbs / "controller.log", env=SITE
        ),  # fmt: skip
    )
    openpbs.wait_for(
        lambda: second.poll() is not None or f"adopting live job {pack_job}" in _log(pbs),
        600, interval=1, what="the new controller to adopt the pack's job",
    )  # fmt: skip
    assert f"adopting live job {pack_job}" in _log(pbs), _log(pbs)

    # a user deletes the adopted pack job by hand: it is resubmitted and both students resume
    deleted = pack_job
    qdel = openpbs.run("qdel", deleted)
    assert qdel.returncode == 0, qdel.stderr

    assert second.wait(timeout=1800) == 0, _log(pbs)
    sampler.stop.set()
    sampler.join()

    log = (pbs / "controller.log").read_text()
    assert "adopting live job" in log
    # the sweep outlived the teacher's 2-minute walltime: the sampler saw it throughout
    assert sampler.samples >= 10 and sampler.jobs_seen and sampler.duplicates == []
    records = {r["rule"] + ":" + r["outputs"][0]: r for r in _registry(pbs)}
    teacher = records[f"train_pure:{TEACHER}/completed"]
    assert teacher["walltime_kills"] >= 1, teacher["submissions"]
    held_outcome = {s["job_id"]: s["outcome"] for s in teacher["submissions"]}[teacher_job]
    assert held_outcome == "walltime", teacher["submissions"]  # held, killed at its walltime
    kd = records[f"train_pack:{KD}/completed"]
    assert kd["outputs"] == [f"{KD}/completed", f"{KD2}/completed"]
    outcomes = {s["job_id"]: s["outcome"] for s in kd["submissions"]}
    assert outcomes[deleted] == "killed", kd["submissions"]
    assert all(_succeeded(r) and not r["failed"] for r in records.values())
    # every submission of a target came after the previous one ended: never two at once
    for record in records.values():
        subs = record["submissions"]
        for earlier, later in zip(subs, subs[1:], strict=False):
            assert earlier["ended_at"] is not None and earlier["ended_at"] <= later["submitted_at"]

    # the server's own history says the same: each target's jobs one after another, the
    # teacher's first ended by the server at its walltime, the deleted one by qdel
    history = openpbs.history(pbs)
    assert openpbs.overlapping(history) == []
    jobs = {j["id"]: j for js in history.values() for j in js}
    assert set(jobs) == {s["job_id"] for r in records.values() for s in r["submissions"]}
    # (the first: the held one, or on a slow machine one killed before it finished an epoch)
    first_teacher_job = jobs[teacher["submissions"][0]["job_id"]]
    assert first_teacher_job["Exit_status"] == "-29", first_teacher_job
    assert jobs[teacher_job]["Exit_status"] == "-29", jobs[teacher_job]
    assert "exceeded resource walltime" in first_teacher_job["comment"]
    assert jobs[deleted]["Exit_status"] == "271", jobs[deleted]
    assert "terminated" in jobs[deleted]["comment"]
    # the profile's request, as the server recorded it
    assert first_teacher_job["queue"] == "gpu_1" and first_teacher_job["project"] == "ci"
    assert first_teacher_job["Resource_List.select"] == "1:ncpus=1:ngpus=1:mem=2000mb"
    assert first_teacher_job["Job_Owner"].startswith(f"{openpbs.user}@")
    # a pack of two asks for one more student's memory (pack_mem_mb, default 1000)
    assert jobs[deleted]["Resource_List.select"] == "1:ncpus=1:ngpus=1:mem=3000mb"

    # identical to the uninterrupted local run, bit for bit
    assert reference.wait(timeout=1800) == 0, _log(local, "reference.log")
    for experiment in (TEACHER, STUDENT, KD, KD2):
        got = json.loads((pbs / experiment / "metrics.json").read_text())
        want = json.loads((local / experiment / "metrics.json").read_text())
        for key in ("final_acc", "best_acc", "best_epoch"):
            assert got[key] == want[key], (experiment, key)
        a, b = _weights(pbs / experiment), _weights(local / experiment)
        assert all(torch.equal(a[k], b[k]) for k in b), experiment
    assert (pbs / "results/summary/results.csv").read_text() == (
        local / "results/summary/results.csv"
    ).read_text()


# -- small jobs: tests/cluster/workflows/Snakefile -------------------------------------------


def _small_argv(openpbs, workdir, *args):
    snakefile = openpbs.workflow / "tests/cluster/workflows/Snakefile"
    return ["python", "-m", "snakemake", "-s", snakefile, "-d", workdir, "--executor", "pbs",
            "--jobs", "8", "--pbs-status-interval", "2", "--retries", "0", *args]  # fmt: skip


def _small(openpbs, workdir, *args, env=None, timeout=600):
    env = {"SNAKEMAKE_PBS_QUEUE": "workq", **(env or {})}
    return openpbs.run(*_small_argv(openpbs, workdir, *args), env=env, cwd=workdir,
                       timeout=timeout)  # fmt: skip


def _ok(result):
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def test_a_resource_the_server_lacks_stops_the_run_at_the_first_qsub(openpbs):
    # As `profiles/pbs` did on a stock server, where `ngpus` is not defined: here `scratch_ssd`.
    workdir = openpbs.workdir("unknown-resource")
    before = openpbs.calls("qsub")
    result = _small(openpbs, workdir, "naps", "--pbs-select-extra", "scratch_ssd=1")
    assert result.returncode != 0
    assert openpbs.calls("qsub") - before == 1  # one refusal, then nothing more is tried
    assert "does not know the resource `scratch_ssd`" in result.stderr
    assert result.stderr.count("Unknown resource") == 1


def test_memory_kill_is_resubmitted_with_more_memory(openpbs):
    """The mom ($enforce mem) kills the hog at its 500 MB (Exit_status -27); the executor
    resubmits it with twice the memory, and it succeeds."""
    workdir = openpbs.workdir("hog")
    result = _small(openpbs, workdir, "hog.done", "--config", "hog_mb=700",
                    "--pbs-mem-growth", "2")  # fmt: skip
    _ok(result)
    (record,) = _registry(workdir, PLUGIN_REGISTRY)
    assert record["memory_kills"] >= 1
    first, last = record["submissions"][0], record["submissions"][-1]
    assert first["outcome"] == "memory" and first["mem_mb"] == 500
    assert last["outcome"] == "success" and last["mem_mb"] >= 1000
    assert "memory" in result.stdout + result.stderr
    killed = openpbs.jobs(first["job_id"], history=True)[first["job_id"]]
    assert killed["Exit_status"] == "-27" and "exceeded resource mem" in killed["comment"]


@pytest.fixture
def max_queued(openpbs):
    """A per-user limit of one job in the server (`max_queued`), lifted after the test even
    when it fails."""
    openpbs.qmgr("set server max_queued = [u:PBS_GENERIC=1]")
    try:
        yield 1
    finally:
        openpbs.qmgr("unset server max_queued")


def test_queue_limit_refusals_hold_jobs_back_without_failing(openpbs, max_queued):
    """With room for one job per user, qsub refuses the others (exit 38, `would exceed
    complex's per-user limit`): they are held back and submitted as room frees, never failed."""
    workdir = openpbs.workdir("limit")
    before = openpbs.calls("qsub")
    result = _small(openpbs, workdir, "naps")
    _ok(result)
    records = _registry(workdir, PLUGIN_REGISTRY)
    assert len(records) == 4 and all(_succeeded(r) for r in records)
    assert all(len(r["submissions"]) == 1 for r in records), "a refusal is not a failure"
    assert openpbs.calls("qsub") - before > 4, "the queue limit should have refused some"
    history = openpbs.history(workdir)
    assert len(history) == 4 and all(len(jobs) == 1 for jobs in history.values())
    # and one after another: the limit of one job held
    one_by_one = sorted(
        (j for js in history.values() for j in js), key=lambda j: openpbs.seconds(j["qtime"])
    )
    assert openpbs.overlapping({"all": one_by_one}) == []


def test_ctrl_c_removes_this_controllers_jobs(openpbs, request):
    """Ctrl-C (SIGINT to snakemake itself) deletes the jobs this controller submitted (held
    naps: only the deletion can end them)."""
    workdir = openpbs.workdir("ctrl-c")
    controller = _stop_on_teardown(request, openpbs.popen(
        *_small_argv(openpbs, workdir, "naps", "--config", "hold=1"),
        cwd=workdir, log=workdir / "controller.log", env={"SNAKEMAKE_PBS_QUEUE": "workq"},
    ))  # fmt: skip

    def live_jobs():
        return [
            s["job_id"]
            for r in _registry(workdir, PLUGIN_REGISTRY)
            for s in r["submissions"] if s["job_id"] and s["outcome"] is None
        ]  # fmt: skip

    jobs = openpbs.wait_for(lambda: len(live_jobs()) == 4 and live_jobs(), 300, what="4 jobs")

    def all_running():
        jobs = openpbs.jobs_of(workdir)
        return len(jobs) == 4 and all(j["job_state"] == "R" for j in jobs.values())

    openpbs.wait_for(all_running, 300, what="4 running jobs")
    controller.send_signal(signal.SIGINT)
    controller.wait(timeout=120)

    def states():
        history = openpbs.jobs_of(workdir, history=True)
        return {job_id: history[job_id]["job_state"] for job_id in jobs if job_id in history}

    openpbs.wait_for(lambda: set(states().values()) == {"F"}, 60, what="qdel of all")
    ended = openpbs.jobs_of(workdir, history=True)
    assert all(ended[j]["Exit_status"] == "271" for j in jobs), ended
    assert not (workdir / "nap0.done").exists()


@pytest.fixture
def no_job_history(openpbs):
    """The server keeps no job history (`job_history_enable = False`), restored after."""
    openpbs.qmgr("set server job_history_enable = False")
    try:
        yield
    finally:
        openpbs.qmgr("set server job_history_enable = True")


def test_jobs_end_right_without_job_history(openpbs, no_job_history):
    """Without history a finished job vanishes from qstat at once: the executor learns how
    each ended from the exit record the job script leaves, and resubmits none. (Turning
    history off also drops the history the server had.)"""
    workdir = openpbs.workdir("no-history")
    result = _small(openpbs, workdir, "naps")
    _ok(result)
    records = _registry(workdir, PLUGIN_REGISTRY)
    assert len(records) == 4 and all(_succeeded(r) and not r["failed"] for r in records)
    assert all(len(r["submissions"]) == 1 for r in records), [r["submissions"] for r in records]
    assert all(r["submissions"][0]["outcome"] == "success" for r in records)
    # what the executor saw of them: qstat -x answers nothing, and exits 0 (not 153)
    job_id = records[0]["submissions"][0]["job_id"]
    gone = openpbs.run("qstat", "-x", "-f", job_id)
    assert (gone.returncode, gone.stdout) == (0, ""), gone
    assert "PBS is not configured to maintain job history" in gone.stderr, gone
    gone = openpbs.run("qstat", "-f", job_id)
    assert gone.returncode == 153 and "Unknown Job Id" in gone.stderr, gone


def _job_ids(argv_line: str) -> list[str]:
    return [word for word in argv_line.split() if re.fullmatch(r"\d+\.[\w.-]+", word)]


def test_one_qstat_answers_every_job_in_flight(openpbs):
    """Four jobs in flight at once: each poll is ONE qstat naming several job ids, and what the
    real server printed for it holds every job asked for (OpenPBS's `qstat -x -f -F json`
    with several ids prints only the first). Every target is submitted exactly once."""
    workdir = openpbs.workdir("several")
    calls_before = len(openpbs.qstat_calls())

    def asked_about_several():
        return any(len(_job_ids(argv)) > 1 for argv, _ in openpbs.qstat_calls()[calls_before:])

    # the naps hold until a poll has asked about several of them: certain, on any machine
    controller = openpbs.popen(*_small_argv(openpbs, workdir, "naps", "--config", "hold=1"),
                               cwd=workdir, log=workdir / "controller.log",
                               env={"SNAKEMAKE_PBS_QUEUE": "workq"})  # fmt: skip
    try:
        openpbs.wait_for(lambda: controller.poll() is not None or asked_about_several(), 600,
                         what="a poll that asks about several jobs")  # fmt: skip
        (workdir / "release").touch()
        assert controller.wait(timeout=600) == 0, _log(workdir)
    finally:
        if controller.poll() is None:
            os.killpg(controller.pid, signal.SIGKILL)
            controller.wait()
    records = _registry(workdir, PLUGIN_REGISTRY)
    assert len(records) == 4 and all(_succeeded(r) and not r["failed"] for r in records)
    assert all(len(r["submissions"]) == 1 for r in records), [r["submissions"] for r in records]
    history = openpbs.history(workdir)
    assert len(history) == 4 and all(len(jobs) == 1 for jobs in history.values()), history

    # this test's polls: the calls about its own jobs (a call counted before it may be recorded
    # in between, such as an earlier test's, about jobs that had ended)
    mine = {s["job_id"] for r in records for s in r["submissions"]}
    calls = [(argv, out) for argv, out in openpbs.qstat_calls()[calls_before:]
             if set(_job_ids(argv)) <= mine]  # fmt: skip
    several = [(argv, out) for argv, out in calls if len(_job_ids(argv)) > 1]
    assert several, f"no poll asked for more than one job: {[argv for argv, _ in calls]}"
    for argv, out in several:
        answered = set(json.loads(out).get("Jobs", {})) if "-F json" in argv else set(
            openpbs.parse(out))  # fmt: skip
        assert set(_job_ids(argv)) <= answered, (argv, sorted(answered))


def test_openpbs_json_with_several_ids_prints_only_the_first(openpbs):
    """A fact of the server the executor must live with (OpenPBS cd7ab5ed, 23.06.06): text
    `qstat -x -f id1 id2` answers both; `-F json` only the first."""
    workdir = openpbs.workdir("json")
    (workdir / "job.sh").write_text("#!/bin/bash\nsleep 1\n")
    ids = []
    for _ in range(2):
        p = openpbs.run("qsub", "-q", "workq", "-l", "select=1:ncpus=1:mem=100mb", "job.sh",
                        cwd=workdir)  # fmt: skip
        assert p.returncode == 0, p.stderr
        ids.append(p.stdout.strip())
    openpbs.wait_for(lambda: all(openpbs.jobs(i, history=True).get(i, {}).get("job_state") == "F"
                                 for i in ids), 60, what="both jobs to finish")  # fmt: skip
    text = openpbs.run("qstat", "-x", "-f", *ids)
    assert set(openpbs.parse(text.stdout)) == set(ids)
    as_json = openpbs.run("qstat", "-x", "-f", "-F", "json", *ids)
    assert as_json.returncode == 0
    assert list(json.loads(as_json.stdout)["Jobs"]) == ids[:1]


def test_the_scheduler_the_tests_talk_to_is_openpbs(openpbs):
    """No shim can stand in: the user's qstat reaches a PBS server that says what it is."""
    client = openpbs.run("qstat", "--version")
    assert client.returncode == 0 and client.stdout.startswith("pbs_version = 23.06"), client
    server = openpbs.run("qstat", "-B", "-f")
    assert server.returncode == 0, server.stderr
    attrs = openpbs.parse(server.stdout.replace("Server:", "Job Id:", 1))
    (server_attrs,) = attrs.values()
    assert server_attrs["server_state"] == "Active"
    assert server_attrs["pbs_version"] == "23.06.06"
    assert server_attrs["job_history_enable"] == "True"  # the session started it as configured
