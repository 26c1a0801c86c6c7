"""The controller against a fake qsub/qstat/qdel on PATH: adoption, polling, resubmission."""

import json
import os
from pathlib import Path

import pytest
from fakes import Clock

from snakemake_executor_plugin_pbs import controller as controller_module
from snakemake_executor_plugin_pbs import registry as registry_module
from snakemake_executor_plugin_pbs.controller import (
    MISSING_POLLS_BEFORE_VANISHED,
    Controller,
    ControllerConfig,
    Finished,
    Target,
    Tracked,
)
from snakemake_executor_plugin_pbs.policy import Limits
from snakemake_executor_plugin_pbs.registry import Registry, Submission, TargetRecord
from snakemake_executor_plugin_pbs.submit import UnknownResource, job_name

REGISTRY = ".snakemake-pbs"  # the default registry_dir, relative to the working directory
PROGRESS = "progress.json"  # the progress file these tests' jobs would write


def make_controller(workdir: Path, clock=None, **changes) -> Controller:
    config = dict(
        workdir=workdir,
        log_dir=workdir / "logs" / "pbs",
        queue="gpu_1",
        project="PRJ0042",
        progress_file=PROGRESS,
        limits=Limits(),
        submit_backoff=60,
        command_timeout=10,
    )
    return Controller(
        ControllerConfig(**{**config, **changes}),
        Registry(workdir / REGISTRY),
        clock=clock or Clock(),
    )


def target(i: int = 0, **changes) -> Target:
    output = f"results/sample{i}/done.txt"
    fields = dict(
        name=job_name([output]),
        rule="simulate",
        outputs=(output,),
        command=f"python -m snakemake --target-jobs simulate:sample={i}",
        threads=10,
        mem_mb=24000,
        runtime_minutes=60,
        gpus=1,
    )
    return Target(**{**fields, **changes})


def write_progress(workdir: Path, t: Target, progress: int) -> None:
    """What a job that saves its state would write as it gets further (the progress hook)."""
    path = workdir / Path(t.outputs[0]).parent / PROGRESS
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"state": "running", "progress": progress}))


def poll(controller: Controller, results: dict) -> dict:
    """One status round over whatever is still tracked in `results`."""
    return controller.poll(r for r in results.values() if isinstance(r, Tracked))


def select_of(pbs, job_id: str) -> str:
    return pbs.job(job_id)["select"]


# -- one qstat per poll ------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 10, 100])
def test_exactly_one_qstat_per_poll_whatever_the_number_of_jobs(pbs, workdir, count):
    # A restarted controller finds `count` live jobs in its registry.
    registry = Registry(workdir / REGISTRY)
    targets = [target(i) for i in range(count)]
    for i, t in enumerate(targets):
        job_id = pbs.add_job(5000 + i, t.name, str(workdir), state="R")
        registry.save(
            TargetRecord(name=t.name, submissions=[Submission(job_id=job_id, submitted_at=0.0)])
        )
    controller = make_controller(workdir)
    results = controller.start(targets)
    assert all(isinstance(r, Tracked) and r.job_id for r in results.values())
    assert len(pbs.status_calls()) == 1  # all adoptions checked with one call
    for round_number in (2, 3, 4):
        results = poll(controller, results)
        assert len(pbs.status_calls()) == round_number
    assert pbs.calls("qsub") == []
    assert len(pbs.calls("qstat")) - len(pbs.status_calls()) <= 1  # --version, once
    several = ["-E"] if count > 1 else []  # several ids: one request to the server (-E)
    assert pbs.status_calls()[-1] == [
        "qstat", *several, "-x", "-f", *(r.job_id for r in results.values())
    ]  # fmt: skip


def test_one_qstat_per_poll_also_when_jobs_end_and_are_resubmitted(pbs, workdir):
    controller = make_controller(workdir)
    results = controller.start([target(i) for i in range(5)])
    for r in list(results.values())[:3]:
        pbs.finish(r.job_id, -29)
    before = len(pbs.status_calls())
    results = poll(controller, results)
    assert len(pbs.status_calls()) == before + 1
    assert len(pbs.calls("qsub")) == 5 + 3


