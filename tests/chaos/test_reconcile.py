"""The registry after controller kills (found by test_controller_kills.py): jobs that end
while no controller watches them still get their outcome recorded, by the next controller
at start (Controller.reconcile) or by the last one as it shuts down (settle_seconds).
Against tests/test_pbs_controller.py's fake qsub/qstat on PATH; fast, no cluster."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
from conftest import load_module

from snakemake_executor_plugin_pbs.registry import Submission

ROOT = Path(__file__).resolve().parents[2]


PLUGIN_TESTS = ROOT / "plugins/snakemake-executor-plugin-pbs/tests"
unit = load_module("kdflow_test_pbs_controller", PLUGIN_TESTS / "test_pbs_controller.py")


# the unit tests' fixtures: a fake PBS on PATH, and the controller's working directory
_fixtures = load_module("kdflow_test_pbs_conftest", PLUGIN_TESTS / "conftest.py")
pbs, workdir = _fixtures.pbs, _fixtures.workdir


def test_a_job_that_succeeded_while_no_controller_ran_is_recorded_at_start(pbs, workdir, chaos):
    t = unit.target()
    first = unit.make_controller(workdir).start([t])[t.name]
    pbs.finish(first.job_id, 0)  # the controller was killed; the job succeeded meanwhile
    controller = unit.make_controller(workdir)
    controller.reconcile()
    record = controller.registry.load(t.name)
    assert record.last.outcome == "success" and record.last.job_id == first.job_id
    chaos.kills = 1


def test_live_jobs_are_left_to_be_adopted(pbs, workdir, chaos):
    t = unit.target()
    first = unit.make_controller(workdir).start([t])[t.name]
    controller = unit.make_controller(workdir)
    controller.reconcile()
    assert controller.registry.load(t.name).last.outcome is None
    assert controller.start([t])[t.name].job_id == first.job_id  # adopted
    chaos.kills = 1


def test_the_job_of_an_interrupted_qsub_is_found_in_the_history(pbs, workdir, chaos):
    t = unit.target()
    controller = unit.make_controller(workdir)
    old = unit.make_controller(workdir).start([t])[t.name]
    pbs.finish(old.job_id, 271)  # an earlier job of the target, killed: in the record
    record = controller.registry.load(t.name)
    record.last.outcome, record.last.ended_at = "killed", time.time()
    # the controller recorded its intent, called qsub, and was killed before the job id
    # came back; the job ran and succeeded while no controller watched
    record.submissions.append(Submission(job_id=None, submitted_at=time.time()))
    controller.registry.save(record)
    job_id = pbs.add_job(5000, t.name, str(workdir), state="F", exit_status=0)
    pbs.add_job(4000, t.name, str(workdir / "elsewhere"), state="F", exit_status=0)
    unit.make_controller(workdir).reconcile()
    record = controller.registry.load(t.name)
    assert [s.job_id for s in record.submissions] == [old.job_id, job_id]
    assert record.last.outcome == "success"
    chaos.kills = 1


def test_shutdown_waits_for_jobs_whose_outputs_exist_and_records_them(pbs, workdir, chaos):
    t = unit.target()
    job = unit.make_controller(workdir).start([t])[t.name]
    output = workdir / t.outputs[0]
    output.parent.mkdir(parents=True)
    output.write_text("done\n")  # the job's own Snakemake wrote it; the job is ending
    threading.Timer(1.0, pbs.finish, args=(job.job_id, 0)).start()
    controller = unit.make_controller(workdir)
    controller.reconcile(settle_seconds=20)
    assert controller.registry.load(t.name).last.outcome == "success"
    # a live job whose outputs do not exist is not waited for
    other = unit.target(1)
    unit.make_controller(workdir).start([other])
    asked = len(pbs.status_calls())
    controller.reconcile(settle_seconds=20)
    assert len(pbs.status_calls()) - asked == 1  # one look, no settling: nothing is ending
    assert controller.registry.load(other.name).last.outcome is None


def _finish_with_output(pbs, workdir, t, job_id):
    output = workdir / t.outputs[0]
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("done\n")  # the job's own Snakemake wrote it
    pbs.finish(job_id, 0)


@pytest.mark.parametrize("reconciled", [True, False], ids=["reconciled first", "found at start"])
def test_a_success_no_snakemake_heard_of_is_reported_not_run_again(pbs, workdir, chaos, reconciled):
    """The controller is killed; its job succeeds; the next controller's Snakemake built its
    DAG before the job ended (or kept the target's incomplete mark) and asks for the target:
    the success is reported, and no second job runs. Asked again after that (a forced rerun),
    the target is submitted as usual."""
    t = unit.target()
    first = unit.make_controller(workdir).start([t])[t.name]
    _finish_with_output(pbs, workdir, t, first.job_id)
    controller = unit.make_controller(workdir)
    if reconciled:
        controller.reconcile()
    result = controller.start([t])[t.name]
    assert isinstance(result, unit.Finished) and result.succeeded, result
    assert "succeeded while no controller watched it" in result.message
    assert len(pbs.calls("qsub")) == 1
    record = controller.registry.load(t.name)
    assert [s.outcome for s in record.submissions] == ["success"]
    assert not record.last.unreported
    again = controller.start([t])[t.name]
    assert isinstance(again, unit.Tracked) and again.job_id != first.job_id
    assert len(pbs.calls("qsub")) == 2
    chaos.kills = 1


def test_a_success_without_its_outputs_is_run_again(pbs, workdir, chaos):
    """If the outputs of the unwatched success are gone, the target runs again."""
    t = unit.target()
    first = unit.make_controller(workdir).start([t])[t.name]
    pbs.finish(first.job_id, 0)
    result = unit.make_controller(workdir).start([t])[t.name]
    assert isinstance(result, unit.Tracked) and result.job_id != first.job_id
    assert len(pbs.calls("qsub")) == 2
    chaos.kills = 1


def test_a_success_a_controller_reported_is_not_reported_twice(pbs, workdir, chaos):
    """A success the watching controller saw (and handed to its Snakemake) is not unreported:
    a later request for the target (a forced rerun) submits."""
    t = unit.target()
    controller = unit.make_controller(workdir)
    first = controller.start([t])[t.name]
    _finish_with_output(pbs, workdir, t, first.job_id)
    polled = controller.poll([first])[t.name]
    assert isinstance(polled, unit.Finished) and polled.succeeded
    assert not controller.registry.load(t.name).last.unreported
    again = unit.make_controller(workdir).start([t])[t.name]
    assert isinstance(again, unit.Tracked) and len(pbs.calls("qsub")) == 2


def test_a_success_handed_to_a_snakemake_that_never_recorded_it_is_handed_over_again(
    pbs, workdir, chaos
):
    """The controller that handed the success over was killed before its Snakemake recorded
    it: the target keeps Snakemake's incomplete mark, and the next controller, asked for it,
    hands the success over again instead of running a second job (found on OpenPBS)."""
    t = unit.target()
    first = unit.make_controller(workdir).start([t])[t.name]
    _finish_with_output(pbs, workdir, t, first.job_id)
    handed = unit.make_controller(workdir).start([t])[t.name]
    assert isinstance(handed, unit.Finished) and handed.job_id == first.job_id
    # killed now; the next Snakemake finds the target still marked incomplete
    again = unit.make_controller(workdir).start([dataclasses.replace(t, incomplete=True)])
    assert isinstance(again[t.name], unit.Finished) and again[t.name].succeeded
    assert len(pbs.calls("qsub")) == 1
    chaos.kills = 1
