"""`kdflow status` from files and registry records alone (no scheduler asked)."""

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from kdflow.cli import main
from kdflow.config import Sweep
from kdflow.status import (
    CONTROLLER_LOG,
    Controller,
    collect,
    controller,
    executor_settings,
    render,
    to_json,
)
from snakemake_executor_plugin_pbs.registry import Registry, Submission, TargetRecord
from snakemake_executor_plugin_pbs.status import Answer, JobInfo
from snakemake_executor_plugin_pbs.submit import job_name

# the executor's settings as kdflow's profile (profiles/pbs) gives them: what `kdflow status`
# reads, so the registry records below are where the controller would write them
SETTINGS = executor_settings()
SWEEP = {"seeds": [0, 1], "datasets": {"cifar100": {}}, "models": ["resnet8"], "pairs": []}
# a terminal wider than any table (rich never widens one past its cells): no cell wraps, whatever
# the length of this machine's host name, pids or job ids
WIDE = 1000
FULL_DISK = "exit status 1, out of disk space: OSError: [Errno 28] cannot write x: No space left"


def _sweep(tmp_path, config=SWEEP) -> Sweep:
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    return Sweep.from_file(tmp_path / "sweep.yaml", check_names=False)


def _name(experiment: str) -> str:
    """The registry name the executor gives the experiment's target (kdflow's prefix)."""
    return job_name([f"{experiment}/completed"], prefix=SETTINGS.job_name_prefix)


def _submitted(registry: Registry, experiment: str, *submissions: Submission, **fields) -> None:
    target = f"{experiment}/completed"
    registry.save(TargetRecord(name=_name(experiment), outputs=[target],
                               submissions=list(submissions), **fields))  # fmt: skip


def _ended_on_a_full_disk(registry: Registry, experiment: str, hold_until: float) -> None:
    submission = Submission(job_id="7.pbs", submitted_at=0.0, outcome="storage",
                            reason=FULL_DISK, log_err="logs/7.err")  # fmt: skip
    _submitted(registry, experiment, submission, storage_failures=1, hold_until=hold_until)


def test_a_target_waiting_for_disk_space_is_held_until_its_time(tmp_path):
    sweep = _sweep(tmp_path)
    held, due = "results/cifar100/pure/resnet8/seed0", "results/cifar100/pure/resnet8/seed1"
    registry = Registry(tmp_path / SETTINGS.registry_dir)
    _ended_on_a_full_disk(registry, held, time.time() + 3600)
    _ended_on_a_full_disk(registry, due, time.time() - 1)  # the controller resubmits it now
    rows, note = collect(sweep, tmp_path, qstat=None)
    by_path = {row.path: row for row in rows}
    assert note is None and by_path[due].state == "ready"
    row = by_path[held]
    assert row.state == "held" and row.log == "logs/7.err"
    assert row.reason.startswith(FULL_DISK) and "; resubmitted at " in row.reason

    console = Console(file=io.StringIO(), width=WIDE)
    render(rows, note, console)
    table = console.file.getvalue()
    assert "held 1" in table and "No space left" in table and "log: logs/7.err" in table


def _note_column(table: str) -> str:
    """The text of the table's last column, its lines joined, spaces dropped: what a reader
    reads down the column, however rich wrapped it."""
    cells = [line.rsplit("│", 2)[1] for line in table.splitlines() if line.count("│") > 2]
    return "".join(cells).replace(" ", "")


def test_a_held_trainer_s_log_shows_whole_on_any_terminal(tmp_path):
    """The note column keeps the reason and the log on lines of their own, so the path to the
    log reads whole on any terminal from 100 columns up (CI once failed at 200 where longer job
    ids squeezed it: ` `.join broke the path at widths up to 211), and, folded, below."""
    sweep = _sweep(tmp_path)
    registry = Registry(tmp_path / SETTINGS.registry_dir)
    for seed in range(2):
        _ended_on_a_full_disk(registry, f"results/cifar100/pure/resnet8/seed{seed}",
                              time.time() + 3600)  # fmt: skip
    rows, note = collect(sweep, tmp_path, qstat=None)
    for width in range(60, 300):
        console = Console(file=io.StringIO(), width=width)
        render(rows, note, console)
        table = console.file.getvalue()
        column = _note_column(table)
        assert column.count("log:logs/7.err") == 2, table
        assert column.count(FULL_DISK.replace(" ", "")) == 2, table
        if width >= 100:
            assert table.count("│ log: logs/7.err ") == 2, table