# -- absence is not evidence -------------------------------------------------------------


def _restart_with_live_jobs(pbs, workdir, count):
    """A registry with `count` live jobs, as a killed controller leaves it."""
    registry = Registry(workdir / REGISTRY)
    targets = [target(i) for i in range(count)]
    for i, t in enumerate(targets):
        job_id = pbs.add_job(6000 + i, t.name, str(workdir), state="R" if i % 2 else "Q")
        registry.save(
            TargetRecord(name=t.name, submissions=[Submission(job_id=job_id, submitted_at=0.0)])
        )
    return targets


def test_a_restart_adopts_live_jobs_an_answer_left_out_and_submits_nothing(pbs, workdir):
    # OpenPBS's `qstat -x -f -F json id1 id2 id3` prints only id1 and exits 0: the executor
    # took the others for ended and submitted each target again (two jobs per target).
    pbs.configure(first_only=True)
    targets = _restart_with_live_jobs(pbs, workdir, 4)
    controller = make_controller(workdir)
    results = controller.start(targets)
    assert pbs.calls("qsub") == []
    assert [results[t.name].job_id for t in targets] == [f"{6000 + i}.fakesrv" for i in range(4)]
    assert len(pbs.status_calls()) == 1 + 3  # the answer, then each job it left out, alone


def test_polls_over_answers_that_leave_out_live_jobs_submit_nothing(pbs, workdir, caplog):
    controller = make_controller(workdir)
    results = controller.start([target(i) for i in range(3)])
    pbs.configure(first_only=True)
    for _ in range(4):
        results = poll(controller, results)
    assert len(pbs.calls("qsub")) == 3
    assert all(isinstance(r, Tracked) and r.job_id for r in results.values())
    assert "left out" in caplog.text  # the server's omission is reported
    # and a job that really ended is still seen to end, though answers leave it out
    last = list(results.values())[-1]
    pbs.finish(last.job_id, 0)
    results = poll(controller, results)
    assert isinstance(results[last.target.name], Finished) and results[last.target.name].succeeded


def test_a_job_missing_from_the_answer_whose_lone_question_fails_is_kept(pbs, workdir):
    controller = make_controller(workdir)
    results = controller.start([target(i) for i in range(2)])
    pbs.configure(first_only=True)
    # the batch answers (first job only), then the question about the second alone fails
    for _ in range(MISSING_POLLS_BEFORE_VANISHED + 2):
        pbs.configure(qstat_failures=[None, [1, "qstat: cannot connect to server"]])
        results = poll(controller, results)
    assert len(pbs.calls("qsub")) == 2
    assert all(isinstance(r, Tracked) and r.job_id for r in results.values())


def test_a_job_the_server_says_it_does_not_know_is_resubmitted_after_two_polls(pbs, workdir):
    controller = make_controller(workdir)
    t = target()
    results = controller.start([t])
    first = results[t.name].job_id
    (Path(pbs.state) / "jobs" / f"{first.split('.')[0]}.json").unlink()  # purged, no trap ran
    results = poll(controller, results)
    assert results[t.name].job_id == first
    results = poll(controller, results)
    assert results[t.name].job_id not in (None, first)


# -- submitting --------------------------------------------------------------------------


def test_submit_writes_the_job_script_and_records_the_job(pbs, workdir):
    t = target()
    results = make_controller(workdir).start([t])
    tracked = results[t.name]
    assert tracked.job_id == "1000.fakesrv"
    job = pbs.job(tracked.job_id)
    # readable in qstat: rule first, the identity (the registry's key) at the end
    assert job["name"] == f"simulate.{t.name}" and job["queue"] == "gpu_1"
    assert job["select"] == "select=1:ncpus=10:ngpus=1:mem=24000mb"
    assert job["walltime"] == "01:00:00"
    assert job["workdir"] == str(workdir)  # qsub runs in the working directory
    record = Registry(workdir / REGISTRY).load(t.name)
    assert record.last.job_id == tracked.job_id and record.last.is_open
    assert record.last.log_err == str(workdir / f"logs/pbs/simulate/{t.name}.1.err")
    assert (workdir / "logs" / "pbs" / "simulate").is_dir()


