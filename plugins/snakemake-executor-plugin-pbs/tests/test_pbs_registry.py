"""The registry of submissions, and the decisions it remembers across restarts."""

import errno
import json
import logging
import os
import stat

import pytest

from snakemake_executor_plugin_pbs import registry as registry_module
from snakemake_executor_plugin_pbs.classify import Kind, Outcome
from snakemake_executor_plugin_pbs.policy import Action, Limits, decide
from snakemake_executor_plugin_pbs.progress import advanced, job_progress, read_progress
from snakemake_executor_plugin_pbs.registry import (
    Registry,
    Submission,
    TargetRecord,
    write_atomic,
)

NAME = "smk0123456789"


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


def _failing_fsync(directories: bool):
    """os.fsync that fails (EINVAL, as on some network and FUSE mounts) for directories, or
    for files."""
    real = os.fsync

    def fsync(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode) == directories:
            raise OSError(errno.EINVAL, "Invalid argument")
        real(fd)

    return fsync


def test_a_directory_that_cannot_be_fsynced_after_the_rename_is_no_error(
    tmp_path, monkeypatch, caplog
):
    path = tmp_path / "record.json"
    monkeypatch.setattr(registry_module.os, "fsync", _failing_fsync(directories=True))
    with caplog.at_level(logging.DEBUG, logger=registry_module.__name__):
        write_atomic(path, "new\n")  # the rename happened: the write did too
    assert path.read_text() == "new\n" and os.listdir(tmp_path) == ["record.json"]
    [message] = [r for r in caplog.records if "fsync" in r.getMessage()]
    assert message.levelno == logging.DEBUG and str(tmp_path) in message.getMessage()


def test_a_file_that_cannot_be_fsynced_is_an_error_and_replaces_nothing(tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    write_atomic(path, "old\n")
    monkeypatch.setattr(registry_module.os, "fsync", _failing_fsync(directories=False))
    with pytest.raises(OSError, match="Invalid argument"):
        write_atomic(path, "new\n")
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["record.json"]


def test_save_all_fsyncs_every_record_and_the_directory_once(tmp_path, monkeypatch):
    registry = Registry(tmp_path / "pbs")
    records = [TargetRecord(name=f"smk{i:010d}", rule="r") for i in range(20)]
    real, fsynced = os.fsync, []

    def fsync(fd):
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(registry_module.os, "fsync", fsync)
    registry.save_all(records)
    assert [r.name for r in registry.records()] == [r.name for r in records]
    files = sorted(p for p in fsynced if p != str(registry.targets_dir))
    assert len(files) == 20 and fsynced.count(str(registry.targets_dir)) == 1
    assert [os.path.basename(p).split(".json.")[0] for p in files] == [
        f".{r.name}" for r in records
    ]
    assert sorted(os.listdir(registry.targets_dir)) == [f"{r.name}.json" for r in records]


def test_save_all_raises_a_failed_write_and_keeps_the_others(tmp_path, monkeypatch):
    registry = Registry(tmp_path / "pbs")
    old = TargetRecord(name="smk0000000001", rule="old")
    registry.save(old)
    real = os.fsync

    def fsync(fd):  # the disk refuses the one record
        if "smk0000000001" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.EIO, "Input/output error")
        real(fd)

    monkeypatch.setattr(registry_module.os, "fsync", fsync)
    new = [TargetRecord(name="smk0000000001", rule="new"), TargetRecord(name="smk0000000002")]
    with pytest.raises(OSError, match="Input/output"):
        registry.save_all(new)
    assert registry.load("smk0000000001").rule == "old"  # the old record, whole
    assert registry.load("smk0000000002") == new[1]
    assert not [p for p in os.listdir(registry.targets_dir) if p.endswith(".tmp")]


# -- records -----------------------------------------------------------------------------


@pytest.mark.parametrize("umask, want", [(0o022, 0o644), (0o027, 0o640)])
def test_every_registry_file_has_the_mode_the_users_umask_gives(tmp_path, umask, want):
    """A group reads a shared project's registry (kdflow status does): 0644 under umask 0022,
    0640 under 0027, as for any file the user makes; tempfile.mkstemp would give 0600."""
    registry = Registry(tmp_path / "registry")
    records = [TargetRecord(name=f"t{i}", submissions=[Submission("1.s", 0.0)]) for i in range(3)]
    old = os.umask(umask)
    try:
        registry.save(records[0])
        registry.save(records[0], durable=False)
        registry.save_all(records[1:])
        registry.write_script("t0", "#!/bin/bash\n")
    finally:
        os.umask(old)
    files = [path for path in registry.root.rglob("*") if path.is_file()]
    assert len(files) == 4
    assert {
        str(path.relative_to(registry.root)): oct(stat.S_IMODE(path.stat().st_mode))
        for path in files
    } == {  # fmt: skip
        str(path.relative_to(registry.root)): oct(want) for path in files
    }


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
    registry.path(NAME).write_text('{"name": "smk01234')
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


