"""qstat parsing (PBS Pro / OpenPBS and Torque text) and the one-call status query."""

from pathlib import Path

import pytest

from snakemake_executor_plugin_pbs.commands import CommandResult
from snakemake_executor_plugin_pbs.status import (
    Dialect,
    Qstat,
    StatusUnknown,
    detect_dialect,
    listing_argv,
    lookup,
    parse_duration,
    parse_qstat_text,
    parse_text_attributes,
    query_argv,
)

SAMPLES = Path(__file__).parent / "pbs_samples"
PBSPRO_TEXT = (SAMPLES / "pbspro_qstat_xf.txt").read_text()
TORQUE_TEXT = (SAMPLES / "torque_qstat_f.txt").read_text()

WORKDIR = "/mnt/lustre/users/jdoe/kdflow"

# One job as PBS Pro 22.05 prints it for `qstat -f`, with wrapped lines (TAB continuation).
SINGLE_JOB = """\
Job Id: 5120.sched01
    Job_Name = kd9f8e7d6c5b
    Job_Owner = jdoe@login2.chpc.ac.za
    job_state = R
    Resource_List.walltime = 12:00:00
    resources_used.walltime = 03:14:07
    Variable_List = PBS_O_HOME=/home/jdoe,PBS_O_LANG=en_US.UTF-8,
\tPBS_O_LOGNAME=jdoe,PBS_O_WORKDIR=/mnt/lustre/users/jdoe/kdflow/very/long/pa
\tth/to/the/sweep,PBS_O_QUEUE=gpu_1
    comment = Job run at Tue Apr 14 at 09:00 on (gpu4012:ncpus=10:ngpus=1:mem=25
\t165824kb)

"""


def test_continuation_lines_join_to_the_previous_line_with_nothing_between():
    attrs = parse_text_attributes(SINGLE_JOB)["5120.sched01"]
    assert attrs["Variable_List"] == (
        "PBS_O_HOME=/home/jdoe,PBS_O_LANG=en_US.UTF-8,PBS_O_LOGNAME=jdoe,"
        "PBS_O_WORKDIR=/mnt/lustre/users/jdoe/kdflow/very/long/path/to/the/sweep,"
        "PBS_O_QUEUE=gpu_1"
    )
    assert attrs["comment"] == (
        "Job run at Tue Apr 14 at 09:00 on (gpu4012:ncpus=10:ngpus=1:mem=25165824kb)"
    )
    info = parse_qstat_text(SINGLE_JOB)["5120.sched01"]
    assert info.workdir == "/mnt/lustre/users/jdoe/kdflow/very/long/path/to/the/sweep"
    assert (info.walltime_used, info.walltime_limit) == (3 * 3600 + 14 * 60 + 7, 12 * 3600)


def test_pbspro_text_sample_has_every_job_and_state():
    infos = parse_qstat_text(PBSPRO_TEXT)
    assert {job_id: (info.state, info.exit_status) for job_id, info in infos.items()} == {
        "4101.sched01": ("Q", None),
        "4102.sched01": ("R", None),
        "4103.sched01": ("F", 0),
        "4104.sched01": ("F", -29),
        "4105.sched01": ("F", -27),
        "4106.sched01": ("F", 271),
        "4107.sched01": ("F", 265),
        "4108.sched01": ("F", 1),
    }


def test_pbspro_text_sample_wrapped_values_are_whole():
    infos = parse_qstat_text(PBSPRO_TEXT)
    queued = infos["4101.sched01"]
    assert "\t" in PBSPRO_TEXT  # the sample does wrap
    assert queued.comment == (
        "Not Running: Insufficient amount of resource: ngpus (R: 1 A: 0 T: 48)"
    )
    assert queued.workdir == WORKDIR
    assert queued.name == "kd0a1b2c3d4e" and queued.user == "jdoe"
    assert queued.alive and not infos["4103.sched01"].alive
    running = infos["4102.sched01"]
    assert running.exec_host == "gpu4012/0*10"
    assert running.mem_limit == "24gb" and running.mem_used == "19201044kb"
    assert running.times["stime"] == "Tue Apr 14 09:00:03 2026"
    assert running.queue == "gpu_1"


def test_torque_sample_state_c_and_lowercase_exit_status():
    infos = parse_qstat_text(TORQUE_TEXT)
    assert {job_id: (i.state, i.exit_status) for job_id, i in infos.items()} == {
        "812.torque01": ("R", None),
        "813.torque01": ("C", 0),
        "814.torque01": ("C", 271),
    }
    assert not infos["814.torque01"].alive
    assert infos["814.torque01"].walltime_used == 3605
    assert infos["812.torque01"].workdir == "/home/jdoe/kdflow"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("01:00:00", 3600),
        ("00:42:15", 2535),
        ("12:00", 720),
        ("45", 45),
        ("1:02:03:04", 93784),
        (3600, 3600),
        ("garbage", None),
        (None, None),
    ],
)
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("output", "dialect"),
    [
        ("pbs_version = 23.06.06\n", Dialect.PBSPRO),
        ("pbs_version = 19.1.3\n", Dialect.PBSPRO),
        ("pbs_version = 14.1.2\n", Dialect.PBSPRO),
        ("Version: 6.1.3\nCommit: 1234abcd\n", Dialect.TORQUE),
        ("qstat: invalid option -- '-'\n", None),
    ],
)
def test_dialect_from_version(output, dialect):
    assert detect_dialect(output) is dialect