def test_a_rule_can_name_its_own_queue(pbs, workdir):
    t = target(queue="serial")
    tracked = make_controller(workdir).start([t])[t.name]
    assert pbs.job(tracked.job_id)["queue"] == "serial"


def _count_fsyncs(monkeypatch) -> list[str]:
    """Every fsync from now on, as the path of what was fsynced (the temporary file of a
    record is `.<name>.json.<random>.tmp`)."""
    fsynced: list[str] = []
    real = os.fsync

    def fsync(fd):
        fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(registry_module.os, "fsync", fsync)
    return fsynced


def test_each_intent_is_on_disk_before_its_qsub_and_nothing_after_is_fsynced(
    pbs, workdir, monkeypatch
):
    """A host crash right after a qsub must leave the intent on disk (else the next controller
    would submit a second job); the job id and the script after it need no fsync (see
    registry's docstring): one fsync of the record and one of its directory per job."""
    registry = Registry(workdir / REGISTRY)
    targets = [target(i) for i in range(3)]
    fsynced = _count_fsyncs(monkeypatch)
    seen_at_qsub: list[list[str]] = []
    real_qsub = controller_module.run_qsub

    def qsub(*args, **kwargs):
        seen_at_qsub.append(list(fsynced))
        return real_qsub(*args, **kwargs)

    monkeypatch.setattr(controller_module, "run_qsub", qsub)
    results = make_controller(workdir).start(targets)
    assert all(isinstance(r, Tracked) and r.job_id for r in results.values())
    for t, synced in zip(targets, seen_at_qsub, strict=True):
        assert registry.load(t.name).last.job_id == results[t.name].job_id
        assert any(Path(p).name.startswith(f".{t.name}.json.") for p in synced), t.name
        assert str(registry.targets_dir) in synced  # the new name too
    assert len(fsynced) == 2 * len(targets)


def test_a_resource_the_server_lacks_leaves_no_intent_behind(pbs, workdir):
    pbs.configure(qsub_failures=[[187, "qsub: Unknown resource: ngpus"]] * 3)
    targets = [target(i) for i in range(3)]
    with pytest.raises(UnknownResource):
        make_controller(workdir).start(targets)
    # no qsub after the refusal: it is a fact about the site, not about one job
    assert len(pbs.calls("qsub")) == 1 and pbs.jobs() == []
    for t in targets:  # nothing was submitted: nothing for a next controller to look for
        assert Registry(workdir / REGISTRY).load(t.name).submissions == []


# -- never two live jobs for one target ----------------------------------------------------


def test_adopts_the_live_job_in_the_registry_instead_of_submitting(pbs, workdir):
    t = target()
    first = make_controller(workdir).start([t])[t.name]
    # The controller is killed; a new one starts and is asked for the same target.
    second = make_controller(workdir).start([t])[t.name]
    assert second.job_id == first.job_id
    assert second.log_err == first.log_err
    assert len(pbs.calls("qsub")) == 1


@pytest.mark.parametrize("state", ["Q", "R", "H", "W", "E", "S"])
def test_every_live_state_is_adopted(pbs, workdir, state):
    t = target()
    first = make_controller(workdir).start([t])[t.name]
    pbs.update_job(first.job_id, state=state)
    assert make_controller(workdir).start([t])[t.name].job_id == first.job_id
    assert len(pbs.calls("qsub")) == 1


def intent_only(workdir: Path, t: Target) -> None:
    """The registry as a controller SIGKILLed between recording its intent and the job id."""
    Registry(workdir / REGISTRY).save(
        TargetRecord(name=t.name, submissions=[Submission(job_id=None, submitted_at=0.0)])
    )


