"""The registry of submissions, and the decisions it remembers across restarts."""

import json
import os

import pytest

from snakemake_executor_plugin_pbs.classify import Kind, Outcome
from snakemake_executor_plugin_pbs.policy import Action, Limits, decide
from snakemake_executor_plugin_pbs.progress import read_progress
from snakemake_executor_plugin_pbs.registry import (
    Registry,
    Submission,
    TargetRecord,
    write_atomic,
)

NAME = "kd0123456789"


# -- atomic files ------------------------------------------------------------------------


def test_write_atomic_replaces_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "dir" / "record.json"
    write_atomic(path, "old\n")
    write_atomic(path, "new\n")
    assert path.read_text() == "new\n"
    assert os.listdir(path.parent) == ["record.json"]


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "record.json"
    write_atomic(path, "old\n")
    with pytest.raises(TypeError):
        write_atomic(path, None)  # fails while writing the temporary file
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["record.json"]


# -- records -----------------------------------------------------------------------------


def test_record_round_trip(tmp_path):
    registry = Registry(tmp_path / "pbs")
    record = registry.load(NAME)
    assert record == TargetRecord(name=NAME)
    record.submissions.append(Submission(job_id="1.s", submitted_at=1.0, mem_mb=24000))
    record.mem_mb, record.memory_kills, record.errors_without_progress = 36000, 1, 2
    registry.save(record)
    assert Registry(tmp_path / "pbs").load(NAME) == record
    data = json.loads(registry.path(NAME).read_text())  # plain JSON, readable by anyone
    assert data["schema"] == 1 and data["submissions"][0]["job_id"] == "1.s"


def test_restart_keeps_counters_and_memory(tmp_path):
    registry = Registry(tmp_path / "pbs")
    record = registry.load(NAME)
    submission = Submission(job_id="1.s", submitted_at=0.0, mem_mb=24000)
    record.submissions.append(submission)
    decide(record, submission, Outcome(Kind.MEMORY, "mem"), None, Limits(), now=5.0)
    registry.save(record)
    # A new controller (new process) reads the same directory.
    again = Registry(tmp_path / "pbs").load(NAME)
    assert again.mem_mb == 36000 and again.memory_kills == 1
    assert again.last.outcome == "memory" and not again.last.is_open


def test_unreadable_record_is_set_aside_and_treated_as_an_interrupted_qsub(tmp_path):
    registry = Registry(tmp_path / "pbs")
    registry.path(NAME).parent.mkdir(parents=True)
    registry.path(NAME).write_text('{"name": "kd01234')
    record = registry.load(NAME)
    assert record.last.is_intent  # so the controller looks for a live job by name first
    assert not registry.path(NAME).exists()
    assert any(p.name.startswith(f"{NAME}.json.unreadable") for p in registry.targets_dir.iterdir())


def test_exit_records(tmp_path):
    registry = Registry(tmp_path / "pbs")
    assert registry.exit_record("12.sched01") is None
    registry.exit_dir.mkdir(parents=True)
    (registry.exit_dir / "12.sched01").write_text("0\n")
    (registry.exit_dir / "13.sched01.chpc.ac.za").write_text("143\n")
    (registry.exit_dir / "14.sched01").write_text("")  # being written: not an answer yet
    assert registry.exit_record("12.sched01") == 0
    assert registry.exit_record("13.sched01") == 143  # the job knew itself by a longer id
    assert registry.exit_record("14.sched01") is None
    assert registry.exit_record("1.sched01") is None


def test_records_lists_all_targets(tmp_path):
    registry = Registry(tmp_path / "pbs")
    for name in ("kda", "kdb"):
        registry.save(TargetRecord(name=name, rule="train_kd"))
    assert [r.name for r in registry.records()] == ["kda", "kdb"]


# -- progress ----------------------------------------------------------------------------


def test_progress_is_the_epoch_beside_the_first_output(tmp_path):
    output = tmp_path / "results" / "x" / "seed0" / "completed"
    assert read_progress(output, "status.json") is None
    output.parent.mkdir(parents=True)
    (output.parent / "status.json").write_text('{"status": "in_progress", "epoch": 41}')
    assert read_progress(output, "status.json") == 41
    (output.parent / "status.json").write_text('{"status": "in_pro')  # caught mid-write
    assert read_progress(output, "status.json") is None


# -- decisions ---------------------------------------------------------------------------


def ended(record: TargetRecord, kind: Kind, progress=None, at_submit=None, mem_mb=24000):
    submission = Submission(
        job_id=f"{len(record.submissions) + 1}.s",
        submitted_at=0.0,
        mem_mb=mem_mb,
        progress_at_submit=at_submit,
    )
    record.submissions.append(submission)
    return decide(record, submission, Outcome(kind, kind.value), progress, LIMITS, now=1.0)


LIMITS = Limits(max_error_retries=2, max_stalled_walltime_kills=2, max_kill_retries=3)


