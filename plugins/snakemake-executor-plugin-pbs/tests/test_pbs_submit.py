"""The job script, deterministic job names, and qsub's answers."""

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from snakemake_executor_plugin_pbs.commands import CommandResult
from snakemake_executor_plugin_pbs.submit import (
    DEFAULT_JOB_NAME_PREFIX,
    JobSpec,
    QueueLimit,
    Rejected,
    Transient,
    UnknownResource,
    format_walltime,
    job_name,
    job_name_prefix_problem,
    parse_job_id,
    qsub,
    qsub_failure,
    render_job_script,
    select_statement,
)

OUTPUT = "results/sample0/done.txt"


def spec(tmp_path: Path, **changes) -> JobSpec:
    fields = dict(
        name="smk0123456789",
        command='echo "working"',
        log_out=tmp_path / "logs" / "smk0123456789.1.out",
        log_err=tmp_path / "logs" / "smk0123456789.1.err",
        exit_dir=tmp_path / "registry" / "exit",
        threads=10,
        mem_mb=24000,
        gpus=1,
        runtime_minutes=90,
        queue="gpu_1",
        project="PRJ0042",
    )
    return JobSpec(**{**fields, **changes})


# -- names -------------------------------------------------------------------------------


def test_job_name_is_deterministic_per_target():
    outputs = [OUTPUT, "results/sample0/summary.json"]
    assert job_name(outputs) == job_name(list(reversed(outputs)))
    assert job_name(outputs) != job_name([OUTPUT.replace("sample0", "sample1")])


def test_job_name_is_a_valid_pbs_name():
    name = job_name([OUTPUT])
    assert DEFAULT_JOB_NAME_PREFIX == "smk" and re.fullmatch(r"smk[0-9a-f]{10}", name)
    assert len(name) <= 15 and name[0].isalpha()


def test_the_prefix_changes_only_the_start_of_the_name():
    assert job_name([OUTPUT], prefix="ab-1_") == "ab-1_" + job_name([OUTPUT])[3:]
    assert len(job_name([OUTPUT], prefix="abcde")) == 15


@pytest.mark.parametrize("prefix", ["", "1a", "a b", "a.b", "abcdef", "ab\n", "é"])
def test_a_prefix_pbs_would_refuse_is_refused(prefix):
    assert job_name_prefix_problem(prefix) is not None
    with pytest.raises(ValueError, match="job name prefix"):
        job_name([OUTPUT], prefix=prefix)


# -- resources ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("minutes", "walltime"),
    [(90, "01:30:00"), (60, "01:00:00"), (1, "00:01:00"), (720, "12:00:00"), (1500, "25:00:00"),
     (0.5, "00:00:30"), (2.25, "00:02:15")],
)  # fmt: skip
def test_walltime_is_always_hh_mm_ss(minutes, walltime):
    assert format_walltime(minutes) == walltime


def test_select_statement():
    assert select_statement(10, 24000, 1) == "select=1:ncpus=10:ngpus=1:mem=24000mb"
    assert select_statement(4, 8000) == "select=1:ncpus=4:mem=8000mb"
    assert select_statement(1, None) == "select=1:ncpus=1"
    assert select_statement(2, 1000, 0, "mpiprocs=1") == "select=1:ncpus=2:mem=1000mb:mpiprocs=1"


# -- the job script ----------------------------------------------------------------------


def test_job_script_lines(tmp_path):
    script = render_job_script(spec(tmp_path))
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert "#PBS -N smk0123456789" in lines
    assert "#PBS -q gpu_1" in lines
    assert "#PBS -P PRJ0042" in lines
    assert "#PBS -l select=1:ncpus=10:ngpus=1:mem=24000mb" in lines
    assert "#PBS -l walltime=01:30:00" in lines
    assert f"#PBS -o {tmp_path}/logs/smk0123456789.1.out" in lines
    assert f"#PBS -e {tmp_path}/logs/smk0123456789.1.err" in lines
    assert 'cd "$PBS_O_WORKDIR" || exit 1' in lines
    assert lines[-1] == 'echo "working"'
    assert lines.index('cd "$PBS_O_WORKDIR" || exit 1') < lines.index('echo "working"')
    assert "trap snakemake_pbs_record_exit EXIT" in lines
    # Every #PBS line comes before the first command, or qsub ignores it.
    first_command = next(i for i, line in enumerate(lines[1:], 1) if not line.startswith("#"))
    assert all(not line.startswith("#PBS") for line in lines[first_command:])


def test_job_script_without_optional_settings(tmp_path):
    script = render_job_script(
        spec(tmp_path, queue=None, project=None, gpus=0, runtime_minutes=None, mem_mb=None)
    )
    assert "#PBS -q" not in script and "#PBS -P" not in script
    assert "walltime=" not in script and "ngpus" not in script
    assert "#PBS -l select=1:ncpus=10\n" in script


def test_job_script_is_valid_bash(tmp_path):
    path = tmp_path / "job.sh"
    path.write_text(render_job_script(spec(tmp_path)))
    subprocess.run(["bash", "-n", str(path)], check=True)


def run_script(tmp_path: Path, command: str, job_id: str = "77.sched01", **kwargs):
    """Run a job script the way a PBS MOM would: in $HOME, with the PBS_ variables set."""
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    path = tmp_path / "job.sh"
    path.write_text(render_job_script(spec(tmp_path, command=command)))
    env = dict(os.environ, PBS_JOBID=job_id, PBS_O_WORKDIR=str(workdir), HOME=str(tmp_path))
    return subprocess.Popen(["bash", str(path)], env=env, cwd=tmp_path, **kwargs)


def exit_record(tmp_path: Path, job_id: str = "77.sched01") -> str:
    return (tmp_path / "registry" / "exit" / job_id).read_text()


