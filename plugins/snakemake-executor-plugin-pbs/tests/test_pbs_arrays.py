"""Job arrays (--pbs-array-jobs) against the fake qsub/qstat/qdel: which ready jobs share an
array, chunks at the server's max_array_size, the array's job script, subjobs tracked,
classified, resubmitted alone and cancelled, intents of a controller killed between qsub and
recording resolved without a second array, held-back arrays, and Torque's -t."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes import Clock, fake_pbs
from snakemake.exceptions import WorkflowError

from snakemake_executor_plugin_pbs import ExecutorSettings, controller_config, parse_array_jobs
from snakemake_executor_plugin_pbs.controller import (
    ALL_RULES,
    Controller,
    ControllerConfig,
    Finished,
    Target,
    Tracked,
)
from snakemake_executor_plugin_pbs.policy import Limits
from snakemake_executor_plugin_pbs.registry import Registry
from snakemake_executor_plugin_pbs.status import Dialect, Qstat, job_id_order, lookup
from snakemake_executor_plugin_pbs.submit import (
    ArrayMember,
    JobSpec,
    array_of,
    job_name,
    qsub_argv,
    render_array_script,
    subjob_id,
)

REGISTRY = ".snakemake-pbs"
QUEUE_LIMIT = [38, "qsub: would exceed queue workq's per-user limit of jobs in 'Q' state"]
UNREACHABLE = [111, "qsub: cannot connect to server fakesrv (errno=111)"]


def make_controller(workdir: Path, clock=None, registry=None, qstat=None, **changes):
    config = dict(
        workdir=workdir,
        log_dir=workdir / "logs" / "pbs",
        queue="workq",
        limits=Limits(),
        submit_backoff=60,
        command_timeout=10,
        array_jobs=frozenset({"simulate"}),
    )
    return Controller(
        ControllerConfig(**{**config, **changes}),
        registry or Registry(workdir / REGISTRY),
        qstat=qstat,
        clock=clock or Clock(),
    )


def target(i: int = 0, rule: str = "simulate", **changes) -> Target:
    output = f"results/{rule}/sample{i}/done.txt"
    fields = dict(
        name=job_name([output]),
        rule=rule,
        outputs=(output,),
        command=f"python -m snakemake --target-jobs {rule}:sample={i}",
        threads=2,
        mem_mb=1000,
        runtime_minutes=10,
    )
    return Target(**{**fields, **changes})


def poll(controller: Controller, results: dict) -> dict:
    return controller.poll(r for r in results.values() if isinstance(r, Tracked))


def qsubs(pbs) -> list[list[str]]:
    return pbs.calls("qsub")


def array_flag(argv: list[str]) -> str | None:
    """The -J (or -t) range of a qsub call, None for a plain job."""
    for flag in ("-J", "-t"):
        if flag in argv:
            return f"{flag} {argv[argv.index(flag) + 1]}"
    return None


def record(workdir: Path, t: Target):
    return Registry(workdir / REGISTRY).load(t.name)


# -- which jobs share an array -------------------------------------------------------------


def test_ready_jobs_of_one_rule_with_the_same_resources_go_out_as_one_array(pbs, workdir):
    targets = [target(i) for i in range(5)]
    results = make_controller(workdir).start(targets)
    assert [array_flag(argv) for argv in qsubs(pbs)] == ["-J 0-4"]
    (array,) = pbs.arrays()
    assert array["id"] == "1000[].fakesrv"
    for i, t in enumerate(targets):  # each target follows its own subjob
        tracked = results[t.name]
        assert isinstance(tracked, Tracked) and tracked.job_id == f"1000[{i}].fakesrv"
        assert tracked.array_id == "1000[].fakesrv" and tracked.array_size == 5
        last = record(workdir, t).last
        assert (last.job_id, last.array_id, last.array_index) == (tracked.job_id, array["id"], i)
        # the array's PBS name is readable and ends with the identity the record keeps
        assert array["name"] == f"simulate.array.{last.array_name}" and last.array_size == 5
    assert [job["state"] for job in pbs.subjobs(array["id"])] == ["Q"] * 5


def test_jobs_asking_for_different_resources_or_of_other_rules_go_out_apart(pbs, workdir):
    same = [target(i) for i in range(3)]
    more_memory = [target(i, mem_mb=8000) for i in range(3, 5)]
    other_queue = [target(i, queue="long") for i in range(5, 7)]
    alone = [target(7, runtime_minutes=99)]  # a group of one is a plain job
    off = [target(i, rule="merge") for i in range(2)]  # arrays are not on for this rule
    make_controller(workdir).start(same + more_memory + other_queue + alone + off)
    flags = [array_flag(argv) for argv in qsubs(pbs)]
    assert flags == ["-J 0-2", "-J 0-1", "-J 0-1", None, None, None]
    arrays = pbs.arrays()
    assert [len(pbs.subjobs(a["id"])) for a in arrays] == [3, 2, 2]
    assert "mem=8000mb" in arrays[1]["select"] and arrays[2]["queue"] == "long"


def test_all_puts_every_rules_jobs_in_arrays(pbs, workdir):
    targets = [target(i) for i in range(2)] + [target(i, rule="merge") for i in range(2)]
    make_controller(workdir, array_jobs=frozenset({ALL_RULES})).start(targets)
    assert [array_flag(argv) for argv in qsubs(pbs)] == ["-J 0-1", "-J 0-1"]


def test_arrays_are_cut_at_the_servers_max_array_size_read_once(pbs, workdir):
    pbs.configure(max_array_size=3)
    controller = make_controller(workdir)
    controller.start([target(i) for i in range(7)])
    # 3 + 3 + 1: the last is a job of its own
    assert [array_flag(argv) for argv in qsubs(pbs)] == ["-J 0-2", "-J 0-2", None]
    controller.start([target(i) for i in range(10, 14)])
    assert [array_flag(argv) for argv in qsubs(pbs)][3:] == ["-J 0-2", None]
    asked = [argv for argv in pbs.calls("qstat") if "-B" in argv]
    assert asked == [["qstat", "-B", "-f"]]


def test_a_server_that_does_not_say_its_max_array_size_gets_10000(pbs, workdir):
    make_controller(workdir).start([target(i) for i in range(30)])
    assert [array_flag(argv) for argv in qsubs(pbs)] == ["-J 0-29"]


# -- the array's job script ----------------------------------------------------------------


QUOTED = """printf '%s|%s\\n' "it's" "a \\"b\\" $((1+1))" > {out} && echo "[$PBS_JOBID]" >&2"""


def test_each_subjob_runs_its_own_command_and_leaves_its_own_exit_record(pbs, workdir):
    """The array's script, run by the fake PBS as subjobs: each runs its member's command
    (quotes and all), by $PBS_ARRAY_INDEX; each leaves an exit record under its own id and
    its log under the target's own per-submission log name."""
    pbs.configure(run=True)
    targets = [
        target(i, command=QUOTED.format(out=workdir / f"out{i}.txt") + f"; exit {i % 2}")
        for i in range(3)
    ]
    controller = make_controller(workdir)
    results = controller.start(targets)
    deadline = time.monotonic() + 120
    while not all(job["state"] == "X" for job in pbs.subjobs("1000[].fakesrv")):
        assert time.monotonic() < deadline, pbs.jobs()
        time.sleep(0.1)
    for i, t in enumerate(targets):
        assert (workdir / f"out{i}.txt").read_text() == 'it\'s|a "b" 2\n'
        exit_record = workdir / REGISTRY / "exit" / f"1000[{i}].fakesrv"
        assert exit_record.read_text() == f"{i % 2}\n"
        log_err = Path(results[t.name].log_err)
        assert log_err.name == f"{t.name}.1.err" and log_err.is_symlink()
        assert log_err.read_text() == f"[1000[{i}].fakesrv]\n"
        assert Registry(workdir / REGISTRY).exit_record(f"1000[{i}].fakesrv") == i % 2
    results = poll(controller, results)
    assert isinstance(results[targets[0].name], Finished) and results[targets[0].name].succeeded
    assert isinstance(results[targets[2].name], Finished) and results[targets[2].name].succeeded
    # the failed one (exit 1) is resubmitted alone: a plain job
    assert results[targets[1].name].job_id == "1001.fakesrv"
    assert array_flag(qsubs(pbs)[-1]) is None