class _Qstat:
    """Stands in for the executor's Qstat: answers from a fixed Answer, records the ids."""

    def __init__(self, answer):
        self.answer = answer
        self.asked: list[list[str]] = []

    def query(self, job_ids):
        self.asked.append(list(job_ids))
        return self.answer


def test_a_job_qstat_says_nothing_about_is_submitted_not_ended(tmp_path):
    # An answer that leaves a job out (OpenPBS's -F json did) is no news that it ended.
    sweep = _sweep(tmp_path)
    registry = Registry(tmp_path / SETTINGS.registry_dir)
    for seed, job_id in ((0, "8.pbs"), (1, "9.pbs")):
        experiment = f"results/cifar100/pure/resnet8/seed{seed}"
        _submitted(registry, experiment, Submission(job_id=job_id, submitted_at=0.0))
    rows, note = collect(sweep, tmp_path, qstat=_Qstat(Answer({}, unknown=["9.pbs"])))
    states = {row.path.rsplit("/", 1)[1]: (row.state, row.pbs_id) for row in rows}
    assert note is None
    assert states["seed0"] == ("submitted", "8.pbs")  # no word: may be queued or running
    assert states["seed1"][0] == "ready"  # the server said it does not know it: it ended


def test_a_job_that_just_started_shows_its_time_since_it_started(tmp_path):
    # For its first seconds a running job has no resources_used.walltime (seen on OpenPBS).
    sweep = _sweep(tmp_path)
    experiment = "results/cifar100/pure/resnet8/seed0"
    registry = Registry(tmp_path / SETTINGS.registry_dir)
    _submitted(registry, experiment, Submission(job_id="8.pbs", submitted_at=0.0))
    before = time.time()
    started = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(before - 42))
    info = JobInfo(id="8.pbs", name=_name(experiment), state="R", times={"stime": started})
    rows, _ = collect(sweep, tmp_path, qstat=_Qstat(Answer({"8.pbs": info})))
    took = time.time() - before  # the clock moves on while collect runs, however long
    row = next(row for row in rows if row.pbs_id == "8.pbs")
    # 42 s ago, in whole seconds as qstat prints it, plus the time collect took
    assert row.state == "running" and 42 <= row.elapsed <= 43 + took


def test_one_qstat_asks_about_the_open_jobs_in_the_order_the_server_gave_them_out(tmp_path):
    # as text "1000.pbs" < "999.pbs"; the dashboard asks by number, one call for all
    sweep = _sweep(tmp_path, {**SWEEP, "seeds": [0, 1, 2]})
    registry = Registry(tmp_path / SETTINGS.registry_dir)
    for seed, job_id in ((0, "1000.pbs"), (1, "999.pbs"), (2, "10001.pbs")):
        experiment = f"results/cifar100/pure/resnet8/seed{seed}"
        _submitted(registry, experiment, Submission(job_id=job_id, submitted_at=0.0))
    qstat = _Qstat(Answer({}))
    collect(sweep, tmp_path, qstat=qstat)
    assert qstat.asked == [["999.pbs", "1000.pbs", "10001.pbs"]]


def test_a_damaged_record_is_read_not_repaired(tmp_path):
    # the controller is the registry's one writer: the dashboard leaves a damaged record where
    # it is (the controller sets it aside and looks for the job by name)
    sweep = _sweep(tmp_path)
    experiment = "results/cifar100/pure/resnet8/seed0"
    registry = Registry(tmp_path / SETTINGS.registry_dir)
    registry.path(_name(experiment)).parent.mkdir(parents=True)
    registry.path(_name(experiment)).write_text('{"name": "kd", "submissions": [')
    rows, note = collect(sweep, tmp_path, qstat=_Qstat(Answer({})))
    assert note is None and {row.state for row in rows} == {"ready"}
    assert sorted(p.name for p in registry.targets_dir.iterdir()) == [f"{_name(experiment)}.json"]


def test_a_damaged_status_file_is_named_once_and_a_missing_one_is_silent(tmp_path, caplog):
    sweep = _sweep(tmp_path)
    running = tmp_path / "results/cifar100/pure/resnet8/seed0"
    running.mkdir(parents=True)
    (running / "status.json").write_text('{"status": "in_progress", "epo')  # damaged by a copy
    with caplog.at_level(logging.WARNING):
        rows, _ = collect(sweep, tmp_path)
    assert [row.state for row in rows] == ["ready", "ready"]
    assert len(caplog.records) == 1 and str(running / "status.json") in caplog.text


