"""qstat parsing and the one-call status query, on output captured from a real OpenPBS 23.06.06
(tests/samples/openpbs, made by capture_openpbs.sh) and, for what that server cannot show,
on generated Torque and pre-18 PBS Pro samples (tests/samples/generated_*)."""

import json
import re
import shlex
from pathlib import Path

import pytest

from snakemake_executor_plugin_pbs.commands import CommandResult
from snakemake_executor_plugin_pbs.status import (
    Dialect,
    Qstat,
    StatusUnknown,
    detect_dialect,
    job_id_order,
    listing_argv,
    lookup,
    parse_duration,
    parse_qstat_text,
    parse_text_attributes,
    parse_variable_list,
    query_argv,
)

SAMPLES = Path(__file__).parent / "samples"
CAPTURED = SAMPLES / "openpbs"
TORQUE_TEXT = (SAMPLES / "generated_torque_qstat_f.txt").read_text()
PRE18_TEXT = (SAMPLES / "generated_pbspro_pre18_qstat_xf.txt").read_text()


def _rows(name: str) -> list[list[str]]:
    return [line.split("\t") for line in (CAPTURED / name).read_text().splitlines()]


# role -> job id, and role -> job name, of the jobs capture_openpbs.sh submitted
JOB = {role: job_id for role, job_id, _name, _command in _rows("jobs.tsv")}
NAME = {role: name for role, _id, name, _command in _rows("jobs.tsv")}
# who submitted them, where from, to which server (of which version)
FACTS = dict(_rows("server.tsv"))
SERVER, USER, SUBMIT_DIR = FACTS["server"], FACTS["user"], FACTS["submit_dir"]
UNKNOWN = f"99999.{SERVER}"


def captured(name: str) -> CommandResult:
    """What the real server printed for one capture, and its exit status."""
    [(rc, command)] = [(rc, command) for n, rc, _who, command in _rows("captures.tsv") if n == name]
    return CommandResult(
        tuple(shlex.split(command)),
        int(rc),
        (CAPTURED / f"{name}.stdout").read_text(),
        (CAPTURED / f"{name}.stderr").read_text(),
    )


SEVERAL = captured("qstat-xf-several")  # qstat -x -f <every job>, in the order submitted
SEVERAL_TEXT = SEVERAL.stdout


class Replay:
    """Stands in for run_command: answers each command line with what the real server printed
    for that same command line (captures.tsv), and records the calls."""

    def __init__(self):
        self.answers = {
            result.argv: result
            for result in (captured(n) for n, *_ in _rows("captures.tsv"))
            if result.argv[0] == "qstat"
        }
        self.calls: list[list[str]] = []

    def __call__(self, argv, timeout):
        if list(argv) != ["qstat", "--version"]:
            self.calls.append(list(argv))
        # -E (several ids in one request) prints the same text (compared on the test server);
        # the captures were made without it
        return self.answers[tuple(a for a in argv if a != "-E")]


class Recorder:
    """Stands in for run_command: answers from a script of results and records the calls."""

    def __init__(self, *results: CommandResult):
        self.results = list(results)
        self.calls: list[list[str]] = []

    def __call__(self, argv, timeout):
        if argv == ["qstat", "--version"]:
            return captured("qstat-version")
        self.calls.append(argv)
        return self.results.pop(0)


def result(returncode, stdout="", stderr=""):
    return CommandResult(("qstat",), returncode, stdout, stderr)


# --- the text parser, on the captured several-id answer ---------------------------------------


def test_a_several_id_answer_has_every_job_with_its_state_and_exit_status():
    infos = parse_qstat_text(SEVERAL_TEXT)
    assert SEVERAL.returncode == 0 and SEVERAL.stderr == ""
    assert list(infos) == [JOB[role] for role in NAME]  # every id asked, in the order asked
    assert {role: (infos[JOB[role]].state, infos[JOB[role]].exit_status) for role in JOB} == {
        "ok": ("F", 0),
        "wall": ("F", -29),
        "mem": ("F", -27),
        "del": ("F", 271),
        "exit3": ("F", 3),
        "kill9": ("F", 137),
        "run": ("R", None),
        "hold": ("H", None),
        "queued": ("Q", None),
    }
    assert {role: infos[JOB[role]].name for role in JOB} == NAME
    assert {role for role in JOB if infos[JOB[role]].alive} == {"run", "hold", "queued"}


