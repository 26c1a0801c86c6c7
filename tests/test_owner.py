"""Ownership (kdflow.owner): who trains an experiment, whether that owner is alive under PBS,
Slurm or locally, and the trainer refusing to write beside one that may be alive (or taking
over from one that has ended). The claim files and races: tests/test_claim.py."""

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakedata import train_params, wait_stopped, write_prepared

from kdflow import owner as ownership
from kdflow.config import TrainSpec
from kdflow.owner import AlreadyOwned, Liveness, Owner, Verdict, claim
from kdflow.pack import train
from snakemake_executor_plugin_pbs.commands import CommandResult
from snakemake_executor_plugin_pbs.status import Dialect, Qstat

ROOT = Path(__file__).resolve().parents[1]
CAPTURED = ROOT / "plugins/snakemake-executor-plugin-pbs/tests/samples/openpbs"
DRIVER = Path(__file__).with_name("resume_driver.py")
HOST = socket.gethostname()
SCHEDULER_VARIABLES = ("PBS_JOBID", "SLURM_JOB_ID")


@pytest.fixture(autouse=True)
def no_scheduler(monkeypatch):
    """Tests run as a local process, whatever job the test session itself runs in."""
    for name in SCHEDULER_VARIABLES:
        monkeypatch.delenv(name, raising=False)


# -- who: the owner of this process, and the owner a status.json names -----------------------


def test_the_current_owner_comes_from_the_scheduler_environment():
    me = ownership.current({"PBS_JOBID": "100.pbs"})
    assert (me.scheduler, me.job_id, me.host, me.pid) == ("pbs", "100.pbs", HOST, os.getpid())
    assert me.started == ownership.process_start(os.getpid()) and me.started
    slurm = ownership.current({"SLURM_JOB_ID": "42", "SLURM_JOBID": "42"})
    assert (slurm.scheduler, slurm.job_id) == ("slurm", "42")
    local = ownership.current({})
    assert (local.scheduler, local.job_id, local.pid) == ("local", None, os.getpid())


def test_status_json_names_its_owner_old_records_included():
    me = Owner("slurm", "42", "node1", 1234, "boot:99")
    assert ownership.recorded({"owner": me.record()}) == me
    # written before `owner` existed: PBS job id, else the process
    old = {"status": "in_progress", "pbs_job_id": "100.pbs", "host": "n", "pid": 5}
    assert ownership.recorded(old) == Owner("pbs", "100.pbs", "n", 5)
    assert ownership.recorded({"host": "n", "pid": 5}) == Owner("local", None, "n", 5)
    # by a trainer without an owner check: its process (a stale pbs_job_id is not the owner)
    unchecked = {"owner": None, "pbs_job_id": "100.pbs", "host": "n", "pid": 5}
    assert ownership.recorded(unchecked) == Owner("local", None, "n", 5)
    assert ownership.recorded({}) is None


def test_same_owner_is_the_job_or_for_a_local_run_the_process():
    job = Owner("pbs", "100.pbs", "n1", 10)
    assert job.is_same(Owner("pbs", "100.pbs", "n2", 20))  # resubmitted, PBS gave the same id
    assert not job.is_same(Owner("pbs", "101.pbs", "n1", 10))
    assert not job.is_same(Owner("slurm", "100.pbs", "n1", 10))
    assert not job.is_same(Owner("local", None, "n1", 10))
    local = Owner("local", None, "n1", 10, "boot:1")
    assert local.is_same(Owner("local", None, "n1", 10, "boot:2"))  # its pid is ours now
    assert not local.is_same(Owner("local", None, "n1", 11))
    assert not local.is_same(Owner("local", None, "n2", 10))


# -- PBS: the executor's Qstat, on what a real OpenPBS printed -------------------------------


def _rows(name: str) -> list[list[str]]:
    return [line.split("\t") for line in (CAPTURED / name).read_text().splitlines()]


# the captured jobs by role (the capture's job ids change each time it is remade)
JOB = {role: job_id for role, job_id, *_ in _rows("jobs.tsv")}


def captured(name: str, argv: list[str]) -> CommandResult:
    returncode = {row[0]: int(row[1]) for row in _rows("captures.tsv")}[name]
    return CommandResult(
        tuple(argv),
        returncode,
        (CAPTURED / f"{name}.stdout").read_text(),
        (CAPTURED / f"{name}.stderr").read_text(),
    )