def test_kdflow_status_prints_warnings_after_the_table(tmp_path, monkeypatch, capsys):
    # a damaged file's warning must not land inside the table (nor be wiped by --watch's
    # clearing of the screen): it comes after it, on stderr; --json stays valid JSON
    from kdflow.cli import main

    _sweep(tmp_path)
    monkeypatch.chdir(tmp_path)
    running = tmp_path / "results/cifar100/pure/resnet8/seed0"
    running.mkdir(parents=True)
    (running / "status.json").write_text("{")
    assert main(["status", "--configfile", "sweep.yaml", "--no-qstat"]) == 0
    out, err = capsys.readouterr()
    assert "finished 0/2" in out and "results/cifar100/pure/resnet8/seed0/status.json" in err
    assert main(["status", "--configfile", "sweep.yaml", "--no-qstat", "--json"]) == 0
    out, err = capsys.readouterr()
    assert len(json.loads(out)["experiments"]) == 2 and "status.json" in err


PACKED = {
    "seeds": [0],
    "datasets": {"cifar100": {}},
    "models": ["resnet32x4", "resnet8x4", "wrn_16_2"],
    "pairs": [
        {"teacher": "resnet32x4", "student": "resnet8x4"},
        {"teacher": "resnet32x4", "student": "wrn_16_2"},
    ],
    "methods": {"logit": {}, "fitnet": {}},
    "alphas": [0.5, 0.9],
}


def test_every_student_of_a_pack_shows_the_pack_job_that_trains_it(tmp_path):
    sweep = _sweep(tmp_path, PACKED)  # packing: teacher, the default: a pack per pair
    pack, other = sweep.packs()
    assert pack.name == "cifar100/resnet32x4-resnet8x4/seed0" and len(pack.students) == 4
    assert other.name == "cifar100/resnet32x4-wrn_16_2/seed0" and len(other.students) == 4
    teacher = tmp_path / "results/cifar100/pure/resnet32x4/seed0"
    teacher.mkdir(parents=True)
    (teacher / "completed").touch()
    done, training = pack.students[0], pack.students[1]
    (tmp_path / done.directory).mkdir(parents=True)
    (tmp_path / done.target).touch()
    (tmp_path / training.directory).mkdir(parents=True)
    (tmp_path / training.directory / "status.json").write_text(
        json.dumps({"epoch": 3, "epochs": 240, "epoch_seconds": 10.0})
    )
    registry = Registry(tmp_path / SETTINGS.registry_dir)
    # the executor's name of the pack job
    name = job_name(pack.targets, prefix=SETTINGS.job_name_prefix)
    submission = Submission(job_id="8.pbs", submitted_at=0.0)
    registry.save(TargetRecord(name=name, outputs=pack.targets, submissions=[submission]))
    info = JobInfo(id="8.pbs", name=name, state="R", walltime_used=600)
    qstat = _Qstat(Answer({"8.pbs": info}))
    rows, note = collect(sweep, tmp_path, qstat=qstat)
    by_path = {row.path: row for row in rows}
    assert qstat.asked == [["8.pbs"]]  # one job for the whole pack, asked about once
    assert by_path[done.directory].state == "done"
    students = [by_path[s.directory] for s in pack.students[1:]]
    assert {(r.state, r.pbs_id, r.pack) for r in students} == {
        ("running", "8.pbs", "cifar100/resnet32x4-resnet8x4/seed0")
    }
    assert by_path[training.directory].epoch == 3 and by_path[training.directory].eta == 2370
    assert by_path["results/cifar100/pure/resnet8x4/seed0"].pack is None  # pure: its own job

    console = Console(file=io.StringIO(), width=WIDE)
    render(rows, note, console)
    table = console.file.getvalue()
    header = next(line for line in table.splitlines() if "experiment" in line)
    assert "pack" in header and table.count("cifar100/resnet32x4-resnet8x4/seed0") == 3

    # packing: none -- one job per student, found by its own name
    sweep = _sweep(tmp_path, {**PACKED, "packing": "none"})
    rows, _ = collect(sweep, tmp_path, qstat=_Qstat(Answer({"8.pbs": info})))
    assert {row.state for row in rows if row.path == training.directory} == {"ready"}
    assert all(row.pack is None for row in rows)


# -- the cron.sh controller ------------------------------------------------------------------

CONTROLLER_LOG_LINES = [f"line {i} [bold]of[/] the controller" for i in range(30)] + [
    "WorkflowError:",
    "The PBS executor needs qsub, qstat, qdel on PATH (run Snakemake on a login node of the "
    "cluster).",
]