def test_the_captured_answer_does_wrap_onto_tab_led_lines():
    continued = [line for line in SEVERAL_TEXT.splitlines() if line.startswith("\t")]
    assert len(continued) > 50
    # mid-token (a path cut between two letters) and after a comma
    assert any(re.search(r"[a-z]$", line) for line in SEVERAL_TEXT.splitlines() if " = " in line)
    assert any(line.endswith(",") for line in SEVERAL_TEXT.splitlines())


def test_wrapped_values_are_joined_with_nothing_between():
    infos = parse_qstat_text(SEVERAL_TEXT)
    attrs = parse_text_attributes(SEVERAL_TEXT)
    ok = attrs[JOB["ok"]]
    seq = JOB["ok"].split(".")[0]
    assert ok["Error_Path"] == f"localhost:{SUBMIT_DIR}/capok.e{seq}"
    assert ok["Output_Path"] == f"localhost:{SUBMIT_DIR}/capok.o{seq}"
    variables = parse_variable_list(ok["Variable_List"])
    assert variables["CAP_LONG_A"] == "".join(f"value-{i:02d}-" for i in range(1, 13))
    assert variables["CAP_LONG_B"] == (
        "/a/long/path/value/that/is/longer/than/one/line/of/qstat/output/so/that/it/wraps/mid/token"
    )
    assert variables["PBS_O_QUEUE"] == "workq" and variables["PBS_O_HOST"] == "localhost"
    assert variables["PBS_O_INTERACTIVE_ENCRYPT_METHOD"] == ""  # an empty value, then a wrap
    assert ok["Submit_arguments"].startswith("-N capok -l walltime=00:05:00 -v CAP_LONG_A=value-01")
    assert ok["Submit_arguments"].endswith("/so/that/it/wraps/mid/token ok.sh")
    assert infos[JOB["wall"]].comment.endswith(") and exceeded resource walltime")
    assert infos[JOB["mem"]].comment.endswith(":mem=51200kb) and exceeded resource mem")


def _raw_values(text: str) -> dict[str, dict[str, str]]:
    """Each attribute's value exactly as qstat printed it: the first line after `name = ` (the
    4-space indent and ` = ` are the only layout there), each TAB-led line without its TAB."""
    jobs: dict[str, dict[str, str]] = {}
    for block in text.split("Job Id: ")[1:]:
        job_id, *lines = block.split("\n")
        values = jobs[job_id] = {}
        name = None
        for line in lines:
            if line.startswith("\t"):
                values[name] += line[1:]
            elif line.startswith("    ") and " = " in line:
                name, value = line[4:].split(" = ", 1)
                values[name] = value
    return jobs


@pytest.mark.parametrize("name", ["qstat-xf-several", "qstat-f-listing", "qstat-xf-deleted"])
def test_every_value_is_what_qstat_printed_joined(name):
    # qstat.c breaks a long token at column 78 wherever it is, also right after a space: the
    # first line then ends in that space, and it belongs to the value (captured: `comment =
    # ... and terminated by ` + TAB `<user>@localhost`; `(R: 999 A: ` + TAB `40 T: 40)`).
    text = captured(name).stdout
    assert parse_text_attributes(text) == _raw_values(text)


def test_a_comment_wrapped_after_a_space_keeps_the_space():
    infos = parse_qstat_text(SEVERAL_TEXT)
    assert infos[JOB["del"]].comment.endswith(f") and terminated by {USER}@localhost")
    assert infos[JOB["queued"]].comment == (
        "Can Never Run: Insufficient amount of resource: ncpus (R: 999 A: 40 T: 40)"
    )