def real_qstat(answer: str | CommandResult) -> tuple[Qstat, list]:
    """The executor's Qstat, its commands answered by OpenPBS's captured output `answer`."""
    asked = []

    def run(argv, timeout):
        asked.append(argv)
        if isinstance(answer, CommandResult):
            return answer
        return captured(answer, argv)

    return Qstat(timeout=5, dialect=Dialect.PBSPRO, run=run), asked


@pytest.mark.parametrize(("role", "state"), [("run", "R"), ("hold", "H"), ("queued", "Q")])
def test_pbs_a_queued_running_or_held_job_is_alive(role, state):
    qstat, asked = real_qstat("qstat-xf-several")
    assert ownership.probe_pbs(JOB[role], qstat) == Verdict(Liveness.ALIVE, f"state {state}")
    assert asked == [["qstat", "-x", "-f", JOB[role]]]
    # the server's domain left off (or added): the same job
    short = JOB[role].split(".")[0]
    assert ownership.probe_pbs(short, real_qstat("qstat-xf-several")[0]).detail == f"state {state}"


def test_pbs_a_finished_or_forgotten_job_has_ended():
    qstat, _ = real_qstat("qstat-xf-several")
    assert ownership.probe_pbs(JOB["ok"], qstat) == Verdict(Liveness.ENDED, "state F")
    qstat, asked = real_qstat("qstat-xf-unknown")  # `qstat: Unknown Job Id 99999.vm`, 153
    verdict = ownership.probe_pbs("99999.vm", qstat)
    assert verdict == Verdict(Liveness.ENDED, "PBS no longer knows it (Unknown Job Id)")
    assert len(asked) == 2  # the one-id question, then asked alone: the executor's rule


@pytest.mark.parametrize(
    "result",
    [
        CommandResult(("qstat",), 255, "", "qstat: cannot connect to server pbs (errno=111)"),
        CommandResult(("qstat",), None, "", ""),  # timed out
        CommandResult(("qstat",), 127, "", "qstat: No such file or directory"),
    ],
)
def test_pbs_an_unanswered_qstat_is_unknown(result):
    qstat, _ = real_qstat(result)
    verdict = ownership.probe_pbs("100.pbs", qstat)
    assert verdict.liveness is Liveness.UNKNOWN
    assert verdict.detail.startswith("qstat did not answer: `qstat")


def test_pbs_an_answer_without_the_job_is_unknown():
    qstat, _ = real_qstat(CommandResult(("qstat",), 0, "", ""))
    assert ownership.probe_pbs("100.pbs", qstat) == Verdict(
        Liveness.UNKNOWN, "qstat's answer left it out"
    )


# -- Slurm: squeue (the real one in tests/cluster/test_slurm_owner.py) ----------------------


def squeue(returncode, stdout="", stderr=""):
    asked = []

    def run(argv, timeout):
        asked.append((argv, timeout))
        return ownership.Ran(returncode, stdout, stderr)

    return run, asked


@pytest.mark.parametrize(
    "state", ["PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUE_HOLD"]
)
def test_slurm_a_pending_running_or_suspended_job_is_alive(state):
    run, asked = squeue(0, f"{state}\n")
    assert ownership.probe_slurm("42", run, 7) == Verdict(Liveness.ALIVE, f"state {state}")
    assert asked == [(["squeue", "-h", "-t", "all", "-j", "42", "-o", "%T"], 7)]


@pytest.mark.parametrize(
    "state", ["COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL"]
)
def test_slurm_a_finished_job_has_ended(state):
    run, _ = squeue(0, f"{state}\n")
    assert ownership.probe_slurm("42", run) == Verdict(Liveness.ENDED, f"state {state}")


def test_slurm_a_job_slurm_has_forgotten_has_ended():
    run, _ = squeue(1, stderr="slurm_load_jobs error: Invalid job id specified\n")
    assert ownership.probe_slurm("42", run).liveness is Liveness.ENDED


def test_slurm_a_heterogeneous_job_lives_while_any_component_does():
    assert ownership.probe_slurm("42", squeue(0, "COMPLETED\nRUNNING\n")[0]).liveness is (
        Liveness.ALIVE
    )