def test_intent_without_id_and_a_live_job_of_that_name_adopts_it(pbs, workdir):
    t = target()
    intent_only(workdir, t)
    job_id = pbs.add_job(7000, t.name, str(workdir), state="Q")
    pbs.add_job(7001, target(1).name, str(workdir), state="R")  # another target's job
    tracked = make_controller(workdir).start([t])[t.name]
    assert tracked.job_id == job_id
    assert pbs.calls("qsub") == []
    assert ["qstat", "-f"] in pbs.calls("qstat")  # one listing, by name
    record = Registry(workdir / REGISTRY).load(t.name)
    assert record.last.job_id == job_id


def test_of_two_live_jobs_of_one_name_the_newest_by_number_is_followed(pbs, workdir):
    t = target()
    intent_only(workdir, t)
    pbs.add_job(999, t.name, str(workdir), state="R")
    newest = pbs.add_job(1000, t.name, str(workdir), state="Q")  # "1000" < "999" as text
    assert make_controller(workdir).start([t])[t.name].job_id == newest


def test_of_two_ended_jobs_of_an_interrupted_qsub_the_newest_by_number_is_recorded(pbs, workdir):
    t = target()
    intent_only(workdir, t)
    pbs.add_job(999, t.name, str(workdir), state="F", exit_status=1)
    newest = pbs.add_job(1000, t.name, str(workdir), state="F", exit_status=0)
    make_controller(workdir).reconcile()
    record = Registry(workdir / REGISTRY).load(t.name)
    assert [(s.job_id, s.outcome) for s in record.submissions] == [(newest, "success")]


def test_intent_without_id_and_no_live_job_submits_once(pbs, workdir):
    t = target()
    intent_only(workdir, t)
    pbs.add_job(7000, t.name, str(workdir), state="F", exit_status=271)  # finished: not live
    pbs.add_job(7001, t.name, "/elsewhere/another/checkout", state="R")  # not this workdir
    tracked = make_controller(workdir).start([t])[t.name]
    assert tracked.job_id == "1000.fakesrv"
    assert len(pbs.calls("qsub")) == 1
    record = Registry(workdir / REGISTRY).load(t.name)
    assert [s.outcome for s in record.submissions] == ["lost", None]


def test_qsub_answer_lost_then_the_job_is_found_not_submitted_again(pbs, workdir):
    # qsub created the job but its answer was lost (timeout, no id printed).
    pbs.configure(qsub_failures=[["silent", ""]])
    clock = Clock()
    controller = make_controller(workdir, clock)
    t = target()
    results = controller.start([t])
    assert results[t.name].job_id is None and results[t.name].waiting
    clock.now += 61
    results = poll(controller, results)
    assert results[t.name].job_id == "1000.fakesrv"
    assert len(pbs.calls("qsub")) == 1


def test_status_unknown_at_start_holds_back_instead_of_submitting(pbs, workdir):
    t = target()
    first = make_controller(workdir).start([t])[t.name]
    pbs.configure(qstat_failures=[[1, "qstat: cannot connect to server fakesrv (errno=111)"]])
    controller = make_controller(workdir)
    results = controller.start([t])
    assert results[t.name].job_id is None and "unknown" in results[t.name].waiting
    results = poll(controller, results)
    assert results[t.name].job_id == first.job_id
    assert len(pbs.calls("qsub")) == 1


# -- polling -----------------------------------------------------------------------------


def test_running_and_queued_jobs_stay_active(pbs, workdir):
    controller = make_controller(workdir)
    results = controller.start([target(0), target(1)])
    pbs.update_job(results[target(0).name].job_id, state="R")
    again = poll(controller, results)
    assert all(isinstance(r, Tracked) for r in again.values())
    assert {r.job_id for r in again.values()} == {r.job_id for r in results.values()}


def test_success(pbs, workdir):
    controller = make_controller(workdir)
    t = target()
    results = controller.start([t])
    pbs.finish(results[t.name].job_id, 0)
    result = poll(controller, results)[t.name]
    assert isinstance(result, Finished) and result.succeeded
    record = Registry(workdir / REGISTRY).load(t.name)
    assert [s.outcome for s in record.submissions] == ["success"] and not record.failed