def _cron_dir(tmp_path, pid: int | None) -> None:
    """What scripts/cron.sh leaves in a directory it drives: the pid file and the log."""
    (tmp_path / "logs/cron").mkdir(parents=True)
    (tmp_path / "logs/cron/controller.log").write_text("\n".join(CONTROLLER_LOG_LINES) + "\n")
    if pid is not None:
        (tmp_path / ".kdflow").mkdir()
        (tmp_path / ".kdflow/controller.pid").write_text(f"{pid}\n")


def _status(tmp_path, monkeypatch, capsys, *args, columns: int = WIDE) -> str:
    from kdflow.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", str(columns))
    assert main(["status", "--configfile", "sweep.yaml", "--no-qstat", *args]) == 0
    return capsys.readouterr().out


def test_status_shows_a_live_controller(tmp_path, monkeypatch, capsys):
    _sweep(tmp_path)
    # a process that looks like cron.sh's controller: `snakemake` in its command line, run in
    # the directory
    fake = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "snakemake"],
                            cwd=tmp_path)  # fmt: skip
    try:
        # its command line shows once exec has set it up (read empty for a moment before)
        cmdline = Path(f"/proc/{fake.pid}/cmdline")
        deadline = time.monotonic() + 30
        while b"snakemake" not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)
        _cron_dir(tmp_path, fake.pid)
        assert controller(tmp_path) == Controller("alive", fake.pid, CONTROLLER_LOG)
        out = _status(tmp_path, monkeypatch, capsys)
        assert f"controller: alive (pid {fake.pid})" in out and "line 29" not in out
        record = json.loads(_status(tmp_path, monkeypatch, capsys, "--json"))["controller"]
        assert record == {"state": "alive", "pid": fake.pid, "log": CONTROLLER_LOG, "tail": []}
    finally:
        fake.kill()
        fake.wait()
    # the same pid file once it has ended: not running, with the end of its log
    found = controller(tmp_path)
    assert found.state == "not running" and found.pid == fake.pid
    assert found.tail == CONTROLLER_LOG_LINES[-10:]


def test_status_shows_a_dead_controller_with_the_end_of_its_log(tmp_path, monkeypatch, capsys):
    _sweep(tmp_path)
    # the pid file names a live process that is not a controller (a pid given out again)
    _cron_dir(tmp_path, os.getpid())
    out = _status(tmp_path, monkeypatch, capsys, columns=60)  # a narrow terminal, or a pipe
    # one whole line, wrapped by the terminal: the log's path copies whole, a grep finds it
    assert (
        "controller: not running while the sweep is unfinished (`scripts/cron.sh cron` starts"
        " one); the end of logs/cron/controller.log:"
    ) in out.splitlines()
    lines = [line.removeprefix("  | ") for line in out.splitlines() if line.startswith("  | ")]
    assert lines == CONTROLLER_LOG_LINES[-10:]  # as written: no markup read into them
    record = json.loads(_status(tmp_path, monkeypatch, capsys, "--json"))["controller"]
    assert record["state"] == "not running" and record["pid"] == os.getpid()
    assert record["tail"] == CONTROLLER_LOG_LINES[-10:]

    # no pid file (the tick that reported the death removed it): the log alone says cron.sh
    # drives this directory
    (tmp_path / ".kdflow/controller.pid").unlink()
    assert controller(tmp_path) == Controller(
        "not running", None, CONTROLLER_LOG, CONTROLLER_LOG_LINES[-10:]
    )


def test_status_of_a_finished_sweep_without_a_controller_shows_no_log(
    tmp_path, monkeypatch, capsys
):
    sweep = _sweep(tmp_path)
    for experiment in sweep.experiments():
        (tmp_path / experiment.directory).mkdir(parents=True)
        (tmp_path / experiment.target).touch()
    _cron_dir(tmp_path, None)
    out = _status(tmp_path, monkeypatch, capsys)
    assert "finished 2/2" in out and "controller: not running; the sweep is finished" in out
    assert "line 29" not in out


def test_status_without_cron_shows_no_controller(tmp_path, monkeypatch, capsys):
    _sweep(tmp_path)
    assert controller(tmp_path) is None
    assert "controller" not in _status(tmp_path, monkeypatch, capsys)
    assert json.loads(_status(tmp_path, monkeypatch, capsys, "--json"))["controller"] is None


# -- trainers under any scheduler or none: what status.json records, and whether it is alive --