@pytest.mark.parametrize(
    ("returncode", "stdout", "stderr", "detail"),
    [
        (
            1,
            "",
            "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n",
            "squeue exited with 1: slurm_load_jobs error: Unable to contact slurm controller "
            "(connect failure)",
        ),
        (
            None,
            "",
            "squeue timed out after 60 s",
            "squeue did not answer: squeue timed out after 60 s",
        ),  # fmt: skip
        (
            127,
            "",
            "squeue: No such file or directory",
            "squeue exited with 127: squeue: No such file or directory",
        ),  # fmt: skip
        (0, "", "", "squeue said nothing"),
        (0, "SOMETHING_NEW\n", "", "squeue said SOMETHING_NEW"),
    ],
)
def test_slurm_no_answer_or_an_unknown_word_is_unknown(returncode, stdout, stderr, detail):
    run, _ = squeue(returncode, stdout, stderr)
    assert ownership.probe_slurm("42", run) == Verdict(Liveness.UNKNOWN, detail)


def test_slurm_the_real_command_runner_reports_a_missing_command_and_a_timeout():
    missing = ownership.run_command(["/nonexistent/squeue"], 5)
    assert missing.returncode == 127 and "No such file" in missing.stderr
    slow = ownership.run_command([sys.executable, "-c", "import time; time.sleep(5)"], 0.2)
    assert slow.returncode is None and "timed out" in slow.stderr


# -- local: a process on this host -----------------------------------------------------------


def local(pid: int, host: str = HOST, started: str | None = "auto") -> Owner:
    started = ownership.process_start(pid) if started == "auto" else started
    return Owner("local", None, host, pid, started)


def test_local_a_live_process_is_alive_a_dead_one_has_ended():
    me = ownership.current()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        alive = local(sleeper.pid)
        assert alive.started
        assert ownership.probe_local(alive, me) == Verdict(
            Liveness.ALIVE, f"process {sleeper.pid} is running"
        )
        sleeper.kill()
        # killed, not yet reaped: a zombie owns nothing
        stat = Path(f"/proc/{sleeper.pid}/stat")
        deadline = time.monotonic() + 10
        while stat.read_text().rsplit(")", 1)[1].split()[0] != "Z":
            assert time.monotonic() < deadline, "the killed process never became a zombie"
            time.sleep(0.01)
        assert ownership.probe_local(alive, me) == Verdict(
            Liveness.ENDED, f"process {sleeper.pid} has exited"
        )
    finally:
        sleeper.kill()
        sleeper.wait()
    assert ownership.probe_local(alive, me) == Verdict(Liveness.ENDED, f"no process {alive.pid}")


def test_local_a_pid_given_to_a_later_process_is_not_the_owner():
    me = ownership.current()
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        earlier = local(sleeper.pid, started="0d1e5e1e-boot:12")
        verdict = ownership.probe_local(earlier, me)
        assert verdict == Verdict(
            Liveness.ENDED, f"pid {sleeper.pid} now belongs to a later process"
        )
        # an old record (no start to compare): a live pid is the owner
        assert ownership.probe_local(local(sleeper.pid, started=None), me).liveness is (
            Liveness.ALIVE
        )
    finally:
        sleeper.kill()
        sleeper.wait()


def test_local_a_process_on_another_host_is_unknown():
    verdict = ownership.probe_local(local(os.getpid(), host="elsewhere"), ownership.current())
    assert verdict == Verdict(Liveness.UNKNOWN, f"it runs on elsewhere, not here on {HOST}")


def test_probe_asks_the_owners_own_scheduler():
    run, asked = squeue(0, "RUNNING\n")
    assert ownership.probe(Owner("slurm", "42", "n", 1), run=run).liveness is Liveness.ALIVE
    qstat, _ = real_qstat("qstat-xf-several")
    assert ownership.probe(Owner("pbs", JOB["queued"], "n", 1), qstat=qstat).detail == "state Q"
    assert ownership.probe(local(os.getpid())).liveness is Liveness.ALIVE
    assert ownership.probe(Owner("lsf", "7", "n", 1)).liveness is Liveness.UNKNOWN


# -- the policy: take over only from an owner that has ended ---------------------------------
# (status.json as an older kdflow left it, no claim file: its owner is generation 0)