def test_the_array_script_names_the_array_and_one_log_per_subjob(pbs, workdir):
    targets = [target(i) for i in range(2)]
    make_controller(workdir).start(targets)
    (array,) = pbs.arrays()
    script = array["script"]
    assert f"#PBS -N {array['name']}\n" in script
    identity = array["name"].removeprefix("simulate.array.")  # readable: rule, array, identity
    logs = workdir / "logs" / "pbs" / "simulate"
    assert f"#PBS -o {logs / identity}.^array_index^.out\n" in script
    assert f"#PBS -e {logs / identity}.^array_index^.err\n" in script
    assert "#PBS -l select=1:ncpus=2:mem=1000mb\n#PBS -l walltime=00:10:00\n" in script
    assert 'case "${PBS_ARRAY_INDEX:-}" in\n0)\n' in script
    for t in targets:
        assert f"    {t.command}\n    ;;\n" in script
    assert (workdir / REGISTRY / "scripts" / f"{identity}.sh").read_text() == script
    # each target's own log names lead to its subjob's files
    for i, t in enumerate(targets):
        link = logs / f"{t.name}.1.out"
        assert link.is_symlink() and link.resolve() == logs / f"{identity}.{i}.out"


def test_an_index_without_a_member_fails_loudly(tmp_path):
    spec = JobSpec(
        name="smkarray", command="", log_out=tmp_path / "o", log_err=tmp_path / "e",
        exit_dir=tmp_path / "exit",
    )  # fmt: skip
    script = tmp_path / "array.sh"
    script.write_text(render_array_script(spec, [ArrayMember(0, "echo zero")]))
    env = {"PATH": "/usr/bin:/bin", "PBS_O_WORKDIR": str(tmp_path), "PBS_JOBID": "5[7].srv"}
    ran = subprocess.run(["bash", script], env={**env, "PBS_ARRAY_INDEX": "7"},
                         capture_output=True, text=True)  # fmt: skip
    assert ran.returncode == 1 and "no Snakemake job for array index '7'" in ran.stderr
    ran = subprocess.run(["bash", script], env={**env, "PBS_ARRAY_INDEX": "0"},
                         capture_output=True, text=True)  # fmt: skip
    assert (ran.returncode, ran.stdout) == (0, "zero\n")
    assert (tmp_path / "exit" / "5[7].srv").read_text() == "0\n"