def test_command_lines_per_dialect():
    # PBS Pro is asked in text whatever its version: OpenPBS's JSON with several ids prints
    # only the first job (openpbs/openpbs issue 2672).
    assert query_argv(Dialect.PBSPRO, ["1.s", "2.s"]) == ["qstat", "-x", "-f", "1.s", "2.s"]
    assert query_argv(Dialect.TORQUE, ["1.s"]) == ["qstat", "-f", "1.s"]  # -x is XML there
    assert listing_argv(Dialect.PBSPRO) == ["qstat", "-f"]
    assert listing_argv(Dialect.TORQUE) == ["qstat", "-f"]


def test_lookup_tolerates_a_longer_or_shorter_server_name():
    infos = parse_qstat_text(PBSPRO_TEXT)
    assert lookup(infos, "4102.sched01").state == "R"
    assert lookup(infos, "4102.sched01.chpc.ac.za").state == "R"
    assert lookup(infos, "4102").state == "R"
    assert lookup(infos, "9999.sched01") is None


class Recorder:
    """Stands in for run_command: answers from a script of results and records the calls."""

    def __init__(self, *results: CommandResult, version: str = "pbs_version = 23.06.06"):
        self.results = list(results)
        self.version = version
        self.calls: list[list[str]] = []

    def __call__(self, argv, timeout):
        if argv == ["qstat", "--version"]:
            return CommandResult(tuple(argv), 0, self.version + "\n", "")
        self.calls.append(argv)
        return self.results.pop(0)


def result(returncode, stdout="", stderr=""):
    return CommandResult(("qstat",), returncode, stdout, stderr)


def test_query_is_one_call_for_all_ids():
    run = Recorder(result(0, PBSPRO_TEXT))
    infos = Qstat(run=run).query(["4101.sched01", "4102.sched01", "4103.sched01"])
    assert run.calls == [["qstat", "-x", "-f", "4101.sched01", "4102.sched01", "4103.sched01"]]
    assert infos["4103.sched01"].exit_status == 0
    assert infos.unknown == frozenset() and infos.omitted == ()


def test_a_job_the_answer_leaves_out_is_asked_about_alone():
    # Asked about two jobs, a server prints one and exits 0: the other is not "ended".
    run = Recorder(result(0, SINGLE_JOB), result(0, PBSPRO_TEXT))
    answer = Qstat(run=run).query(["5120.sched01", "4102.sched01"])
    assert run.calls[1] == ["qstat", "-x", "-f", "4102.sched01"]
    assert answer["4102.sched01"].state == "R" and answer.omitted == ("4102.sched01",)
    assert not answer.forgotten("4102.sched01")


def test_only_the_server_saying_it_does_not_know_a_job_makes_it_forgotten():
    unknown = "qstat: Unknown Job Id 4999.sched01\n"
    run = Recorder(result(153, SINGLE_JOB, unknown), result(153, "", unknown))
    answer = Qstat(run=run).query(["5120.sched01", "4999.sched01"])
    assert set(answer) == {"5120.sched01"} and answer.forgotten("4999.sched01")
    assert len(run.calls) == 2


@pytest.mark.parametrize(
    "alone",
    [
        result(1, "", "qstat: cannot connect to server sched01 (errno=111)\n"),
        CommandResult(("qstat",), None, "", ""),  # timed out
        result(0, "", ""),  # exit 0 and nothing printed: no word either way
        result(153, "", "qstat: Error 15010\n"),  # 153 without "Unknown Job Id"
    ],
)
def test_a_left_out_job_whose_lone_question_fails_is_neither_shown_nor_forgotten(alone):
    run = Recorder(result(0, SINGLE_JOB), alone)
    answer = Qstat(run=run).query(["5120.sched01", "4102.sched01"])
    assert set(answer) == {"5120.sched01"} and not answer.forgotten("4102.sched01")


@pytest.mark.parametrize("code", [35, 153])
def test_partial_output_with_per_job_error_codes_is_parsed(code):
    # Several ids, one unknown (153) or finished without -x (35): qstat prints the jobs it
    # knows and exits with the last error.
    stderr = "qstat: Unknown Job Id 4999.sched01\n"
    run = Recorder(result(code, SINGLE_JOB, stderr), result(153, "", stderr))
    infos = Qstat(run=run).query(["5120.sched01", "4999.sched01"])
    assert set(infos) == {"5120.sched01"}


@pytest.mark.parametrize(
    "failure",
    [
        result(1, "", "qstat: cannot connect to server sched01 (errno=111)\n"),
        result(255, "", "qstat: Error 15010\n"),
        CommandResult(("qstat",), None, "", ""),  # timed out
    ],
)
def test_failed_qstat_means_unknown_never_failed(failure):
    with pytest.raises(StatusUnknown):
        Qstat(run=Recorder(failure)).query(["4102.sched01"])


def test_a_qstat_that_does_not_say_what_it_is_is_asked_as_pbs_pro():
    run = Recorder(result(0, SINGLE_JOB), result(0, SINGLE_JOB), version="")
    qstat = Qstat(run=run)
    assert qstat.query(["5120.sched01"])["5120.sched01"].state == "R"
    assert qstat.dialect is Dialect.PBSPRO
    qstat.query(["5120.sched01"])  # detected once: one call per query from now on
    assert run.calls == [["qstat", "-x", "-f", "5120.sched01"]] * 2


def test_torque_is_asked_without_x():
    run = Recorder(result(0, TORQUE_TEXT), version="Version: 6.1.3")
    infos = Qstat(run=run).query(["813.torque01"])
    assert run.calls == [["qstat", "-f", "813.torque01"]]
    assert infos["813.torque01"].state == "C"


def test_no_ids_no_call():
    run = Recorder()
    assert Qstat(run=run).query([]) == {}
    assert run.calls == []


def test_listing_keeps_only_live_jobs():
    run = Recorder(result(0, PBSPRO_TEXT))
    live = Qstat(run=run).list_live()
    assert set(live) == {"4101.sched01", "4102.sched01"}
    assert run.calls == [["qstat", "-f"]]