@pytest.mark.parametrize(
    "failure",
    [
        [1, "qstat: cannot connect to server fakesrv (errno=111)"],
        [255, "qstat: Error 15010"],
        ["sleep", 3],  # answers after the timeout
    ],
)
def test_failed_qstat_changes_nothing(pbs, workdir, failure):
    controller = make_controller(workdir)
    t = target()
    results = controller.start([t])
    controller.qstat.timeout = 1  # the polls' qstat only: a fake that sleeps 3 s outlasts it
    pbs.finish(results[t.name].job_id, 1)
    pbs.configure(qstat_failures=[failure])
    again = poll(controller, results)
    assert isinstance(again[t.name], Tracked) and again[t.name].job_id == results[t.name].job_id
    assert len(pbs.calls("qsub")) == 1
    assert isinstance(poll(controller, again)[t.name], Tracked)  # next round: retried as error


def test_walltime_kill_with_progress_resubmits_the_same_target(pbs, workdir):
    controller = make_controller(workdir)
    t = target()
    results = controller.start([t])
    first = results[t.name].job_id
    write_progress(workdir, t, 12)
    pbs.finish(first, -29, used=3605)
    results = poll(controller, results)
    tracked = results[t.name]
    assert isinstance(tracked, Tracked) and tracked.job_id not in (None, first)
    assert pbs.job(tracked.job_id)["name"] == f"simulate.{t.name}"
    assert tracked.log_err.endswith(f"{t.name}.2.err")
    record = Registry(workdir / REGISTRY).load(t.name)
    assert [s.outcome for s in record.submissions] == ["walltime", None]
    assert record.last.progress_at_submit == 12


def test_the_progress_key_names_the_field_that_counts(pbs, workdir):
    controller = make_controller(workdir, progress_file="state.json", progress_key="step")
    t = target()
    results = controller.start([t])
    first = results[t.name].job_id
    path = workdir / Path(t.outputs[0]).parent / "state.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"step": 250, "progress": "ignored"}))
    pbs.finish(first, 1)
    results = poll(controller, results)  # an error after progress: resubmitted, not counted
    record = Registry(workdir / REGISTRY).load(t.name)
    assert record.last_progress == 250 and record.errors_without_progress == 0
    assert record.last.progress_at_submit == 250


def test_without_a_progress_file_every_walltime_kill_counts(pbs, workdir):
    controller = make_controller(workdir, progress_file=None)
    t = target()
    results = controller.start([t])
    write_progress(workdir, t, 3)  # a file no setting names: not read
    pbs.finish(results[t.name].job_id, -29)
    results = poll(controller, results)  # first stall: resubmitted
    assert isinstance(results[t.name], Tracked) and results[t.name].job_id
    write_progress(workdir, t, 9)
    pbs.finish(results[t.name].job_id, -29)
    result = poll(controller, results)[t.name]  # second stall: given up
    assert isinstance(result, Finished) and not result.succeeded
    assert "2 walltime kills in a row without progress" in result.message
    assert "no progress measure: see --pbs-progress-file" in result.message
    assert len(pbs.calls("qsub")) == 2


def test_walltime_kills_without_progress_fail_with_the_reason(pbs, workdir):
    controller = make_controller(workdir)
    t = target()
    results = controller.start([t])
    write_progress(workdir, t, 3)
    pbs.finish(results[t.name].job_id, -29)
    results = poll(controller, results)  # progress None -> 3: resubmitted
    pbs.finish(results[t.name].job_id, -29)
    results = poll(controller, results)  # 3 -> 3: first stall, resubmitted
    pbs.finish(results[t.name].job_id, -29)
    result = poll(controller, results)[t.name]  # second stall: given up
    assert isinstance(result, Finished) and not result.succeeded
    assert "walltime" in result.message and "without progress" in result.message
    assert len(pbs.calls("qsub")) == 3