def test_workdir_user_queue_and_times_from_the_captured_answer():
    infos = parse_qstat_text(SEVERAL_TEXT)
    for role in JOB:
        if role != "hold":
            assert infos[JOB[role]].workdir == SUBMIT_DIR, role
        assert infos[JOB[role]].user == USER and infos[JOB[role]].queue == "workq"
    # A comma in a value is written `\,` in Variable_List.
    assert infos[JOB["hold"]].workdir == f"{SUBMIT_DIR}/dir,with,commas"
    hold_vars = parse_variable_list(
        parse_text_attributes(SEVERAL_TEXT)[JOB["hold"]]["Variable_List"]
    )
    assert hold_vars["CAP_COMMA"] == "one,two,three"
    running = infos[JOB["run"]]
    assert running.exec_host.startswith(f"{SERVER}/")
    assert running.walltime_limit == 600 and running.walltime_used is not None
    assert re.fullmatch(r"\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}", running.times["stime"])
    assert set(running.times) == {"ctime", "qtime", "etime", "stime", "mtime"}
    assert "obittime" in infos[JOB["ok"]].times
    wall = infos[JOB["wall"]]
    assert wall.walltime_limit == 3 and wall.walltime_used >= 3
    mem = infos[JOB["mem"]]
    assert mem.mem_limit == "50mb" and mem.mem_used.endswith("kb")
    # held and queued jobs never ran: nothing used, no exec_host, no stime
    for role in ("hold", "queued"):
        info = infos[JOB[role]]
        assert (info.walltime_used, info.exec_host, info.times.get("stime")) == (None, None, None)


def test_jobs_deleted_before_they_ran_finish_without_an_exit_status():
    infos = parse_qstat_text(captured("qstat-xf-deleted").stdout)
    ended = {
        role: (infos[JOB[role]].state, infos[JOB[role]].exit_status)
        for role in JOB
        if JOB[role] in infos
    }
    assert ended == {"run": ("F", 271), "hold": ("F", None), "queued": ("F", None)}


def test_generated_torque_sample_state_c_and_lowercase_exit_status():
    infos = parse_qstat_text(TORQUE_TEXT)
    assert {job_id: (i.state, i.exit_status) for job_id, i in infos.items()} == {
        "812.torque01": ("R", None),
        "813.torque01": ("C", 0),
        "814.torque01": ("C", 271),
    }
    assert not infos["814.torque01"].alive
    assert infos["814.torque01"].walltime_used == 3605
    assert infos["812.torque01"].workdir == "/home/jdoe/sweep"


def test_generated_pre18_sample_parses_like_the_captured_one():
    infos = parse_qstat_text(PRE18_TEXT)
    assert {job_id: (i.state, i.exit_status) for job_id, i in infos.items()} == {
        "4106.sched01": ("F", 271),
        "4107.sched01": ("F", 265),
    }
    assert infos["4106.sched01"].workdir == "/mnt/lustre/users/jdoe/sweep"
    assert (infos["4106.sched01"].walltime_used, infos["4106.sched01"].walltime_limit) == (
        3612,
        3600,
    )


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


def test_dialect_of_the_captured_server():
    version = captured("qstat-version")
    assert version.returncode == 0 and version.stdout == f"pbs_version = {FACTS['version']}\n"
    assert detect_dialect(version.stdout) is Dialect.PBSPRO


@pytest.mark.parametrize(
    ("output", "dialect"),
    [
        ("pbs_version = 19.1.3\n", Dialect.PBSPRO),
        ("pbs_version = 14.1.2\n", Dialect.PBSPRO),
        ("Version: 6.1.3\nCommit: 1234abcd\n", Dialect.TORQUE),  # Torque (no server here)
        ("qstat: invalid option -- '-'\n", None),
    ],
)
def test_dialect_from_version(output, dialect):
    assert detect_dialect(output) is dialect