def test_script_changes_to_the_submit_directory(tmp_path):
    assert run_script(tmp_path, "pwd > where").wait() == 0
    assert (tmp_path / "work" / "where").read_text().strip() == str(tmp_path / "work")


@pytest.mark.parametrize("code", [0, 1, 3])
def test_script_records_its_exit_code(tmp_path, code):
    assert run_script(tmp_path, f"exit {code}").wait() == code
    assert exit_record(tmp_path) == f"{code}\n"
    leftovers = [p.name for p in (tmp_path / "registry" / "exit").iterdir()]
    assert leftovers == ["77.sched01"]  # no temporary file left behind


def child_commands(pid: int) -> list[str]:
    """The command names (as exec'd) of the processes whose parent is `pid` (Linux /proc)."""
    names = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # ended meanwhile
        # `pid (comm) state ppid ...`; comm may hold spaces and parentheses
        if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            names.append(text[text.index("(") + 1 : text.rindex(")")])
    return names


def test_script_records_a_sigterm_kill(tmp_path):
    # PBS starts a walltime kill or qdel with SIGTERM to the job's processes.
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc to see the job's command run")
    proc = run_script(tmp_path, "sleep 30", start_new_session=True)
    # Signal once the command runs (its name is `sleep`: exec'd, so past the traps, and past
    # the moment between fork and exec where a child would lose the signal).
    deadline = time.monotonic() + 60
    while "sleep" not in child_commands(proc.pid):
        assert proc.poll() is None and time.monotonic() < deadline, "the command never ran"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=10) == 143
    assert exit_record(tmp_path) == "143\n"


# -- qsub --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "job_id"),
    [
        ("1234.sched01\n", "1234.sched01"),
        ("1234.sched01.chpc.ac.za\n", "1234.sched01.chpc.ac.za"),
        ("812.torque01\n", "812.torque01"),
        ("4321\n", "4321"),
        ("qsub: job will be charged to PRJ0042\n5678.sched01\n", "5678.sched01"),
        ("", None),
        ("Job submitted\n", None),
    ],
)
def test_job_id_from_qsub_output(stdout, job_id):
    assert parse_job_id(stdout) == job_id


def failed(returncode, stderr):
    return CommandResult(("qsub", "job.sh"), returncode, "", stderr)


@pytest.mark.parametrize(
    ("returncode", "stderr", "kind"),
    [
        (38, "qsub: would exceed queue gpu_1's per-user limit of jobs in 'Q' state", QueueLimit),
        (198, "qsub: Maximum number of jobs already in queue gpu_1", QueueLimit),
        (1, "qsub: submit error (Maximum number of jobs already in queue for user MSG=total "
            "number of jobs in queue exceeds the queue limit: user jdoe@head, queue batch)",
         QueueLimit),
        (1, "qsub: cannot connect to server sched01 (errno=111)", Transient),
        (170, "qsub: Unknown queue", Rejected),
        (2, "usage: qsub [-a date_time] [-A account_string] ...", Rejected),
        (1, "qsub: Project PRJ9999 not found", Rejected),
        (188, "qsub: Job violates queue and/or server resource limits", Rejected),
        (127, "qsub: No such file or directory", Rejected),
        # OpenPBS 23.06 without `ngpus` defined (tests/samples/openpbs)
        (187, "qsub: Unknown resource: ngpus", UnknownResource),
    ],
)  # fmt: skip
def test_qsub_failures_are_classified(returncode, stderr, kind):
    error = qsub_failure(failed(returncode, stderr))
    assert type(error) is kind
    assert stderr.split("(")[0].strip() in error.message  # qsub's own words are kept


def test_an_unknown_resource_is_named():
    error = qsub_failure(failed(187, "qsub: Unknown resource: ngpus\n"))
    assert isinstance(error, Rejected) and error.resource == "ngpus"


def test_unreachable_server_created_no_job_but_a_timeout_may_have():
    assert not qsub_failure(
        failed(1, "qsub: cannot connect to server s (errno=111)")
    ).maybe_submitted
    timed_out = qsub_failure(CommandResult(("qsub", "job.sh"), None, "", ""))
    assert isinstance(timed_out, Transient) and timed_out.maybe_submitted
    no_id = qsub_failure(CommandResult(("qsub", "job.sh"), 0, "", ""))
    assert isinstance(no_id, Transient) and no_id.maybe_submitted


def fake_qsub(tmp_path: Path, body: str) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "qsub").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > "{tmp_path}/argv"\n{body}\n')
    (bin_dir / "qsub").chmod(0o755)


def test_qsub_passes_arguments_as_a_list_never_through_a_shell(tmp_path, monkeypatch):
    fake_qsub(tmp_path, "echo 4242.sched01")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    script = tmp_path / "my job; rm -rf x.sh"
    job_id = qsub(script, ["-W", "group_list=a b"], ["HF_TOKEN"], timeout=10)
    assert job_id == "4242.sched01"
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv == ["-W", "group_list=a b", "-v", "HF_TOKEN", str(script)]


def test_qsub_queue_limit_and_rejection_through_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    fake_qsub(tmp_path, 'echo "qsub: would exceed queue gpu_1\'s per-user limit" >&2; exit 38')
    with pytest.raises(QueueLimit):
        qsub(tmp_path / "job.sh", timeout=10)
    fake_qsub(tmp_path, 'echo "qsub: Unknown queue" >&2; exit 170')
    with pytest.raises(Rejected, match="Unknown queue"):
        qsub(tmp_path / "job.sh", timeout=10)
    fake_qsub(tmp_path, "sleep 5")
    with pytest.raises(Transient, match="timed out"):
        qsub(tmp_path / "job.sh", timeout=0.5)