PAIR_SWEEP = {
    "seeds": [0],
    "datasets": {"cifar100": {}},
    "models": ["resnet20", "resnet8"],
    "pairs": [{"teacher": "resnet20", "student": "resnet8"}],
    "methods": {"logit": {}},
    "alphas": [0.5],
}
TEACHER = "results/cifar100/pure/resnet20/seed0"
ALONE = "results/cifar100/pure/resnet8/seed0"
STUDENT = "results/cifar100/logit/resnet20-resnet8/alpha0.5/seed0"


def _training(tmp_path, experiment: str, owner, epoch: int = 2, epochs: int = 5) -> None:
    """status.json as a trainer writes it after `epoch` epochs (3 s each)."""
    directory = tmp_path / experiment
    directory.mkdir(parents=True, exist_ok=True)
    status = {"status": "in_progress", "epoch": epoch, "epochs": epochs, "epoch_seconds": 3.0,
              "best_acc": 41.5, "owner": owner.record()}  # fmt: skip
    (directory / "status.json").write_text(json.dumps(status))


def _ended_process() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_local_trainer_is_running_with_its_pid_speed_and_eta_the_others_say_why_not(tmp_path):
    from kdflow.owner import Owner, current

    sweep = _sweep(tmp_path, PAIR_SWEEP)
    _training(tmp_path, TEACHER, current())  # this process: alive, on this host
    gone = Owner("local", None, current().host, _ended_process())
    _training(tmp_path, ALONE, gone)  # killed after epoch 2: resumes
    rows, note = collect(sweep, tmp_path, qstat=None)
    by_path = {row.path: row for row in rows}
    teacher = by_path[TEACHER]
    assert (teacher.state, teacher.pbs_id) == ("running", f"pid {os.getpid()} on {current().host}")
    assert (teacher.epoch, teacher.epochs, teacher.eta) == (2, 5, 9)  # 3 epochs of 3 s
    assert (by_path[ALONE].state, by_path[ALONE].reason) == ("ready", "resumes after epoch 2")
    assert by_path[STUDENT].state == "waiting"
    assert by_path[STUDENT].reason == f"waits for its teacher, {TEACHER}"

    console = Console(file=io.StringIO(), width=WIDE)
    render(rows, note, console)
    table = console.file.getvalue()
    assert "running 1" in table
    line = next(line for line in table.splitlines() if TEACHER in line)
    for shown in ("running", f"pid {os.getpid()}", "2/5", "3.0", "41.50", "0:00:09"):
        assert shown in line, (shown, line)
    assert "resumes after epoch 2" in table and f"waits for its teacher, {TEACHER}" in table
    assert json.loads(to_json(rows, note))["experiments"][0]["state"] == "running"