def test_command_lines_per_dialect():
    # PBS Pro is asked in text whatever its version: OpenPBS's JSON with several ids prints
    # only the first job (openpbs/openpbs issue 2672; captured below).
    # several ids in one request (-E): without it qstat.c asks the server once per id
    assert query_argv(Dialect.PBSPRO, ["1.s", "2.s"]) == ["qstat", "-E", "-x", "-f", "1.s", "2.s"]
    assert query_argv(Dialect.PBSPRO, ["1.s"]) == ["qstat", "-x", "-f", "1.s"]  # 153 if unknown
    assert query_argv(Dialect.PBSPRO, ["1.s", "2.s"], batched=False)[1] == "-x"
    assert query_argv(Dialect.TORQUE, ["1.s", "2.s"]) == ["qstat", "-f", "1.s", "2.s"]  # no -E
    assert query_argv(Dialect.TORQUE, ["1.s"]) == ["qstat", "-f", "1.s"]  # -x is XML there
    assert listing_argv(Dialect.PBSPRO) == ["qstat", "-f"]
    assert listing_argv(Dialect.TORQUE) == ["qstat", "-f"]


def test_openpbs_json_with_several_ids_prints_only_the_first_job_and_exits_0():
    # Why the executor never asks `-F json`: the same question as SEVERAL, in JSON.
    several = captured("qstat-xf-json-several")
    assert several.argv == ("qstat", "-x", "-f", "-F", "json", *SEVERAL.argv[3:])
    assert several.returncode == 0 and several.stderr == ""
    assert list(json.loads(several.stdout)["Jobs"]) == [JOB["ok"]]  # 1 job of 9
    assert len(parse_qstat_text(SEVERAL_TEXT)) == len(JOB)
    one = json.loads(captured("qstat-xf-json-one-finished").stdout)
    assert one["pbs_version"] == FACTS["version"]
    assert one["Jobs"][JOB["ok"]]["Exit_status"] == 0
    assert one["Jobs"][JOB["ok"]]["Variable_List"]["PBS_O_WORKDIR"] == SUBMIT_DIR


def test_job_ids_are_ordered_by_their_number():
    ids = ["1000.srv", "999.srv", "12[3].srv", "1001", "weird.srv", "998.srv.example.org"]
    assert sorted(ids, key=job_id_order) == [
        "weird.srv",
        "12[3].srv",
        "998.srv.example.org",
        "999.srv",
        "1000.srv",
        "1001",
    ]


def test_lookup_tolerates_a_longer_or_shorter_server_name():
    infos = parse_qstat_text(SEVERAL_TEXT)
    running, seq = JOB["run"], JOB["run"].split(".")[0]
    assert lookup(infos, running).state == "R"
    assert lookup(infos, f"{running}.example.org").state == "R"
    assert lookup(infos, seq).state == "R"
    assert lookup(infos, UNKNOWN) is None


# --- Qstat, replaying the real server's answers ---------------------------------------------


def test_query_is_one_call_for_all_ids():
    run = Replay()
    answer = Qstat(run=run).query(list(JOB.values()))
    assert run.calls == [["qstat", "-E", "-x", "-f", *JOB.values()]]
    assert answer[JOB["ok"]].exit_status == 0 and answer[JOB["wall"]].exit_status == -29
    assert set(answer) == set(JOB.values())
    assert answer.unknown == frozenset() and answer.omitted == ()


def test_an_unknown_id_among_several_is_asked_alone_and_forgotten():
    # The server prints the jobs it knows and exits 153; asked alone, it says it does not
    # know the other (153, `qstat: Unknown Job Id 99999.vm`).
    batch = captured("qstat-xf-one-unknown-among-several")
    assert batch.returncode == 153 and batch.stderr == f"qstat: Unknown Job Id {UNKNOWN}\n"
    run = Replay()
    answer = Qstat(run=run).query([JOB["ok"], UNKNOWN, JOB["exit3"]])
    assert run.calls == [
        ["qstat", "-E", "-x", "-f", JOB["ok"], UNKNOWN, JOB["exit3"]],
        ["qstat", "-x", "-f", UNKNOWN],
    ]
    assert set(answer) == {JOB["ok"], JOB["exit3"]} and answer.forgotten(UNKNOWN)
    assert answer[JOB["exit3"]].exit_status == 3 and answer.omitted == ()


