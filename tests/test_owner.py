"""The trainer refuses to write where another live PBS job owns the experiment."""

import json

import pytest

from kdflow.trainer import AlreadyOwned, ExperimentFiles, check_owner
from snakemake_executor_plugin_pbs.status import JobInfo, StatusUnknown


class FakeQstat:
    def __init__(self, state=None, error=None):
        self.state, self.error, self.asked = state, error, []

    def query(self, ids):
        self.asked += list(ids)
        if self.error:
            raise self.error
        if self.state is None:
            return {}
        return {ids[0]: JobInfo(id=ids[0], name="kd0123456789", state=self.state)}


@pytest.fixture
def files(tmp_path, monkeypatch):
    monkeypatch.setenv("PBS_JOBID", "200.pbs")
    (tmp_path / "status.json").write_text(
        json.dumps({"status": "in_progress", "pbs_job_id": "100.pbs", "epoch": 7})
    )
    return ExperimentFiles(tmp_path)


@pytest.mark.parametrize("state", ["R", "Q", "H", "E"])
def test_a_live_owner_stops_a_second_writer(files, state):
    qstat = FakeQstat(state)
    with pytest.raises(AlreadyOwned, match=rf"PBS job 100.pbs \(state {state}\)"):
        check_owner(files, qstat)
    assert qstat.asked == ["100.pbs"]


@pytest.mark.parametrize("state", ["F", None])  # finished, or forgotten by the server
def test_a_dead_owner_is_taken_over(files, state):
    check_owner(files, FakeQstat(state))


def test_an_unanswered_qstat_does_not_stall_the_sweep(files, caplog):
    check_owner(files, FakeQstat(error=StatusUnknown("qstat: cannot connect to server")))
    assert "cannot ask PBS whether job 100.pbs" in caplog.text


def test_own_job_and_finished_runs_need_no_question(files, monkeypatch):
    qstat = FakeQstat("R")
    monkeypatch.setenv("PBS_JOBID", "100.pbs")  # a resubmission that PBS gave the same id
    check_owner(files, qstat)
    files.status.write_text(json.dumps({"status": "completed", "pbs_job_id": "100.pbs"}))
    monkeypatch.setenv("PBS_JOBID", "300.pbs")
    check_owner(files, qstat)
    assert qstat.asked == []