def test_a_slurm_trainer_is_asked_in_one_squeue_and_silence_is_unknown(tmp_path, monkeypatch):
    from kdflow.owner import Owner

    sweep = _sweep(tmp_path, {**PAIR_SWEEP, "seeds": [0, 1]})
    for seed, job in ((0, "101"), (1, "102")):
        owner = Owner("slurm", job, "node7", 4242)
        _training(tmp_path, TEACHER.replace("seed0", f"seed{seed}"), owner)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "squeue.calls"
    (bin_dir / "squeue").write_text(  # knows 101 only: 102 is left out of its answer
        f'#!/bin/sh\necho "$@" >> {calls}\necho "101 RUNNING"\n'
    )
    (bin_dir / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    rows, _ = collect(sweep, tmp_path, qstat=_Qstat(Answer({})))
    states = {row.path: (row.state, row.pbs_id) for row in rows}
    assert states[TEACHER] == ("running", "101")
    assert states[TEACHER.replace("seed0", "seed1")] == ("unknown", "102")  # not "ended"
    assert len(calls.read_text().splitlines()) == 1  # one squeue for every Slurm trainer


def test_a_finished_sweep_shows_its_results(tmp_path, monkeypatch, capsys):
    sweep = _sweep(tmp_path)
    for experiment in sweep.experiments():
        directory = tmp_path / experiment.directory
        directory.mkdir(parents=True)
        spec = sweep.spec(experiment)
        metrics = {**spec.identity, "final_acc": 70.0 + experiment.seed, "best_acc": 71.0,
                   "best_epoch": 1, "epochs": 2, "train_seconds": 1.0}  # fmt: skip
        (directory / "metrics.json").write_text(json.dumps(metrics))
        (directory / "completed").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "60")  # a narrow terminal, or a pipe
    assert main(["status", "--configfile", "sweep.yaml", "--no-qstat"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"sweep.yaml in {tmp_path}\nfinished 2/2 (100.0%)\n")  # read where
    assert "the sweep is finished" in out
    # the results table as `kdflow report` writes it, each row a whole line (the terminal
    # wraps it, not kdflow): a header, its rule, one row with the mean over the two seeds
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert len(table) == 3 and all(row.endswith("|") and row.count("|") == 12 for row in table)
    assert "| 70.50 ± 0.71 |" in table[2]


@pytest.mark.slow
def test_a_local_run_is_seen_running_mid_run_with_its_pid_and_epoch(tmp_path):
    """The demo's way (profiles/local, no scheduler): a trainer held after its first epoch
    (tests/hooks: it blocks until killed, so it is certainly training when asked) is shown
    running by `kdflow status`, with its process and its epoch."""
    import signal

    import kdflow_test_hooks as hooks
    from fakedata import ONE_EXPERIMENT_SWEEP

    root = Path(__file__).resolve().parents[1]
    config = yaml.safe_load(ONE_EXPERIMENT_SWEEP)
    config["train"]["epochs"] = 3
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(config))
    experiment = "results/digits/pure/resnet8/seed0"
    (tmp_path / hooks.HOOKS_FILE).write_text(json.dumps({"hold": {experiment: 1}}))
    env = {**os.environ, "PYTHONPATH": str(root / "tests/hooks")}
    controller = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-d", str(tmp_path),
         "--profile", str(root / "profiles/local"), "--cores", "1",
         "--configfile", "sweep.yaml", "--replace-workflow-config"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 600
        while (holder := hooks.held_by(tmp_path, experiment)) is None:
            assert controller.poll() is None, "the run ended before its trainer was held"
            assert time.monotonic() < deadline, "the trainer never reached epoch 1"
            time.sleep(0.5)
        pid = int(holder.split()[1])  # "pid N": a local process
        status = subprocess.run(
            [sys.executable, "-m", "kdflow.cli", "status", "--configfile", "sweep.yaml", "--json"],
            cwd=tmp_path, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.killpg(controller.pid, signal.SIGKILL)
        controller.wait()
    assert status.returncode == 0, status.stderr
    row = next(r for r in json.loads(status.stdout)["experiments"] if r["path"] == experiment)
    assert row["state"] == "running", row
    assert row["pbs_id"].startswith(f"pid {pid} on "), row
    assert (row["epoch"], row["epochs"]) == (1, 3), row


def _other_profile(tmp_path) -> Path:
    """A profile whose executor keeps its registry elsewhere and names jobs otherwise."""
    profile = tmp_path / "site-profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(
        "executor: pbs\npbs-registry-dir: state/pbs-registry\npbs-job-name-prefix: zz\n"
    )
    return profile


def test_status_reads_the_registry_and_job_names_of_the_profile_it_is_given(
    tmp_path, monkeypatch, capsys
):
    """A site's profile with its own registry directory and prefix: `kdflow status --profile`
    finds the controller's records there, by the names that prefix gives; kdflow's default
    profile would find none of them."""
    sweep = _sweep(tmp_path)
    profile = _other_profile(tmp_path)
    failed = "results/cifar100/pure/resnet8/seed0"
    target = f"{failed}/completed"
    registry = Registry(tmp_path / "state/pbs-registry")
    submission = Submission(job_id="5.pbs", submitted_at=0.0, outcome="error", log_err="e")
    registry.save(TargetRecord(name=job_name([target], prefix="zz"), outputs=[target],
                               submissions=[submission], failed="3 errors in a row"))  # fmt: skip
    rows, _ = collect(sweep, tmp_path, profile=profile)
    assert [r.state for r in rows] == ["failed", "ready"]
    rows, _ = collect(sweep, tmp_path)  # kdflow's own profile: .kdflow/pbs, prefix kd
    assert [r.state for r in rows] == ["ready", "ready"]
    out = _status(tmp_path, monkeypatch, capsys, "--profile", str(profile), "--json")
    assert [e["state"] for e in json.loads(out)["experiments"]] == ["failed", "ready"]
    # the profile the controller runs with, as scripts/cron.sh finds it: $KDFLOW_PROFILE
    monkeypatch.setenv("KDFLOW_PROFILE", str(profile))
    out = _status(tmp_path, monkeypatch, capsys, "--json")
    assert [e["state"] for e in json.loads(out)["experiments"]] == ["failed", "ready"]