def test_finished_job_asked_without_x_exits_35_and_the_running_one_is_printed():
    alone = captured("qstat-f-finished-without-x")
    assert alone.returncode == 35 and alone.stdout == ""
    assert alone.stderr == (
        f"qstat: {JOB['ok']} Job has finished, use -x or -H to obtain historical job information\n"
    )
    batch = captured("qstat-f-finished-among-several-without-x")
    assert batch.returncode == 35 and batch.stderr == alone.stderr
    assert set(Qstat._parse(batch)) == {JOB["run"]}  # a 35 is per job: what it printed counts


def test_a_job_the_answer_leaves_out_is_asked_about_alone():
    # Asked about two jobs, a server prints one and exits 0 (OpenPBS's JSON does: see above):
    # the other is not "ended".
    only_running = captured("qstat-f-finished-among-several-without-x").stdout
    run = Recorder(result(0, only_running), result(0, SEVERAL_TEXT))
    answer = Qstat(run=run).query([JOB["run"], JOB["wall"]])
    assert run.calls[1] == ["qstat", "-x", "-f", JOB["wall"]]
    assert answer[JOB["wall"]].exit_status == -29 and answer.omitted == (JOB["wall"],)
    assert not answer.forgotten(JOB["wall"])


def test_only_the_server_saying_it_does_not_know_a_job_makes_it_forgotten():
    unknown = captured("qstat-xf-unknown")
    assert unknown.returncode == 153 and unknown.stdout == ""
    batch = captured("qstat-xf-one-unknown-among-several")
    run = Recorder(batch, unknown)
    answer = Qstat(run=run).query([JOB["ok"], UNKNOWN])
    assert set(answer) == {JOB["ok"], JOB["exit3"]} and answer.forgotten(UNKNOWN)
    assert len(run.calls) == 2


@pytest.mark.parametrize(
    "alone",
    [
        result(1, "", "qstat: cannot connect to server vm (errno=111)\n"),
        CommandResult(("qstat",), None, "", ""),  # timed out
        result(0, "", ""),  # exit 0 and nothing printed: no word either way
        result(153, "", "qstat: Error 15010\n"),  # 153 without "Unknown Job Id"
    ],
)
def test_a_left_out_job_whose_lone_question_fails_is_neither_shown_nor_forgotten(alone):
    only_running = captured("qstat-f-finished-among-several-without-x").stdout
    run = Recorder(result(0, only_running), alone)
    answer = Qstat(run=run).query([JOB["run"], JOB["wall"]])
    assert set(answer) == {JOB["run"]} and not answer.forgotten(JOB["wall"])


# OpenPBS 23.06 with `job_history_enable = False` (seen on the test server): any `qstat -x`
# prints no job at all, running ones included, says so per id on stderr, and exits 0.
def _no_history(*ids):
    return result(0, "", "".join(f"qstat: PBS is not configured to maintain job history {i}\n"
                                 for i in ids))  # fmt: skip


def test_without_job_history_the_server_is_asked_without_x():
    running = captured("qstat-f-finished-among-several-without-x").stdout  # the running job
    unknown = f"qstat: Unknown Job Id {JOB['ok']}\n"
    run = Recorder(
        _no_history(JOB["run"], JOB["ok"]),  # -x: nothing about anyone
        result(153, running, unknown),  # without -x: the running job; the ended one unknown
        result(153, "", unknown),  # the ended one alone, without -x
        result(153, running, unknown),  # next poll: without -x straight away
        result(153, "", unknown),
    )
    qstat = Qstat(run=run)
    for _ in range(2):
        answer = qstat.query([JOB["run"], JOB["ok"]])
        assert answer[JOB["run"]].state == "R" and answer.forgotten(JOB["ok"])
    assert ["-x" in call for call in run.calls] == [True] + [False] * 4


def test_history_turned_back_on_is_noticed():
    qstat = Qstat(run=Recorder(_no_history(JOB["run"]), result(0, SEVERAL_TEXT)))
    qstat.query([JOB["run"]])
    assert not qstat.history
    finished = captured("qstat-f-finished-without-x")  # exit 35: use -x
    run = Recorder(finished, result(0, SEVERAL_TEXT))
    qstat._run = run
    assert qstat.query([JOB["ok"]])[JOB["ok"]].exit_status == 0
    assert qstat.history and run.calls == [
        ["qstat", "-f", JOB["ok"]],
        ["qstat", "-x", "-f", JOB["ok"]],
    ]