def test_memory_kill_resubmits_with_more_memory_and_a_new_controller_keeps_it(pbs, workdir):
    controller = make_controller(workdir)
    t = target()
    results = controller.start([t])
    pbs.finish(results[t.name].job_id, -27)
    results = poll(controller, results)
    assert select_of(pbs, results[t.name].job_id).endswith(":mem=36000mb")
    # That job succeeds; later a new controller runs the target again (e.g. --forcerun).
    pbs.finish(results[t.name].job_id, 0)
    assert poll(controller, results)[t.name].succeeded
    again = make_controller(workdir).start([t])[t.name]
    assert select_of(pbs, again.job_id).endswith(":mem=36000mb")


def test_memory_kill_message_in_stderr_grows_memory(pbs, workdir):
    controller = make_controller(workdir)
    t = target()
    results = controller.start([t])
    Path(results[t.name].log_err).write_text("=>> PBS: job killed: mem 25165825kb exceeded\n")
    pbs.finish(results[t.name].job_id, 271)
    results = poll(controller, results)
    assert select_of(pbs, results[t.name].job_id).endswith(":mem=36000mb")


def test_errors_without_progress_are_retried_then_fail_with_the_log_tail(pbs, workdir):
    controller = make_controller(workdir, limits=Limits(max_error_retries=2))
    t = target()
    results = controller.start([t])
    for _ in range(2):
        pbs.finish(results[t.name].job_id, 1)
        results = poll(controller, results)
        assert isinstance(results[t.name], Tracked) and results[t.name].job_id
    log_err = Path(results[t.name].log_err)
    log_err.write_text("".join(f"stderr line {i}\n" for i in range(1, 31)))
    Path(results[t.name].log_out).write_text("stdout says hello\n")
    pbs.finish(results[t.name].job_id, 1)
    result = poll(controller, results)[t.name]
    assert isinstance(result, Finished) and not result.succeeded
    message = result.message
    assert "error" in message and "exit status 1" in message
    assert "failed 3 times in a row without progress" in message
    assert str(log_err) in message and str(log_err) in result.logs
    assert "stderr line 11" in message and "stderr line 30" in message
    assert "stderr line 10\n" not in message  # the last 20 lines only
    assert "stdout says hello" in message
    assert len(pbs.calls("qsub")) == 3


def test_history_off_running_jobs_are_not_taken_for_ended(pbs, workdir):
    # OpenPBS with history off answers any `qstat -x` with no job at all, exit 0: the running
    # jobs were missing from every answer and were submitted again after two polls.
    pbs.configure(history=False)
    controller = make_controller(workdir)
    results = controller.start([target(i) for i in range(2)])
    for _ in range(4):
        results = poll(controller, results)
    assert len(pbs.calls("qsub")) == 2
    assert all(isinstance(r, Tracked) and r.job_id for r in results.values())
    assert "-x" not in pbs.status_calls()[-1]  # learnt: asks without -x


def test_history_off_the_exit_record_decides(pbs, workdir):
    pbs.configure(history=False)
    controller = make_controller(workdir)
    t = target()
    results = controller.start([t])
    job_id = results[t.name].job_id
    pbs.finish(job_id, 0)  # finished: without history qstat no longer knows it
    exit_dir = workdir / REGISTRY / "exit"
    exit_dir.mkdir(parents=True)
    (exit_dir / job_id).write_text("0\n")
    result = poll(controller, results)[t.name]
    assert isinstance(result, Finished) and result.succeeded


def test_history_off_a_vanished_job_without_exit_record_is_resubmitted(pbs, workdir):
    pbs.configure(history=False)
    controller = make_controller(workdir)
    t = target()
    results = controller.start([t])
    first = results[t.name].job_id
    pbs.finish(first, None)  # gone: node failure, no trap ran
    results = poll(controller, results)
    assert results[t.name].job_id == first  # one round of grace: maybe a server hiccup
    results = poll(controller, results)
    assert results[t.name].job_id not in (None, first)
    record = Registry(workdir / REGISTRY).load(t.name)
    assert record.submissions[0].outcome == "killed"


# -- qsub refusals -----------------------------------------------------------------------


QUEUE_LIMIT = [38, "qsub: would exceed queue gpu_1's per-user limit of jobs in 'Q' state"]


