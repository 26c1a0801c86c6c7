"""How a job ended, from qstat's record, the job's own exit record and its stderr: on the jobs
a real OpenPBS 23.06.06 ran and ended (tests/samples/openpbs, made by capture_openpbs.sh),
their .e files, and generated Torque and pre-18 PBS Pro records for what it cannot show."""

from pathlib import Path

import pytest

from snakemake_executor_plugin_pbs.classify import Kind, classify
from snakemake_executor_plugin_pbs.status import JobInfo, parse_qstat_text

SAMPLES = Path(__file__).parent / "samples"
CAPTURED = SAMPLES / "openpbs"
PRE18 = parse_qstat_text((SAMPLES / "generated_pbspro_pre18_qstat_xf.txt").read_text())
TORQUE = parse_qstat_text((SAMPLES / "generated_torque_qstat_f.txt").read_text())

# role -> job id of the jobs capture_openpbs.sh submitted, and what the server said of them
_JOBS = [line.split("\t") for line in (CAPTURED / "jobs.tsv").read_text().splitlines()]
JOB = {role: job_id for role, job_id, _name, _command in _JOBS}
NAME = {role: name for role, _id, name, _command in _JOBS}
OPENPBS = parse_qstat_text((CAPTURED / "qstat-xf-several.stdout").read_text())


def info(role: str) -> JobInfo:
    return OPENPBS[JOB[role]]


def job_file(role: str, stream: str) -> str:
    """The job's .o or .e file, as PBS copied it back (`<name>.e<sequence number>`)."""
    return (CAPTURED / "oe" / f"{NAME[role]}.{stream}{JOB[role].split('.')[0]}").read_text()


def finished(exit_status, used=600, limit=3600, comment=None) -> JobInfo:
    return JobInfo(
        id="9.s",
        name="smk0123456789",
        state="F",
        exit_status=exit_status,
        walltime_used=used,
        walltime_limit=limit,
        comment=comment,
    )


@pytest.mark.parametrize(
    ("role", "kind", "exit_status"),
    [
        ("ok", Kind.SUCCESS, 0),
        ("wall", Kind.WALLTIME, -29),
        ("mem", Kind.MEMORY, -27),
        ("del", Kind.KILLED, 271),  # qdel while running, well under its walltime
        ("exit3", Kind.ERROR, 3),
        ("kill9", Kind.KILLED, 137),  # the script's bash SIGKILLed; PBS's shell says 137
    ],
)
def test_each_captured_ending(role, kind, exit_status):
    outcome = classify(info(role), None, job_file(role, "e"))
    assert (outcome.kind, outcome.exit_status) == (kind, exit_status)
    # the same from the record alone, without the .e file
    assert classify(info(role), None, "").kind is kind


def test_captured_walltime_kill_says_so_in_the_e_file():
    # `=>> PBS: job killed: walltime 4 exceeded limit 3` (the used seconds vary by a second)
    stderr = job_file("wall", "e")
    assert stderr.startswith("=>> PBS: job killed: walltime ")
    assert f"exceeded limit {info('wall').walltime_limit}\n" in stderr.splitlines(True)[0]
    assert info("wall").comment.endswith(" and exceeded resource walltime")
    # history off (the server forgot the job) and no exit record: the line alone decides
    outcome = classify(None, None, stderr)
    assert outcome.kind is Kind.WALLTIME and "job killed: walltime" in outcome.reason
    # a job script that trapped the SIGTERM and wrote 143: the line still decides
    assert classify(None, 143, stderr).kind is Kind.WALLTIME


def test_captured_memory_kill_says_so_in_the_e_file():
    # e.g. `=>> PBS: job killed: mem 307500kb exceeded limit 51200kb` (the kb used vary)
    stderr = job_file("mem", "e")
    assert stderr.startswith("=>> PBS: job killed: mem ")
    assert "kb exceeded limit 51200kb\n" in stderr.splitlines(True)[0]
    outcome = classify(None, None, stderr)
    assert outcome.kind is Kind.MEMORY and "job killed: mem" in outcome.reason
    assert "mem limit" in classify(info("mem"), None, stderr).reason


def test_captured_qdel_is_a_kill_with_the_servers_comment():
    outcome = classify(info("del"), None, job_file("del", "e"))
    assert job_file("del", "e") == ""  # PBS writes nothing into .e for a qdel
    assert "SIGTERM" in outcome.reason and "terminated by" in outcome.reason


def test_captured_exit_3_and_kill_9():
    assert classify(info("exit3"), None, job_file("exit3", "e")).reason == "exit status 3"
    stderr = job_file("kill9", "e")  # `-bash: line 1: <pid> Killed  .../mom_priv/jobs/<id>.SC`
    assert " Killed " in stderr and f"/mom_priv/jobs/{JOB['kill9']}.SC" in stderr
    assert "SIGKILL" in classify(info("kill9"), None, stderr).reason


def test_jobs_deleted_before_they_ran_are_kills():
    deleted = parse_qstat_text((CAPTURED / "qstat-xf-deleted.stdout").read_text())
    for role in ("hold", "queued"):  # F without Exit_status: nothing ran, nothing failed
        assert classify(deleted[JOB[role]], None, "").kind is Kind.KILLED