# -- Torque ------------------------------------------------------------------------------


def test_torque_arrays_use_t_and_pbs_arrayid(pbs, workdir):
    qstat = Qstat(timeout=10, dialect=Dialect.TORQUE)
    targets = [target(i) for i in range(3)]
    results = make_controller(workdir, qstat=qstat).start(targets)
    (argv,) = qsubs(pbs)
    assert argv[:3] == ["qsub", "-t", "0-2"] and "-J" not in argv
    (array,) = pbs.arrays()
    assert 'case "${PBS_ARRAYID:-}" in' in array["script"]
    assert "^array_index^" not in array["script"]  # Torque appends -<index> itself
    logs = workdir / "logs" / "pbs" / "simulate"
    assert f"#PBS -o {logs / array['name']}.out\n" in array["script"]
    link = Path(results[targets[2].name].log_out)
    assert link.resolve() == logs / f"{array['name']}.out-2"


def test_qsub_argv_puts_the_array_range_first():
    argv = qsub_argv(Path("/s.sh"), ["-m", "n"], ["B", "A"], ["-J", "0-9"])
    assert argv == ["qsub", "-J", "0-9", "-m", "n", "-v", "A,B", "/s.sh"]


# -- subjob ids ----------------------------------------------------------------------------


def test_subjob_ids_are_ordered_and_found_by_number_and_index():
    ids = ["12[10].srv", "12[].srv", "12[3].srv", "9[2].srv", "12.srv", "100.srv"]
    assert sorted(ids, key=job_id_order) == [
        "9[2].srv", "12.srv", "12[].srv", "12[3].srv", "12[10].srv", "100.srv",
    ]  # fmt: skip
    infos = {"12[3].srv.example.org": "three", "12[10].srv.example.org": "ten"}
    assert lookup(infos, "12[3].srv") == "three" and lookup(infos, "12[1].srv") is None
    assert subjob_id("12[].srv", 3) == "12[3].srv" and array_of("12[3].srv") == ("12[].srv", 3)
    assert array_of("12.srv") is None and array_of("12[].srv") is None