def test_queue_limit_holds_jobs_back_and_retries_them_later(pbs, workdir):
    pbs.configure(qsub_failures=[QUEUE_LIMIT, QUEUE_LIMIT])
    controller = make_controller(workdir)
    targets = [target(i) for i in range(3)]
    results = controller.start(targets)
    assert all(isinstance(r, Tracked) and r.job_id is None for r in results.values())
    assert "queue limit" in results[targets[0].name].waiting
    assert len(pbs.calls("qsub")) == 1  # the first refusal holds the others back too
    results = poll(controller, results)  # still full
    assert all(r.job_id is None for r in results.values())
    assert len(pbs.calls("qsub")) == 2
    results = poll(controller, results)  # room again
    assert all(isinstance(r, Tracked) and r.job_id for r in results.values())
    assert len(pbs.calls("qsub")) == 5
    for t in targets:  # a refusal leaves no intent behind
        record = Registry(workdir / REGISTRY).load(t.name)
        assert [s.job_id is not None for s in record.submissions] == [True]


def test_a_queue_limit_met_by_a_resubmission_holds_back_the_waiting_targets(pbs, workdir):
    pbs.configure(qsub_failures=[QUEUE_LIMIT])
    controller = make_controller(workdir)
    waiting, running = target(0), target(1)
    results = controller.start([waiting])  # refused: held back
    pbs.configure(qsub_failures=[])
    results.update(controller.start([running]))
    pbs.finish(results[running.name].job_id, -29)
    pbs.configure(qsub_failures=[QUEUE_LIMIT])
    before = len(pbs.calls("qsub"))
    results = poll(controller, results)  # resubmission refused: no qsub for the other
    assert len(pbs.calls("qsub")) == before + 1
    assert all(isinstance(r, Tracked) and r.job_id is None for r in results.values())


def test_unreachable_server_is_retried_with_backoff(pbs, workdir):
    pbs.configure(qsub_failures=[[1, "qsub: cannot connect to server fakesrv (errno=111)"]])
    clock = Clock()
    controller = make_controller(workdir, clock)
    t = target()
    results = controller.start([t])
    assert results[t.name].job_id is None
    results = poll(controller, results)
    assert len(pbs.calls("qsub")) == 1  # too early: backing off
    clock.now += 60
    results = poll(controller, results)
    assert results[t.name].job_id == "1000.fakesrv"
    # nothing was in doubt: no job listing needed (only `qstat --version`, once, which tells
    # the server's kind and so its longest job name)
    assert pbs.status_calls() == []


def test_rejected_submission_fails_at_once_with_qsubs_message(pbs, workdir):
    pbs.configure(qsub_failures=[[170, "qsub: Unknown queue"]])
    t = target()
    result = make_controller(workdir).start([t])[t.name]
    assert isinstance(result, Finished) and not result.succeeded
    assert "qsub: Unknown queue" in result.message
    record = Registry(workdir / REGISTRY).load(t.name)
    assert record.submissions == [] and record.failed is None  # fix the queue, run again


# -- giving up, across restarts ------------------------------------------------------------


def fail_target(pbs, workdir, t: Target) -> None:
    controller = make_controller(workdir, limits=Limits(max_error_retries=0))
    results = controller.start([t])
    pbs.finish(results[t.name].job_id, 1)
    assert not poll(controller, results)[t.name].succeeded


def test_a_target_given_up_stays_given_up_for_the_next_controller(pbs, workdir):
    t = target()
    fail_target(pbs, workdir, t)
    result = make_controller(workdir).start([t])[t.name]
    assert isinstance(result, Finished) and not result.succeeded
    assert "given up by an earlier run" in result.message and "--pbs-retry-failed" in result.message
    assert len(pbs.calls("qsub")) == 1


def test_retry_failed_tries_again(pbs, workdir):
    t = target()
    fail_target(pbs, workdir, t)
    result = make_controller(workdir, retry_failed=True).start([t])[t.name]
    assert isinstance(result, Tracked) and result.job_id
    record = Registry(workdir / REGISTRY).load(t.name)
    assert record.failed is None and record.errors_without_progress == 0