@pytest.mark.parametrize(
    ("job_id", "kind"),
    [
        ("4106.sched01", Kind.WALLTIME),  # 271 with used walltime past the limit (old servers)
        ("4107.sched01", Kind.KILLED),  # 265 well under the limit: node failure, qdel
    ],
)
def test_generated_pre18_history_sample(job_id, kind):
    assert classify(PRE18[job_id], None, "").kind is kind


def test_walltime_from_the_message_pbs_writes_into_stderr():
    stderr = "step 41 done\n=>> PBS: job killed: walltime 3630 exceeded limit 3600\n"
    outcome = classify(finished(271, used=None, limit=None), None, stderr)
    assert outcome.kind is Kind.WALLTIME
    assert "walltime 3630 exceeded limit 3600" in outcome.reason


def test_walltime_message_decides_even_without_any_exit_status():
    stderr = "=>> PBS: job killed: walltime 3630 exceeded limit 3600\n"
    assert classify(None, None, stderr).kind is Kind.WALLTIME


@pytest.mark.parametrize(
    "stderr",
    [
        "=>> PBS: job killed: mem 26214400kb exceeded limit 25165824kb",
        "=>> PBS: job killed: vmem 52428800kb exceeded limit 50331648kb",
        "slurmstepd: error: Detected 1 oom_kill event in StepId=12.batch",
        "Traceback (most recent call last):\nMemoryError: Unable to allocate 12.0 GiB",
        "Cgroup mem limit exceeded: job 5.s",
    ],
)
def test_memory_kill_messages(stderr):
    assert classify(finished(1), None, stderr).kind is Kind.MEMORY


def test_cuda_out_of_memory_is_not_a_host_memory_kill():
    stderr = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert classify(finished(1), None, stderr).kind is Kind.ERROR


def test_vmem_kill_is_memory():
    assert classify(finished(-26), None, "").kind is Kind.MEMORY


@pytest.mark.parametrize("code", [-24, -25, -28])
def test_cpu_limit_kills_are_errors(code):
    # The same job would exceed its ncpus/cput again: retrying blindly does not help.
    assert classify(finished(code), None, "").kind is Kind.ERROR


@pytest.mark.parametrize("code", [-1, -3, -11, -20, 271, 265, 143, 137, 257])
def test_kills_under_the_walltime_limit(code):
    assert classify(finished(code, used=600), None, "").kind is Kind.KILLED


@pytest.mark.parametrize("code", [271, 265, 143, -11])
def test_kills_at_the_walltime_limit(code):
    assert classify(finished(code, used=3605), None, "").kind is Kind.WALLTIME


def test_history_off_exit_record_decides():
    # The server forgot the job (no history): the exit code the script wrote decides.
    assert classify(None, 0, "").kind is Kind.SUCCESS
    assert classify(None, 1, "").kind is Kind.ERROR
    assert classify(None, 143, "").kind is Kind.KILLED  # SIGTERM, limit unknown


def test_vanished_without_exit_record_is_a_kill():
    outcome = classify(None, None, "")
    assert outcome.kind is Kind.KILLED
    assert "vanished" in outcome.reason


def test_qstat_exit_status_wins_over_the_exit_record():
    # The script trapped SIGTERM and wrote 143; PBS knows it was the walltime.
    assert classify(finished(-29), 143, "").kind is Kind.WALLTIME


def test_success_despite_noise_in_stderr():
    assert classify(finished(0), 0, "MemoryError in a test that was caught\n").kind is Kind.SUCCESS


def test_reasons_are_human_sentences():
    assert classify(finished(1), None, "").reason == "exit status 1"
    killed = classify(finished(265, comment="Job run at ... and terminated"), None, "")
    assert "SIGKILL" in killed.reason and "terminated" in killed.reason


ENOSPC_TAIL = (
    "step 12 of 200 done\n"
    "Traceback (most recent call last):\n"
    '  File "/home/u/sim/run.py", line 47, in save_state\n'
    "OSError: [Errno 28] No space left on device: "
    "'/mnt/lustre/u/results/sample0/state.bin'\n"
)


@pytest.mark.parametrize(
    ("stderr", "line"),
    [
        (ENOSPC_TAIL, "No space left on device: '/mnt/lustre/u/results/sample0/state.bin'"),
        ("cp: error writing 'out/big.dat': No space left on device\n", "cp: error writing"),
        ("OSError: [Errno 122] Disk quota exceeded: 'history.csv'\n", "Disk quota exceeded"),
    ],
)
def test_a_failed_write_to_a_full_disk_or_quota_is_storage_with_its_line(stderr, line):
    outcome = classify(finished(1), None, stderr)
    assert outcome.kind is Kind.STORAGE and outcome.exit_status == 1
    assert line in outcome.reason and "out of disk space" in outcome.reason


@pytest.mark.parametrize("code", [0, -29, -27, 265])
def test_a_full_disk_in_stderr_does_not_hide_success_or_a_kill(code):
    kind = classify(finished(code), None, ENOSPC_TAIL).kind
    assert kind is {0: Kind.SUCCESS, -29: Kind.WALLTIME, -27: Kind.MEMORY, 265: Kind.KILLED}[code]