def test_a_subjobs_exit_record_is_never_another_jobs(tmp_path):
    # `12[3].*` as a glob means `123.*`: job 123's record was read for subjob 12[3]
    registry = Registry(tmp_path)
    registry.exit_dir.mkdir(parents=True)
    (registry.exit_dir / "123.srv").write_text("1\n")
    assert registry.exit_record("12[3].srv") is None
    (registry.exit_dir / "12[3].srv.example.org").write_text("0\n")
    assert registry.exit_record("12[3].srv") == 0


# -- restarts: adopted, and intents resolved without a second array --------------------------


def test_a_restarted_controller_adopts_live_subjobs_from_the_registry(pbs, workdir):
    targets = [target(i) for i in range(4)]
    make_controller(workdir).start(targets)
    statuses = len(pbs.calls("qstat"))
    results = make_controller(workdir).start(targets)
    assert len(qsubs(pbs)) == 1
    assert [results[t.name].job_id for t in targets] == [f"1000[{i}].fakesrv" for i in range(4)]
    assert all(results[t.name].array_id == "1000[].fakesrv" for t in targets)
    asked = pbs.calls("qstat")[statuses:]
    assert [argv for argv in asked if "--version" not in argv] == [
        ["qstat", "-E", "-x", "-f", *(f"1000[{i}].fakesrv" for i in range(4))]
    ]


class Killed(BaseException):
    """The controller dies here (as under SIGKILL: nothing after it runs)."""


class DiesRecordingIds(Registry):
    """A registry whose controller is killed after qsub, once it has recorded `survive`
    members' subjob ids."""

    def __init__(self, root, survive: int):
        super().__init__(root)
        self.survive = survive

    def save(self, record, durable=True):
        if record.last is not None and record.last.job_id:
            if self.survive == 0:
                raise Killed
            self.survive -= 1
        super().save(record)


@pytest.mark.parametrize("recorded", [0, 2])
def test_a_controller_killed_between_qsub_and_recording_the_ids_leaves_one_array(
    pbs, workdir, recorded
):
    targets = [target(i) for i in range(5)]
    dying = make_controller(workdir, registry=DiesRecordingIds(workdir / REGISTRY, recorded))
    with pytest.raises(Killed):
        dying.start(targets)
    assert len(qsubs(pbs)) == 1
    intents = [record(workdir, t).last for t in targets]
    assert [s.job_id is None for s in intents] == [False] * recorded + [True] * (5 - recorded)
    assert {f"simulate.array.{s.array_name}" for s in intents} == {pbs.arrays()[0]["name"]}
    # the next controller finds the array by its name and each subjob by its index
    pbs.add_array(2000, pbs.arrays()[0]["name"], "/elsewhere", ["R", "R"])  # not ours
    results = make_controller(workdir).start(targets)
    assert len(qsubs(pbs)) == 1, "a second array was submitted"
    assert [results[t.name].job_id for t in targets] == [f"1000[{i}].fakesrv" for i in range(5)]
    assert [record(workdir, t).last.job_id for t in targets] == [
        f"1000[{i}].fakesrv" for i in range(5)
    ]