ME = Owner("slurm", "200", "node2", 2000, "boot:2")
OTHER = Owner("slurm", "100", "node1", 1000, "boot:1")


def in_progress(owner=OTHER, status="in_progress"):
    return {"status": status, "epoch": 7, "owner": owner.record()}


def answering(liveness, detail="state RUNNING"):
    asked = []

    def probe(owner, me):
        asked.append((owner, me))
        return Verdict(liveness, detail)

    return probe, asked


def test_a_live_other_owner_is_refused_with_what_to_do(tmp_path):
    probe, asked = answering(Liveness.ALIVE)
    with pytest.raises(AlreadyOwned) as refused:
        claim(tmp_path, in_progress(), me=ME, probe=probe)
    assert str(refused.value) == (
        f"{tmp_path} is being trained by Slurm job 100 (process 1000 on node1), alive (state "
        "RUNNING); this Slurm job 200 (process 2000 on node2) will not write beside it. If "
        "that one should train it, nothing needs doing: once it has finished the workflow "
        "finds the experiment done. Otherwise stop it with `scancel 100` and run this "
        "experiment again: it resumes from its checkpoint. (Its claim: "
        f"{tmp_path}/status.json (its owner, recorded by an older kdflow).)"
    )
    assert asked == [(OTHER, ME)]
    assert list(tmp_path.iterdir()) == []  # no claim file, no temp


@pytest.mark.parametrize(
    ("other", "stop"),
    [
        (Owner("pbs", "100.pbs", "n1", 1), "`qdel 100.pbs` and"),
        (Owner("local", None, "n1", 1), "`kill 1` on n1 and"),
    ],
)
def test_the_message_says_how_to_stop_each_kind_of_owner(tmp_path, other, stop):
    with pytest.raises(AlreadyOwned) as refused:
        claim(tmp_path, in_progress(other), me=ME, probe=answering(Liveness.ALIVE)[0])
    assert f"stop it with {stop}" in str(refused.value)


def test_an_ended_owner_is_taken_over(tmp_path, caplog):
    caplog.set_level("INFO", "kdflow.owner")
    fields = claim(tmp_path, in_progress(), me=ME, probe=answering(Liveness.ENDED, "x")[0])
    assert fields == {"owner": ME.record(), "claim": "claim.1", "pbs_job_id": None}
    assert f"taking {tmp_path} over from Slurm job 100" in caplog.text


def test_an_unknown_owner_is_asked_again_then_refused(tmp_path):
    """No answer is no evidence: once, training went ahead with a warning; now it refuses."""
    (tmp_path / "status.json").write_text(json.dumps(in_progress()))  # read again each time
    probe, asked = answering(Liveness.UNKNOWN, "squeue did not answer: timed out")
    slept = []
    with pytest.raises(ownership.OwnerUnknown, match="whether it still trains cannot be told"):
        claim(tmp_path, in_progress(), me=ME, probe=probe, tries=4, wait=5, sleep=slept.append)
    assert len(asked) == 4 and slept == [5, 5, 5]
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


@pytest.mark.parametrize(
    "status",
    [
        in_progress(Owner("slurm", "200", "node9", 9)),  # ours: a requeued job, a new process
        in_progress(status="completed"),  # nothing in progress
        {},  # a new experiment
        {"status": "in_progress"},  # an owner nobody recorded
    ],
)
def test_own_job_finished_runs_and_new_experiments_need_no_question(tmp_path, status):
    probe, asked = answering(Liveness.ALIVE)
    assert claim(tmp_path, status, me=ME, probe=probe) == {
        "owner": ME.record(),
        "claim": "claim.1",
        "pbs_job_id": None,
    }
    assert asked == []


def test_under_pbs_the_job_id_is_also_recorded_where_older_readers_look(tmp_path):
    me = Owner("pbs", "300.pbs", "n", 3)
    assert claim(tmp_path, {}, me=me) == {
        "owner": me.record(),
        "claim": "claim.1",
        "pbs_job_id": "300.pbs",
    }


# -- the trainer: refuses before it writes anything, or goes ahead and records its owner -----


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return train_params(write_prepared(tmp_path_factory.mktemp("owner") / "prepared.npz"))