def test_success_is_done_and_resets_counters():
    record = TargetRecord(name=NAME, errors_without_progress=2, walltime_stalls=1)
    assert ended(record, Kind.SUCCESS).action is Action.SUCCEED
    assert record.done and record.errors_without_progress == 0 and record.walltime_stalls == 0


def test_walltime_kills_with_progress_are_resubmitted_without_limit():
    record = TargetRecord(name=NAME)
    for epoch in range(1, 10):
        decision = ended(record, Kind.WALLTIME, progress=epoch * 10, at_submit=epoch * 10 - 10)
        assert decision.action is Action.RESUBMIT
    assert record.walltime_kills == 9 and record.walltime_stalls == 0


def test_walltime_kills_without_progress_give_up():
    record = TargetRecord(name=NAME)
    assert ended(record, Kind.WALLTIME, progress=5, at_submit=None).action is Action.RESUBMIT
    assert ended(record, Kind.WALLTIME, progress=5, at_submit=5).action is Action.RESUBMIT
    decision = ended(record, Kind.WALLTIME, progress=5, at_submit=5)
    assert decision.action is Action.FAIL
    assert "2 walltime kills in a row without progress" in decision.reason
    assert record.failed == decision.reason


def test_memory_kill_grows_memory_up_to_the_cap():
    record = TargetRecord(name=NAME)
    limits = Limits(mem_growth=1.5, max_mem_mb=50000)
    for mem_mb, expected in ((24000, 36000), (36000, 50000)):
        submission = Submission(job_id="x", submitted_at=0.0, mem_mb=mem_mb)
        record.submissions.append(submission)
        decision = decide(record, submission, Outcome(Kind.MEMORY, "mem"), None, limits, 1.0)
        assert decision.action is Action.RESUBMIT and record.mem_mb == expected
    submission = Submission(job_id="y", submitted_at=0.0, mem_mb=50000)
    record.submissions.append(submission)
    decision = decide(record, submission, Outcome(Kind.MEMORY, "mem"), None, limits, 1.0)
    assert decision.action is Action.FAIL and "cap" in decision.reason


def test_memory_kill_without_a_memory_request_gives_up():
    record = TargetRecord(name=NAME)
    assert ended(record, Kind.MEMORY, mem_mb=None).action is Action.FAIL


def test_errors_without_progress_are_retried_then_given_up():
    record = TargetRecord(name=NAME)
    assert ended(record, Kind.ERROR).action is Action.RESUBMIT
    assert ended(record, Kind.ERROR).action is Action.RESUBMIT
    decision = ended(record, Kind.ERROR)
    assert decision.action is Action.FAIL
    assert "failed 3 times in a row without progress" in decision.reason


def test_an_error_after_progress_is_resubmitted_and_resets_the_count():
    record = TargetRecord(name=NAME)
    ended(record, Kind.ERROR)
    ended(record, Kind.ERROR)
    assert ended(record, Kind.ERROR, progress=7, at_submit=3).action is Action.RESUBMIT
    assert record.errors_without_progress == 0 and record.last_progress == 7


def test_kills_are_resubmitted_until_too_many_without_progress():
    record = TargetRecord(name=NAME)
    for _ in range(LIMITS.max_kill_retries):
        assert ended(record, Kind.KILLED).action is Action.RESUBMIT
    assert ended(record, Kind.KILLED).action is Action.FAIL


def test_out_of_space_waits_longer_each_time_then_gives_up():
    record = TargetRecord(name=NAME)
    limits = Limits(storage_wait=600, max_storage_wait=2000, max_storage_failures=4)
    waits = []
    for _ in range(4):
        submission = Submission(job_id="x", submitted_at=0.0)
        record.submissions.append(submission)
        decision = decide(record, submission, Outcome(Kind.STORAGE, "full"), None, limits, 100.0)
        assert decision.action is Action.RESUBMIT and "out of disk space" in decision.reason
        waits.append(record.hold_until - 100.0)
    assert waits == [600, 1200, 2000, 2000]
    assert record.errors_without_progress == 0  # a full disk spends no error retries
    submission = Submission(job_id="y", submitted_at=0.0)
    record.submissions.append(submission)
    decision = decide(record, submission, Outcome(Kind.STORAGE, "full"), None, limits, 100.0)
    assert decision.action is Action.FAIL
    assert "out of disk space 5 times in a row" in decision.reason and record.failed


def test_progress_between_full_disks_starts_the_waits_over():
    record = TargetRecord(name=NAME)
    limits = Limits(storage_wait=600)
    for progress in (3, 3, 7):
        submission = Submission(job_id="x", submitted_at=0.0, progress_at_submit=3)
        record.submissions.append(submission)
        decide(record, submission, Outcome(Kind.STORAGE, "full"), progress, limits, 0.0)
    assert record.storage_failures == 1 and record.hold_until == 600