def test_subjobs_of_a_killed_qsub_that_ended_meanwhile_are_concluded_not_run_again(pbs, workdir):
    targets = [target(i) for i in range(3)]
    with pytest.raises(Killed):
        make_controller(workdir, registry=DiesRecordingIds(workdir / REGISTRY, 0)).start(targets)
    pbs.finish("1000[0].fakesrv", 0)  # one ended while no controller ran, the others live
    for i, t in enumerate(targets):
        if i == 0:
            (workdir / t.outputs[0]).parent.mkdir(parents=True)
            (workdir / t.outputs[0]).write_text("done")
    controller = make_controller(workdir)
    controller.reconcile()  # what the executor does first
    assert record(workdir, targets[0]).last.outcome == "success"
    results = controller.start([replace_incomplete(t) for t in targets])
    assert len(qsubs(pbs)) == 1
    assert isinstance(results[targets[0].name], Finished) and results[targets[0].name].succeeded
    assert [results[t.name].job_id for t in targets[1:]] == ["1000[1].fakesrv", "1000[2].fakesrv"]


def test_an_array_that_ended_while_no_controller_ran_is_concluded_from_history(pbs, workdir):
    targets = [target(i) for i in range(3)]
    with pytest.raises(Killed):
        make_controller(workdir, registry=DiesRecordingIds(workdir / REGISTRY, 1)).start(targets)
    for i, t in enumerate(targets):  # the whole array ended: only the history knows it
        pbs.finish(f"1000[{i}].fakesrv", 0)
        (workdir / t.outputs[0]).parent.mkdir(parents=True)
        (workdir / t.outputs[0]).write_text("done")
    controller = make_controller(workdir)
    controller.reconcile()
    assert [record(workdir, t).last.outcome for t in targets] == ["success"] * 3
    results = controller.start([replace_incomplete(t) for t in targets])
    assert all(isinstance(r, Finished) and r.succeeded for r in results.values())
    assert len(qsubs(pbs)) == 1


def test_subjobs_an_answer_leaves_out_are_asked_about_alone_never_taken_for_ended(pbs, workdir):
    controller = make_controller(workdir)
    results = controller.start([target(i) for i in range(3)])
    pbs.configure(first_only=True)  # the answer shows the first subjob only
    for _ in range(3):
        results = poll(controller, results)
    assert len(qsubs(pbs)) == 1
    assert [r.job_id for r in results.values()] == [f"1000[{i}].fakesrv" for i in range(3)]
    alone = [argv for argv in pbs.status_calls() if len(argv) == 4]
    assert ["qstat", "-x", "-f", "1000[2].fakesrv"] in alone


def replace_incomplete(t: Target) -> Target:
    """The target as the next Snakemake hands it: still marked incomplete."""
    return Target(**{**t.__dict__, "incomplete": True})


def test_intents_whose_array_never_reached_the_server_are_submitted_once(pbs, workdir):
    targets = [target(i) for i in range(3)]
    pbs.configure(qsub_failures=[["silent", ""]])  # the array exists, qsub's answer is lost
    clock = Clock()
    controller = make_controller(workdir, clock)
    results = controller.start(targets)
    assert all(r.job_id is None and "may exist" in r.waiting for r in results.values())
    (lost,) = pbs.arrays()
    # ... and then the server lost it (never there, as far as anyone can tell)
    for job in [lost, *pbs.subjobs(lost["id"])]:
        (pbs.state / "jobs" / f"{job['id'].split('.')[0]}.json").unlink()
    clock.now += 61
    results = poll(controller, results)
    assert [array_flag(argv) for argv in qsubs(pbs)] == ["-J 0-2", "-J 0-2"]
    assert [results[t.name].job_id for t in targets] == [f"1001[{i}].fakesrv" for i in range(3)]
    for t in targets:
        first, second = record(workdir, t).submissions
        assert first.outcome == "lost" and second.array_name != first.array_name