def test_the_trainer_refuses_a_live_owner_and_leaves_its_files_alone(tmp_path, tiny, caplog):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "status.json").write_text(json.dumps(in_progress()))
    (out / ".checkpoint.pth.abc.tmp").write_bytes(b"the owner is writing this")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    check = functools.partial(claim, me=ME, probe=answering(Liveness.ALIVE)[0])
    with pytest.raises(AlreadyOwned, match="is being trained by Slurm job 100"):
        train(TrainSpec.from_params(tiny), out, claim=check)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert f"not training {out}: {out} is being trained by Slurm job 100" in caplog.text


def test_the_trainer_takes_over_from_an_ended_owner_and_records_itself(tmp_path, tiny):
    out = tmp_path / "exp"
    out.mkdir()
    (out / "status.json").write_text(json.dumps(in_progress()))
    check = functools.partial(claim, me=ME, probe=answering(Liveness.ENDED)[0])
    train(TrainSpec.from_params(tiny), out, claim=check)
    status = json.loads((out / "status.json").read_text())
    assert (status["status"], status["owner"], status["claim"], status["pbs_job_id"]) == (
        "completed",
        ME.record(),
        "claim.1",
        None,
    )
    assert json.loads((out / "claim.1").read_text())["after"] == OTHER.record()


def test_the_trainer_without_a_check_records_no_owner(tmp_path, tiny):
    train(TrainSpec.from_params(tiny), tmp_path)
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["owner"] is None and status["claim"] is None
    assert (status["host"], status["pid"]) == (HOST, os.getpid())
    assert not list(tmp_path.glob("claim.*"))


@pytest.mark.slow
def test_scripts_train_refuses_beside_a_live_local_run_and_takes_over_after_it(tmp_path, tiny):
    """scripts/train.py, as the workflow runs it, in three processes of this host: the first
    trains; the second, started while it trains, refuses and touches nothing; the third,
    after the first was SIGKILLed, resumes its run and completes it."""
    out, log = tmp_path / "exp", tmp_path / "train.log"
    env = {k: v for k, v in os.environ.items() if k not in SCHEDULER_VARIABLES}

    def rule(epochs, **kw):
        spec = json.dumps({**tiny, "epochs": epochs})
        argv = [sys.executable, str(DRIVER), "--rule", spec, str(out), str(log)]
        return argv, dict(env=env, text=True, **kw)

    argv, kw = rule(10_000)
    first = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    try:
        status = _wait_for(lambda: _owner_epoch(out, first.pid), first)
        assert status["owner"] == {
            "scheduler": "local",
            "job_id": None,
            "host": HOST,
            "pid": first.pid,
            "started": ownership.process_start(first.pid),
        }
        first.send_signal(signal.SIGSTOP)  # its files stay as they are while the second runs
        wait_stopped(first.pid)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        argv, kw = rule(10_000)
        second = subprocess.run(argv, capture_output=True, timeout=300, **kw)
        assert second.returncode != 0
        assert f"AlreadyOwned: {out} is being trained by process {first.pid} on {HOST}" in (
            second.stderr
        )
        assert f"stop it with `kill {first.pid}` on {HOST} and" in second.stderr
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    finally:
        first.kill()
        first.wait()
    trained = json.loads((out / "status.json").read_text())["epoch"]
    argv, kw = rule(trained + 2)  # its checkpoint may be an epoch ahead of its status
    third = subprocess.run(argv, capture_output=True, timeout=300, **kw)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"taking {out} over from process {first.pid} on {HOST}" in log.read_text()
    assert f"resumed {out} from epoch" in log.read_text()
    assert (out / "completed").exists()
    assert ownership.claim_generations(out) == [1, 2]  # the first's claim, then the third's


def _owner_epoch(out: Path, pid: int) -> dict | None:
    """status.json once process `pid` owns it and has trained an epoch."""
    try:
        status = json.loads((out / "status.json").read_text())
    except (OSError, ValueError):
        return None
    owner = status.get("owner") or {}
    return status if owner.get("pid") == pid and status.get("epoch", 0) >= 1 else None


def _wait_for(predicate, process, timeout=120):
    deadline = time.monotonic() + timeout
    while (found := predicate()) is None:
        assert process.poll() is None, "the first run ended before it trained an epoch"
        assert time.monotonic() < deadline, f"not trained an epoch in {timeout} s"
        time.sleep(0.05)
    return found