@pytest.mark.parametrize(
    "failure",
    [
        result(1, "", "qstat: cannot connect to server vm (errno=111)\n"),
        result(255, "", "qstat: Error 15010\n"),
        CommandResult(("qstat",), None, "", ""),  # timed out
    ],
)
def test_failed_qstat_means_unknown_never_failed(failure):
    with pytest.raises(StatusUnknown):
        Qstat(run=Recorder(failure)).query([JOB["run"]])


def test_a_qstat_that_does_not_say_what_it_is_is_asked_as_pbs_pro():
    answer = result(0, SEVERAL_TEXT)

    def run(argv, timeout):
        calls.append(argv)
        return result(0, "", "") if argv == ["qstat", "--version"] else answer

    calls = []
    qstat = Qstat(run=run)
    assert qstat.query([JOB["run"]])[JOB["run"]].state == "R"
    assert qstat.dialect is Dialect.PBSPRO
    qstat.query([JOB["run"]])  # detected once: one call per query from now on
    assert calls == [["qstat", "--version"]] + [["qstat", "-x", "-f", JOB["run"]]] * 2


def test_torque_is_asked_without_x():
    def run(argv, timeout):
        calls.append(argv)
        if argv == ["qstat", "--version"]:
            return result(0, "Version: 6.1.3\n")
        return result(0, TORQUE_TEXT)

    calls = []
    infos = Qstat(run=run).query(["813.torque01"])
    assert calls[1:] == [["qstat", "-f", "813.torque01"]]
    assert infos["813.torque01"].state == "C"


def test_no_ids_no_call():
    run = Recorder()
    assert Qstat(run=run).query([]) == {}
    assert run.calls == []


def test_listing_keeps_only_live_jobs():
    # `qstat -f` without -x or ids: every job of every user that has not finished (here also
    # the jobs of tests running on the same server at the time).
    listing = captured("qstat-f-listing")
    assert listing.returncode == 0
    everything = parse_qstat_text(listing.stdout)
    assert all(info.alive for info in everything.values())
    run = Replay()
    live = Qstat(run=run).list_live()
    assert run.calls == [["qstat", "-f"]]
    mine = {info.name: info.state for info in live.values() if info.name.startswith("cap")}
    assert mine == {"caprun": "R", "caphold": "H", "capqueued": "Q"}


def test_a_qstat_without_E_is_asked_again_without_it_and_never_with_it_again():
    """An older PBS Pro's qstat may not know -E: a usage error (exit 2), then the same
    question without it, and every later one too."""
    batch = captured("qstat-xf-one-unknown-among-several")
    usage = result(2, "", "qstat: invalid option -- 'E'\nusage: qstat ...\n")
    run = Recorder(usage, batch, result(153, "", f"qstat: Unknown Job Id {UNKNOWN}\n"), batch)
    qstat = Qstat(run=run)
    answer = qstat.query([JOB["ok"], UNKNOWN])
    assert JOB["ok"] in answer and answer.forgotten(UNKNOWN)
    assert ["-E" in call for call in run.calls] == [True, False, False]
    qstat.query([JOB["ok"], JOB["exit3"]])
    assert "-E" not in run.calls[-1]


def test_an_unknown_id_in_a_batched_answer_is_asked_about_alone():
    """With -E, OpenPBS says an unknown id on stderr but exits 0 (seen on 23.06): the answer
    leaves it out, and only the server's word about it alone (153) makes it forgotten."""
    batch = captured("qstat-xf-one-unknown-among-several")
    batched = result(0, batch.stdout, batch.stderr)
    run = Recorder(batched, result(153, "", f"qstat: Unknown Job Id {UNKNOWN}\n"))
    answer = Qstat(run=run).query([JOB["ok"], UNKNOWN])
    assert JOB["ok"] in answer and answer.forgotten(UNKNOWN)
    assert run.calls[1] == ["qstat", "-x", "-f", UNKNOWN]