def test_a_lost_qsub_answer_is_followed_by_the_array_not_a_second_one(pbs, workdir):
    pbs.configure(qsub_failures=[["silent", ""]])
    clock = Clock()
    controller = make_controller(workdir, clock)
    targets = [target(i) for i in range(3)]
    results = controller.start(targets)
    clock.now += 61
    results = poll(controller, results)
    assert len(qsubs(pbs)) == 1
    assert [results[t.name].job_id for t in targets] == [f"1000[{i}].fakesrv" for i in range(3)]


# -- subjobs end: classified, resubmitted alone ------------------------------------------------


def test_subjobs_killed_at_walltime_or_for_memory_are_resubmitted_alone(pbs, workdir):
    targets = [target(i) for i in range(4)]
    controller = make_controller(workdir, limits=Limits(mem_growth=2))
    results = controller.start(targets)
    pbs.finish("1000[1].fakesrv", -29)
    pbs.finish("1000[2].fakesrv", -27)
    pbs.finish("1000[3].fakesrv", 0)
    results = poll(controller, results)
    assert results[targets[0].name].job_id == "1000[0].fakesrv"  # still running
    assert results[targets[3].name].succeeded
    walltime, memory = record(workdir, targets[1]), record(workdir, targets[2])
    assert [s.outcome for s in walltime.submissions] == ["walltime", None]
    assert [s.outcome for s in memory.submissions] == ["memory", None]
    # each goes out alone, as a plain job; the memory one with twice the memory
    assert [array_flag(argv) for argv in qsubs(pbs)] == ["-J 0-3", None, None]
    assert results[targets[1].name].job_id == "1001.fakesrv"
    assert results[targets[2].name].job_id == "1002.fakesrv"
    assert results[targets[1].name].array_id is None
    assert "mem=2000mb" in pbs.job("1002.fakesrv")["select"]
    assert walltime.last.array_name is None and memory.last.mem_mb == 2000


def test_a_subjob_deleted_by_hand_is_resubmitted_alone(pbs, workdir):
    targets = [target(i) for i in range(3)]
    controller = make_controller(workdir)
    results = controller.start(targets)
    assert subprocess.run(["qdel", "1000[1].fakesrv"]).returncode == 0
    results = poll(controller, results)
    assert record(workdir, targets[1]).submissions[0].outcome == "killed"
    assert results[targets[1].name].job_id == "1001.fakesrv"
    assert array_flag(qsubs(pbs)[-1]) is None
    assert [results[t.name].job_id for t in (targets[0], targets[2])] == [
        "1000[0].fakesrv", "1000[2].fakesrv",
    ]  # fmt: skip


def test_one_qstat_per_poll_for_subjobs_and_plain_jobs(pbs, workdir):
    controller = make_controller(workdir)
    results = controller.start([target(i) for i in range(3)] + [target(9, rule="merge")])
    before = len(pbs.status_calls())
    results = poll(controller, results)
    assert len(pbs.status_calls()) == before + 1
    assert pbs.status_calls()[-1] == [
        "qstat", "-E", "-x", "-f", "1000[0].fakesrv", "1000[1].fakesrv", "1000[2].fakesrv",
        "1001.fakesrv",
    ]  # fmt: skip


# -- refusals ------------------------------------------------------------------------------


def test_an_array_refused_for_a_queue_limit_is_held_back_and_retried_whole(pbs, workdir):
    pbs.configure(qsub_failures=[QUEUE_LIMIT])
    controller = make_controller(workdir)
    targets = [target(i) for i in range(4)]
    results = controller.start(targets)
    assert all(r.job_id is None and "queue limit" in r.waiting for r in results.values())
    assert all(record(workdir, t).submissions == [] for t in targets)  # no intent left
    results = poll(controller, results)
    assert [array_flag(argv) for argv in qsubs(pbs)] == ["-J 0-3", "-J 0-3"]
    assert [results[t.name].job_id for t in targets] == [f"1000[{i}].fakesrv" for i in range(4)]


