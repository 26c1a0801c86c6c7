"""`kdflow status` from files and registry records alone (no scheduler asked)."""

import io
import time

import yaml
from rich.console import Console

from kdflow.config import Sweep
from kdflow.status import collect, render
from snakemake_executor_plugin_pbs.registry import Registry, Submission, TargetRecord
from snakemake_executor_plugin_pbs.submit import job_name

SWEEP = {"seeds": [0, 1], "datasets": {"cifar100": {}}, "models": ["resnet8"], "pairs": []}
FULL_DISK = "exit status 1, out of disk space: OSError: [Errno 28] cannot write x: No space left"


def _ended_on_a_full_disk(registry: Registry, experiment: str, hold_until: float) -> None:
    target = f"{experiment}/completed"
    submission = Submission(job_id="7.pbs", submitted_at=0.0, outcome="storage",
                            reason=FULL_DISK, log_err="logs/7.err")  # fmt: skip
    registry.save(TargetRecord(name=job_name([target]), outputs=[target], storage_failures=1,
                               submissions=[submission], hold_until=hold_until))  # fmt: skip


def test_a_target_waiting_for_disk_space_is_held_until_its_time(tmp_path):
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    sweep = Sweep.from_file(tmp_path / "sweep.yaml", check_names=False)
    held, due = "results/cifar100/pure/resnet8/seed0", "results/cifar100/pure/resnet8/seed1"
    registry = Registry(tmp_path / ".kdflow/pbs")
    _ended_on_a_full_disk(registry, held, time.time() + 3600)
    _ended_on_a_full_disk(registry, due, time.time() - 1)  # the controller resubmits it now
    rows, note = collect(sweep, tmp_path, qstat=None)
    by_path = {row.path: row for row in rows}
    assert note is None and by_path[due].state == "ready"
    row = by_path[held]
    assert row.state == "held" and row.log == "logs/7.err"
    assert row.reason.startswith(FULL_DISK) and "; resubmitted at " in row.reason

    console = Console(file=io.StringIO(), width=250)
    render(rows, note, console)
    table = console.file.getvalue()
    assert "held 1" in table and "No space left" in table and "log: logs/7.err" in table


class _Qstat:
    """Stands in for the executor's Qstat: answers from a fixed Answer."""

    def __init__(self, answer):
        self.answer = answer

    def query(self, job_ids):
        return self.answer


def test_a_job_qstat_says_nothing_about_is_submitted_not_ended(tmp_path):
    # An answer that leaves a job out (OpenPBS's -F json did) is no news that it ended.
    from snakemake_executor_plugin_pbs.status import Answer

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    sweep = Sweep.from_file(tmp_path / "sweep.yaml", check_names=False)
    registry = Registry(tmp_path / ".kdflow/pbs")
    for seed, job_id in ((0, "8.pbs"), (1, "9.pbs")):
        target = f"results/cifar100/pure/resnet8/seed{seed}/completed"
        submission = Submission(job_id=job_id, submitted_at=0.0)
        registry.save(
            TargetRecord(name=job_name([target]), outputs=[target], submissions=[submission])
        )
    rows, note = collect(sweep, tmp_path, qstat=_Qstat(Answer({}, unknown=["9.pbs"])))
    states = {row.path.rsplit("/", 1)[1]: (row.state, row.pbs_id) for row in rows}
    assert note is None
    assert states["seed0"] == ("submitted", "8.pbs")  # no word: may be queued or running
    assert states["seed1"][0] == "ready"  # the server said it does not know it: it ended


def test_a_job_that_just_started_shows_its_time_since_it_started(tmp_path):
    # For its first seconds a running job has no resources_used.walltime (seen on OpenPBS).
    from snakemake_executor_plugin_pbs.status import Answer, JobInfo

    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(SWEEP))
    sweep = Sweep.from_file(tmp_path / "sweep.yaml", check_names=False)
    target = "results/cifar100/pure/resnet8/seed0/completed"
    submission = Submission(job_id="8.pbs", submitted_at=0.0)
    Registry(tmp_path / ".kdflow/pbs").save(
        TargetRecord(name=job_name([target]), outputs=[target], submissions=[submission])
    )
    started = time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(time.time() - 42))
    info = JobInfo(id="8.pbs", name=job_name([target]), state="R", times={"stime": started})
    rows, _ = collect(sweep, tmp_path, qstat=_Qstat(Answer({"8.pbs": info})))
    row = next(row for row in rows if row.pbs_id == "8.pbs")
    assert row.state == "running" and 41 <= row.elapsed <= 45