def test_a_job_that_ended_while_no_controller_ran_is_counted(pbs, workdir):
    t = target()
    first = make_controller(workdir).start([t])[t.name]
    pbs.finish(first.job_id, -27)  # memory kill while no controller was watching
    second = make_controller(workdir).start([t])[t.name]
    assert second.job_id != first.job_id
    assert select_of(pbs, second.job_id).endswith(":mem=36000mb")


# -- cancelling --------------------------------------------------------------------------


def test_cancel_deletes_all_tracked_jobs_in_one_qdel(pbs, workdir):
    controller = make_controller(workdir)
    results = controller.start([target(i) for i in range(4)])
    controller.cancel(results.values())
    assert pbs.calls("qdel") == [["qdel", *(r.job_id for r in results.values())]]
    assert {job["state"] for job in pbs.jobs()} == {"F"}


# -- out of disk space ---------------------------------------------------------------------

ENOSPC = "OSError: [Errno 28] No space left on device: 'results/x/state.bin'\n"


def fill_disk(pbs, tracked: Tracked) -> None:
    """The job ends as a Python program does when a write finds the disk full."""
    Path(tracked.log_err).write_text(ENOSPC)
    pbs.finish(tracked.job_id, 1)


def test_a_full_disk_holds_the_target_back_longer_each_time_instead_of_giving_up(pbs, workdir):
    clock = Clock()
    limits = Limits(max_error_retries=1, storage_wait=600, max_storage_wait=1000)
    controller = make_controller(workdir, clock=clock, limits=limits)
    t = target()
    results = controller.start([t])
    for wait in (600, 1000, 1000):
        fill_disk(pbs, results[t.name])
        results = poll(controller, results)
        held = results[t.name]
        assert isinstance(held, Tracked) and held.job_id is None
        assert "out of disk space" in held.waiting
        qsubs = len(pbs.calls("qsub"))
        clock.now += wait - 1
        results = poll(controller, results)
        assert results[t.name].job_id is None and len(pbs.calls("qsub")) == qsubs
        clock.now += 1
        results = poll(controller, results)
        assert results[t.name].job_id and len(pbs.calls("qsub")) == qsubs + 1
    record = Registry(workdir / REGISTRY).load(t.name)
    assert [s.outcome for s in record.submissions] == ["storage"] * 3 + [None]
    assert "No space left on device" in record.submissions[0].reason
    assert record.failed is None and record.hold_until is None


def test_the_wait_for_space_outlives_the_controller_and_retry_failed_ends_it(pbs, workdir):
    clock = Clock()
    controller = make_controller(workdir, clock=clock, limits=Limits(storage_wait=600))
    t = target()
    results = controller.start([t])
    fill_disk(pbs, results[t.name])
    poll(controller, results)  # held back; then the controller is killed
    clock.now += 300
    restarted = make_controller(workdir, clock=clock).start([t])[t.name]
    assert restarted.job_id is None and "out of disk space" in restarted.waiting
    assert len(pbs.calls("qsub")) == 1
    # space was freed: the user does not want to wait
    again = make_controller(workdir, clock=clock, retry_failed=True).start([t])[t.name]
    assert again.job_id and len(pbs.calls("qsub")) == 2
    record = Registry(workdir / REGISTRY).load(t.name)
    assert record.hold_until is None
    assert record.storage_failures == 1  # in a row: if the disk is still full, the next wait is 2x


def test_a_disk_full_too_long_is_given_up_with_the_line_that_says_so(pbs, workdir):
    clock = Clock()
    limits = Limits(storage_wait=1, max_storage_failures=1)
    controller = make_controller(workdir, clock=clock, limits=limits)
    t = target()
    results = controller.start([t])
    fill_disk(pbs, results[t.name])
    results = poll(controller, results)
    clock.now += 1
    results = poll(controller, results)
    fill_disk(pbs, results[t.name])
    result = poll(controller, results)[t.name]
    assert isinstance(result, Finished) and not result.succeeded
    assert "out of disk space 2 times in a row" in result.message
    assert "No space left on device: 'results/x/state.bin'" in result.message
    assert "--pbs-retry-failed" in result.message