def test_records_lists_every_readable_target(tmp_path):
    registry = Registry(tmp_path / "pbs")
    for name in ("smkb", "smka"):
        registry.save(TargetRecord(name=name, rule="simulate"))
    registry.path("smkc").write_text("{")  # unreadable: skipped
    assert [r.name for r in registry.records()] == ["smka", "smkb"]


def test_a_record_of_an_older_version_with_fields_since_removed_loads(tmp_path):
    registry = Registry(tmp_path / "pbs")
    registry.targets_dir.mkdir(parents=True)
    registry.path(NAME).write_text(json.dumps({"schema": 1, "name": NAME, "done": True}))
    assert registry.load(NAME) == TargetRecord(name=NAME)


# -- progress ----------------------------------------------------------------------------


def test_progress_is_the_number_in_the_file_beside_the_first_output(tmp_path):
    output = tmp_path / "results" / "x" / "sample0" / "done.txt"
    assert read_progress(output, "progress.json") is None
    output.parent.mkdir(parents=True)
    progress = output.parent / "progress.json"
    progress.write_text('{"state": "running", "progress": 41}')
    assert read_progress(output, "progress.json") == 41
    assert read_progress(output, None) is None  # no progress file set: no measure
    progress.write_text('{"state": "runn')  # caught mid-write
    assert read_progress(output, "progress.json") is None


@pytest.mark.parametrize(
    ("text", "value"),
    [('{"step": 12}', 12), ('{"step": 12.5}', 12.5), ('{"step": 3.0}', 3), ('{"step": "7"}', 7),
     ('{"step": true}', None), ('{"step": null}', None), ('{"step": "soon"}', None),
     ('{"step": NaN}', None), ('{"other": 1}', None), ("[1, 2]", None)],
)  # fmt: skip
def test_progress_key_names_the_field_holding_a_number(tmp_path, text, value):
    (tmp_path / "state.json").write_text(text)
    assert read_progress(tmp_path / "out.txt", "state.json", key="step") == value


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


def test_success_is_recorded_and_resets_counters():
    record = TargetRecord(name=NAME, errors_without_progress=2, walltime_stalls=1)
    assert ended(record, Kind.SUCCESS).action is Action.SUCCEED
    assert record.last.outcome == "success" and record.failed is None
    assert record.errors_without_progress == 0 and record.walltime_stalls == 0


def test_walltime_kills_with_progress_are_resubmitted_without_limit():
    record = TargetRecord(name=NAME)
    for step in range(1, 10):
        decision = ended(record, Kind.WALLTIME, progress=step * 10, at_submit=step * 10 - 10)
        assert decision.action is Action.RESUBMIT
    assert record.walltime_kills == 9 and record.walltime_stalls == 0


def test_walltime_kills_without_progress_give_up():
    record = TargetRecord(name=NAME)
    assert ended(record, Kind.WALLTIME, progress=5, at_submit=None).action is Action.RESUBMIT
    assert ended(record, Kind.WALLTIME, progress=5, at_submit=5).action is Action.RESUBMIT
    decision = ended(record, Kind.WALLTIME, progress=5, at_submit=5)
    assert decision.action is Action.FAIL
    assert "2 walltime kills in a row without progress (progress 5)" in decision.reason
    assert record.failed == decision.reason


def test_without_a_progress_measure_every_walltime_kill_is_a_stall():
    record = TargetRecord(name=NAME)
    assert ended(record, Kind.WALLTIME).action is Action.RESUBMIT
    decision = ended(record, Kind.WALLTIME)
    assert decision.action is Action.FAIL
    assert "no progress measure: see --pbs-progress-file" in decision.reason


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


def test_a_job_with_outputs_in_several_directories_sums_their_progress(tmp_path):
    # one process training several pieces of work, each resuming in its own directory
    outputs = [tmp_path / name / "done" for name in ("a", "b", "c")] + [tmp_path / "a" / "log"]
    for name, value in (("a", 3), ("b", 5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "progress.json").write_text(json.dumps({"progress": value}))
    assert job_progress(outputs, "progress.json") == 8  # a counted once; c has no file yet
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "progress.json").write_text('{"progress": 1')  # caught mid-write
    assert job_progress(outputs, "progress.json") == 8
    (tmp_path / "c" / "progress.json").write_text(json.dumps({"progress": 1}))
    assert advanced(8, job_progress(outputs, "progress.json"))
    assert job_progress(outputs, None) is None
    assert job_progress([tmp_path / "none" / "done"], "progress.json") is None