def test_an_unreachable_server_holds_the_array_back_with_backoff(pbs, workdir):
    pbs.configure(qsub_failures=[UNREACHABLE])
    clock = Clock()
    controller = make_controller(workdir, clock)
    results = controller.start([target(i) for i in range(2)])
    assert all("retrying in 60s" in r.waiting for r in results.values())
    results = poll(controller, results)
    assert len(qsubs(pbs)) == 1  # not before the backoff
    clock.now += 61
    results = poll(controller, results)
    assert [array_flag(argv) for argv in qsubs(pbs)] == ["-J 0-1", "-J 0-1"]


def test_an_array_qsub_rejects_fails_every_member_with_the_message(pbs, workdir):
    pbs.configure(qsub_failures=[[170, "qsub: Unknown queue"]])
    results = make_controller(workdir).start([target(i) for i in range(2)])
    assert all(isinstance(r, Finished) and not r.succeeded for r in results.values())
    assert all("Unknown queue" in r.message for r in results.values())


# -- cancel ----------------------------------------------------------------------------------


def test_cancel_deletes_whole_arrays_or_the_tracked_subjobs(pbs, workdir):
    controller = make_controller(workdir)
    whole = controller.start([target(i) for i in range(3)])
    part = controller.start([target(i) for i in range(3, 6)])
    tracked = [*whole.values(), *list(part.values())[1:]]
    controller.cancel(tracked)
    assert pbs.calls("qdel") == [["qdel", "1000[].fakesrv", "1001[1].fakesrv", "1001[2].fakesrv"]]
    states = [job["state"] for job in pbs.subjobs("1000[].fakesrv") + pbs.subjobs("1001[]")]
    assert states == ["X", "X", "X", "Q", "X", "X"]


# -- the setting -----------------------------------------------------------------------------


def test_the_setting_takes_all_or_rule_names():
    assert parse_array_jobs(None) == frozenset() and parse_array_jobs("") == frozenset()
    assert parse_array_jobs("all") == frozenset({ALL_RULES})
    assert parse_array_jobs(" simulate, align ") == frozenset({"simulate", "align"})
    config = controller_config(ExecutorSettings(array_jobs="simulate"), Path("/w"))
    assert config.array_jobs == frozenset({"simulate"})
    assert controller_config(ExecutorSettings(), Path("/w")).array_jobs == frozenset()


@pytest.mark.parametrize("value", ["simulate align", "a,,b", "1rule", "all,simulate", "yes!"])
def test_the_setting_refuses_other_forms_by_name(value):
    with pytest.raises(WorkflowError, match="--pbs-array-jobs"):
        ExecutorSettings(array_jobs=value)


# -- inside Snakemake ------------------------------------------------------------------------

SNAKEFILE = """
rule all:
    input: expand("results/{i}.txt", i=range(6))

rule simulate:
    output: "results/{i}.txt"
    shell: "echo {wildcards.i} > {output}"
"""


def snakemake(work: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--executor", "pbs", "--pbs-status-interval", "1",
         "--pbs-queue", "workq", *args],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.fixture
def workflow(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "Snakefile").write_text(SNAKEFILE)
    fake = fake_pbs.FakePbs(tmp_path / "pbs", run=True)
    env = fake.env()
    env.pop("SNAKEMAKE_PROFILE", None)
    return work, fake, env


@pytest.mark.slow
def test_snakemake_submits_the_ready_jobs_of_a_rule_as_one_array(workflow):
    work, fake, env = workflow
    run = snakemake(work, env, "--jobs", "10", "--pbs-array-jobs", "simulate")
    assert run.returncode == 0, run.stderr
    assert [array_flag(argv) for argv in fake.calls("qsub")] == ["-J 0-5"]
    assert [(work / f"results/{i}.txt").read_text() for i in range(6)] == [
        f"{i}\n" for i in range(6)
    ]
    assert "submitted 6 simulate targets as array 1000[].fakesrv" in run.stderr


def test_snakemake_refuses_a_rule_the_workflow_lacks(workflow):
    work, fake, env = workflow
    run = snakemake(work, env, "--jobs", "2", "--pbs-array-jobs", "simulat")
    assert run.returncode != 0
    assert "--pbs-array-jobs names simulat, which the workflow does not have" in run.stderr
    assert fake.calls("qsub") == []
