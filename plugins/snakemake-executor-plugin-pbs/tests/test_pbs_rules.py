"""Per-rule PBS settings (pbs_project, pbs_select, pbs_place, pbs_extra), readable job names
that keep the identity adoption relies on, what jobs used (resources_used) and the usage
report, and the status-check interval."""

import csv
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from fakes import fake_pbs
from snakemake.exceptions import WorkflowError

from snakemake_executor_plugin_pbs import Executor, ExecutorSettings, poll_interval
from snakemake_executor_plugin_pbs.classify import Kind, Outcome
from snakemake_executor_plugin_pbs.controller import (
    Controller,
    ControllerConfig,
    Finished,
    Target,
    Tracked,
)
from snakemake_executor_plugin_pbs.policy import Action, Limits, decide
from snakemake_executor_plugin_pbs.polling import PollInterval
from snakemake_executor_plugin_pbs.profile import settings_from_profile
from snakemake_executor_plugin_pbs.registry import Registry, Submission, TargetRecord
from snakemake_executor_plugin_pbs.resources import ResourceProblem, rule_settings
from snakemake_executor_plugin_pbs.status import Dialect, Qstat, parse_qstat_text
from snakemake_executor_plugin_pbs.submit import (
    JOB_NAME_MAX_CHARS,
    JobSpec,
    identity_of,
    is_job_of,
    job_name,
    pbs_job_name,
    readable_label,
    render_job_script,
)
from snakemake_executor_plugin_pbs.usage import (
    COLUMNS,
    job_usage,
    run_rows,
    size_mb,
    wasteful,
    write_report,
)

HERE = Path(__file__).parent
CAPTURED = HERE / "samples" / "openpbs"
REGISTRY = ".snakemake-pbs"


def make_controller(workdir: Path, **changes) -> Controller:
    config = dict(
        workdir=workdir, log_dir=workdir / "logs", queue="workq", project="PRJ0042",
        qsub_extra=("-m", "n"), command_timeout=10,
    )  # fmt: skip
    return Controller(ControllerConfig(**{**config, **changes}), Registry(workdir / REGISTRY))


def target(i: int = 0, **changes) -> Target:
    output = f"results/{i}/out.txt"
    fields = dict(
        name=job_name([output]), rule="train", outputs=(output,), command="true", threads=4,
        mem_mb=8000, runtime_minutes=30, wildcards=(("dataset", "digits"), ("seed", str(i))),
    )  # fmt: skip
    return Target(**{**fields, **changes})


# -- readable job names --------------------------------------------------------------------

IDENTITY = job_name(["results/a.txt"], prefix="kd")


def test_a_job_name_shows_rule_and_wildcards_and_ends_with_the_identity():
    label = readable_label("train_kd", ["digits", "logit", "alpha0.5", "0"])
    name = pbs_job_name(IDENTITY, label)
    assert name == f"train_kd.digits.logit.alpha0.5.0.{IDENTITY}"
    assert is_job_of(name, IDENTITY) and identity_of(name) == IDENTITY


@pytest.mark.parametrize("max_chars", [15, 16, 17, 20, 40, 236])
def test_truncation_cuts_the_readable_part_never_the_identity(max_chars):
    label = readable_label("a_rule_with_a_long_name", ["x" * 300])
    name = pbs_job_name(IDENTITY, label, max_chars)
    assert len(name) <= max_chars and name.endswith(IDENTITY)
    assert is_job_of(name, IDENTITY)
    assert name[0].isalpha() and not name.startswith(".")
    if max_chars < len(IDENTITY) + 1 + 4:
        assert name == IDENTITY  # no room for a readable part: the identity alone, as before
    else:
        assert name.startswith("a_ru")


def test_only_characters_every_pbs_takes_and_a_letter_first():
    label = readable_label("rule", ["a b/c", "x=1,y", "ünï", "", "--"])
    assert label == "rule.a_b_c.x_1_y.n"
    assert readable_label("7up", ["/x"]) == "up.x"  # old servers: a name starts with a letter
    name = pbs_job_name(IDENTITY, readable_label("_", ["0"]))
    assert name == IDENTITY


def test_adoption_matches_new_names_and_old_hash_only_names_but_no_other_target():
    other = job_name(["results/b.txt"], prefix="kd")
    assert is_job_of(IDENTITY, IDENTITY)  # a job of an older version, still live
    assert is_job_of(f"train.x.{IDENTITY}", IDENTITY)
    assert not is_job_of(f"train.x.{other}", IDENTITY)
    assert not is_job_of(f"train.x{IDENTITY}", IDENTITY)  # no separator: another name
    assert not is_job_of(None, IDENTITY) and not is_job_of("", IDENTITY)


def test_the_controller_names_jobs_readably_and_adopts_old_named_ones(pbs, workdir):
    controller = make_controller(workdir)
    t = target(3)
    tracked = controller.start([t])[t.name]
    assert pbs.job(tracked.job_id)["name"] == f"train.digits.3.{t.name}"
    # an interrupted qsub of an older version, whose job (named by the identity alone) runs
    old = target(4)
    registry = Registry(workdir / REGISTRY)
    registry.save(TargetRecord(name=old.name, submissions=[Submission(None, 0.0)]))
    job_id = pbs.add_job(7000, old.name, str(workdir), state="R")
    result = make_controller(workdir).start([old])[old.name]
    assert isinstance(result, Tracked) and result.job_id == job_id
    assert len(pbs.calls("qsub")) == 1  # adopted, not submitted again


def test_torque_gets_the_identity_alone_and_the_setting_wins(pbs, workdir):
    torque = make_controller(workdir)
    torque.qstat = Qstat(timeout=10, dialect=Dialect.TORQUE)
    assert torque.job_name_max == JOB_NAME_MAX_CHARS
    t = target(5)
    tracked = torque.start([t])[t.name]
    assert pbs.job(tracked.job_id)["name"] == t.name
    short = make_controller(workdir, job_name_max=24)
    t = target(6)
    tracked = short.start([t])[t.name]
    assert pbs.job(tracked.job_id)["name"] == f"train.digi.{t.name}"


# -- per-rule PBS settings -------------------------------------------------------------------


def test_rule_settings_read_and_normalise_the_resources():
    settings = rule_settings(
        {
            "pbs_queue": "gpu_1",
            "pbs_project": "CSCI1234",
            "pbs_select": "select=2:ncpus=24:mpiprocs=24",
            "pbs_place": "place=scatter:excl",
            "pbs_extra": "-m abe -W group_list='my group'",
        }
    )
    assert settings.queue == "gpu_1" and settings.project == "CSCI1234"
    assert settings.select == "2:ncpus=24:mpiprocs=24" and settings.place == "scatter:excl"
    assert settings.qsub_extra == ("-m", "abe", "-W", "group_list=my group")
    multi = rule_settings({"pbs_select": "1:ncpus=4:mem=8gb+2:ncpus=8:host=node01"})
    assert multi.select == "1:ncpus=4:mem=8gb+2:ncpus=8:host=node01"
    assert rule_settings({}) == rule_settings({"pbs_select": "", "pbs_extra": None})


@pytest.mark.parametrize(
    ("resources", "resource", "allowed"),
    [
        ({"pbs_select": "2:ncpus=24\n#PBS -q x"}, "pbs_select", "chunks joined by +"),
        ({"pbs_select": "2:ncpus=24 -q x"}, "pbs_select", "chunks joined by +"),
        ({"pbs_select": "2:ncpus"}, "pbs_select", "resource=value"),
        ({"pbs_select": "2::ncpus=1"}, "pbs_select", "chunks joined by +"),
        ({"pbs_place": "scatter excl"}, "pbs_place", "scatter, pack:excl"),
        ({"pbs_place": "$(reboot)"}, "pbs_place", "scatter, pack:excl"),
        ({"pbs_project": "a;b"}, "pbs_project", "only letters, digits"),
        ({"pbs_queue": "q'"}, "pbs_queue", "only letters, digits"),
        ({"pbs_extra": "-N myname"}, "pbs_extra", "-N, the job name"),
        ({"pbs_extra": "-joe"}, "pbs_extra", "-j, joining"),
        ({"pbs_extra": "-J 1-10"}, "pbs_extra", "job arrays"),
        ({"pbs_extra": "-W block=true"}, "pbs_extra", "wait for the job's end"),
        ({"pbs_extra": "-m 'abe"}, "pbs_extra", "as on a command line"),
    ],
)
def test_a_bad_rule_setting_is_refused_saying_what_is_allowed(resources, resource, allowed):
    with pytest.raises(ResourceProblem) as caught:
        rule_settings(resources)
    assert caught.value.resource == resource and allowed in str(caught.value)


def test_a_rules_select_replaces_the_built_one_and_place_project_extra_apply(pbs, workdir):
    controller = make_controller(workdir)
    own = target(
        1, select="2:ncpus=24:mpiprocs=24", place="scatter", project="OWN1",
        qsub_extra=("-m", "abe"),
    )  # fmt: skip
    plain = target(2)
    results = controller.start([own, plain])
    job = pbs.job(results[own.name].job_id)
    assert job["select"] == "select=2:ncpus=24:mpiprocs=24"  # exactly the rule's
    script = job["script"]
    assert "#PBS -l place=scatter\n" in script and "#PBS -P OWN1\n" in script
    assert "#PBS -l walltime=00:30:00\n" in script  # runtime still gives the walltime
    assert job["argv"][1:5] == ["-m", "n", "-m", "abe"]  # the profile's, then the rule's
    other = pbs.job(results[plain.name].job_id)
    assert other["select"] == "select=1:ncpus=4:mem=8000mb"
    assert "#PBS -P PRJ0042\n" in other["script"] and "place=" not in other["script"]
    record = Registry(workdir / REGISTRY).load(own.name)
    assert record.last.select == "2:ncpus=24:mpiprocs=24"
    assert record.wildcards == {"dataset": "digits", "seed": "1"}


def test_the_job_script_of_a_select_is_exactly_that_select():
    spec = JobSpec(
        name="n", command="true", log_out=Path("/o"), log_err=Path("/e"), exit_dir=Path("/x"),
        threads=8, mem_mb=1000, gpus=1, select="1:ncpus=4+2:ncpus=8", place="pack:excl",
    )  # fmt: skip
    script = render_job_script(spec)
    assert "#PBS -l select=1:ncpus=4+2:ncpus=8\n#PBS -l place=pack:excl\n" in script
    assert "mem=1000mb" not in script and "ngpus" not in script


def test_a_memory_kill_of_a_rules_own_select_is_given_up_saying_where_to_raise_it():
    record = TargetRecord(name="t")
    submission = Submission("1.s", 0.0, mem_mb=None, select="2:ncpus=4:mem=1gb")
    decision = decide(record, submission, Outcome(Kind.MEMORY, "mem"), None, Limits(), 1.0)
    assert decision.action is Action.FAIL and "pbs_select" in decision.reason
    assert record.mem_mb is None


# -- what jobs used ------------------------------------------------------------------------


def test_sizes_in_every_pbs_unit():
    assert size_mb("153600kb") == 150.0
    assert size_mb("2gb") == 2048.0 and size_mb("1tb") == 1024**2
    assert size_mb(str(5 * 2**20)) == 5.0  # bytes
    assert size_mb("1mw") == 8.0  # words of 8 bytes
    assert size_mb("1.5GB") == 1536.0
    assert size_mb("") is None and size_mb(None) is None and size_mb("lots") is None


def test_usage_from_what_openpbs_printed():
    jobs = parse_qstat_text((CAPTURED / "qstat-xf-several.stdout").read_text())
    killed = jobs["2026.vm"]  # the mom's memory kill of a 50mb job that touched ~512 MB
    assert job_usage(killed) == {
        "mem_mb": round(525928 / 1024, 1),
        "vmem_mb": round(533760 / 1024, 1),
        "cput_s": 0.0,
        "walltime_s": 10.0,
        "ncpus": 1.0,
        "mem_requested_mb": 50.0,
        "walltime_requested_s": 300.0,
    }
    assert job_usage(jobs["2032.vm"]) == {}  # queued: nothing used, nothing reported


def test_memory_is_raised_from_the_peak_the_server_saw_where_it_saw_more():
    """OpenPBS killed the 50mb job above at ~514 MB (the mom samples): asking 75 MB next
    (50 x 1.5) would be killed again; 514 x 1.5 is what it gets."""
    record = TargetRecord(name="t")
    submission = Submission("2026.vm", 0.0, mem_mb=50, usage={"mem_mb": 513.6})
    decision = decide(record, submission, Outcome(Kind.MEMORY, "mem"), None, Limits(), 1.0)
    assert decision.action is Action.RESUBMIT and record.mem_mb == 771
    assert "514 MB used" in decision.reason
    capped = TargetRecord(name="t")
    decide(capped, submission, Outcome(Kind.MEMORY, "mem"), None, Limits(max_mem_mb=600), 1.0)
    assert capped.mem_mb == 600
    below = TargetRecord(name="t")  # a peak under the request: the request is the base
    low = Submission("1.s", 0.0, mem_mb=1000, usage={"mem_mb": 300.0})
    decide(below, low, Outcome(Kind.MEMORY, "mem"), None, Limits(), 1.0)
    assert below.mem_mb == 1500


def test_the_end_of_a_job_keeps_what_it_used_in_the_registry(pbs, workdir):
    controller = make_controller(workdir)
    t = target(7)
    results = controller.start([t])
    job_id = results[t.name].job_id
    pbs.finish(job_id, 0, used=600)
    pbs.update_job(job_id, resources_used={"mem": "307200kb", "cput": "00:09:00", "ncpus": "4"})
    results = controller.poll([results[t.name]])
    assert isinstance(results[t.name], Finished) and results[t.name].succeeded
    usage = Registry(workdir / REGISTRY).load(t.name).last.usage
    assert usage["mem_mb"] == 300.0 and usage["walltime_s"] == 600 and usage["cput_s"] == 540
    assert usage["ncpus"] == 4.0


def _record(name, rule, wildcards, *submissions):
    return TargetRecord(name=name, rule=rule, wildcards=wildcards, submissions=list(submissions))


def test_the_report_has_a_row_per_job_of_the_run_with_ratios(tmp_path):
    used = {"mem_mb": 150.0, "walltime_s": 60.0, "ncpus": 2.0, "cput_s": 60.0,
            "mem_requested_mb": 1000.0, "walltime_requested_s": 600.0}  # fmt: skip
    records = [
        _record("kdA", "train", {"seed": "0"},
                Submission("1.s", 50.0, outcome="success", ended_at=60, usage=used)),
        _record("kdB", "hog", {},
                Submission("2.s", 10.0, mem_mb=500, walltime="00:05:00", outcome="memory",
                           ended_at=20, usage={"mem_mb": 600.0, "walltime_s": 30.0}),
                Submission("3.s", 30.0, mem_mb=750, walltime="00:05:00")),
        _record("kdC", "old", {}, Submission("0.s", 1.0, outcome="success", ended_at=5)),
    ]  # fmt: skip
    rows = run_rows(records, since=10.0)
    assert [r.values["job_id"] for r in rows] == ["2.s", "3.s", "1.s"]  # not 0.s: earlier run
    path = write_report(tmp_path / "r" / "usage.csv", rows)
    with open(path) as f:
        lines = list(csv.DictReader(f))
    assert tuple(lines[0]) == COLUMNS
    train = lines[2]
    assert (train["rule"], train["wildcards"], train["outcome"]) == ("train", "seed=0", "success")
    assert float(train["mem_ratio"]) == 0.15 and float(train["walltime_ratio"]) == 0.1
    assert float(train["cpu_ratio"]) == 0.5
    hog = lines[0]  # requested values from the submission where the server gave none
    assert (hog["mem_requested_mb"], hog["walltime_requested_s"]) == ("500", "300")
    assert float(hog["mem_ratio"]) == 1.2
    assert lines[1]["outcome"] == "running" and lines[1]["mem_used_mb"] == ""
    named = wasteful(rows, threshold=0.2)
    assert [(row.values["job_id"], low) for row, low in named] == [
        ("1.s", ["mem 15% of the request", "walltime 10% of the request"])
    ]
    assert wasteful(rows, threshold=0.1) == []


# -- the status-check interval -------------------------------------------------------------


def test_the_interval_is_short_after_changes_and_grows_while_nothing_changes():
    interval = PollInterval(shortest=10, longest=180)
    assert interval.current == 10
    waits = [interval.next(changed=False, jobs=5) for _ in range(10)]
    assert waits[:3] == [15, 22.5, 33.75] and waits[-1] == 180
    assert all(a <= b for a, b in zip(waits, waits[1:], strict=False))
    assert interval.next(changed=True, jobs=5) == 10  # a job ended: look again soon


def test_many_jobs_raise_the_shortest_interval_within_the_site_bounds():
    interval = PollInterval(shortest=10, longest=180)
    assert interval.next(changed=True, jobs=1000) == 50  # 20 jobs a second at most
    assert interval.next(changed=True, jobs=10_000) == 180  # never above the site's longest
    assert interval.next(changed=True, jobs=10) == 10
    assert PollInterval(shortest=300, longest=180).longest == 300  # a user's longer wish


# -- through Snakemake, on the fake PBS ------------------------------------------------------

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
ARGS = ("--executor", "pbs", "-j", "4", "--pbs-status-interval", "1")


@pytest.fixture
def run_workflow(tmp_path):
    """Run Snakemake on a Snakefile in a fresh directory with the fake PBS running jobs."""
    work = tmp_path / "work"
    work.mkdir()
    fake = fake_pbs.FakePbs(tmp_path / "pbs", run=True)
    env = fake.env()
    env.pop("SNAKEMAKE_PROFILE", None)

    def run(snakefile: str, *args: str):
        (work / "Snakefile").write_text(snakefile)
        return subprocess.run([*SNAKEMAKE, *ARGS, *args], cwd=work, env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    return work, fake, run


BAD_SELECT = """
rule all:
    input: "b.txt"

rule first:
    output: "a.txt"
    shell: "touch {output}"

rule mpi:
    input: "a.txt"
    output: "b.txt"
    resources: pbs_select="2:ncpus=24 -q other"
    shell: "touch {output}"
"""


@pytest.mark.slow
def test_a_bad_rule_setting_stops_the_run_before_anything_is_submitted(run_workflow):
    work, pbs, run = run_workflow
    result = run(BAD_SELECT)
    assert result.returncode != 0
    assert "Rule mpi: resource pbs_select = '2:ncpus=24 -q other' cannot be used" in result.stderr
    assert "chunks joined by +" in result.stderr  # what is allowed
    assert pbs.calls("qsub") == []  # not even rule first's job, which is ready at once


REPORT = """
rule all:
    input: expand("out/{sample}.txt", sample=["s1", "s2"])

rule work:
    output: "out/{sample}.txt"
    resources: mem_mb=1000, runtime=10
    shell: "touch {output}"
"""


@pytest.mark.slow
def test_the_efficiency_report_lists_each_job_with_rule_and_wildcards(run_workflow):
    work, pbs, run = run_workflow
    result = run(REPORT, "--pbs-efficiency-report", "--pbs-efficiency-report-path", "usage.csv")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"efficiency report of 2 jobs: {work / 'usage.csv'}" in result.stderr
    with open(work / "usage.csv") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["wildcards"])
    assert [(r["rule"], r["wildcards"], r["outcome"]) for r in rows] == [
        ("work", "sample=s1", "success"), ("work", "sample=s2", "success"),
    ]  # fmt: skip
    assert {r["job_id"] for r in rows} == {job["id"] for job in pbs.jobs()}
    assert all(r["mem_requested_mb"] == "1000" and r["walltime_requested_s"] for r in rows)
    # each job is readable in qstat: rule, then wildcards, then its identity
    assert sorted(job["name"].rsplit(".", 1)[0] for job in pbs.jobs()) == ["work.s1", "work.s2"]


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"status_interval_min": 10, "status_interval_max": 5}, "--pbs-status-interval-min"),
        ({"status_interval_min": 0}, "--pbs-status-interval-min"),
        ({"job_name_max": 12}, "--pbs-job-name-max"),
        ({"job_name_max": 300}, "--pbs-job-name-max"),
        ({"efficiency_threshold": 1.5}, "--pbs-efficiency-threshold"),
        ({"qsub_extra": "-N mine"}, "--pbs-qsub-extra"),
        ({"qsub_extra": "-o /tmp/x"}, "--pbs-qsub-extra"),
    ],
)
def test_new_settings_out_of_range_are_refused_by_name(changes, named):
    with pytest.raises(WorkflowError, match=named):
        ExecutorSettings(**changes)


def _workflow(seconds_between_status_checks=10, **settings):
    return SimpleNamespace(
        executor_settings=ExecutorSettings(**settings),
        remote_execution_settings=SimpleNamespace(
            seconds_between_status_checks=seconds_between_status_checks
        ),
    )


def test_the_users_seconds_between_status_checks_is_honoured_within_the_site_bounds():
    assert poll_interval(_workflow(45)).shortest == 45  # --seconds-between-status-checks
    fixed = poll_interval(_workflow(45, status_interval=5))  # the plugin's own: fixed
    assert [fixed.next(changed=False, jobs=3) for _ in range(3)] == [5, 5, 5]
    assert fixed.next(changed=False, jobs=400) == 20  # only many jobs space it out
    assert poll_interval(_workflow(1, status_interval_min=15)).shortest == 15  # site floor
    site = poll_interval(_workflow(10, status_interval_max=60))
    assert [site.next(changed=False, jobs=1) for _ in range(6)][-1] == 60


def test_a_change_is_a_job_submitted_started_ended_or_resubmitted():
    """What resets the interval to its shortest (Executor._changed, on a stand-in executor)."""
    executor = SimpleNamespace(_last_seen={}, _submitted_since_check=True)
    t = target(0)

    def changed(result) -> bool:
        return Executor._changed(executor, {t.name: result})

    assert changed(Tracked(t, job_id="1.s", state="Q"))  # just submitted
    assert not changed(Tracked(t, job_id="1.s", state="Q"))  # still queued
    assert changed(Tracked(t, job_id="1.s", state="R"))  # started
    assert not changed(Tracked(t, job_id="1.s", state="R"))
    assert changed(Tracked(t, job_id="2.s", state="Q"))  # resubmitted after a kill
    assert changed(Finished(t, True))  # ended
    executor._submitted_since_check = True  # Snakemake handed over new jobs
    assert changed(Finished(t, True)) and not changed(Finished(t, True))


# -- the settings a profile gives, for tools beside Snakemake ------------------------------


def test_settings_from_a_profile_then_the_environment_then_the_defaults(tmp_path):
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "config.yaml").write_text(
        "executor: pbs\njobs: 4\npbs-registry-dir: state/reg\npbs-job-name-prefix: zz\n"
        "pbs-status-interval-max: 60\npbs-efficiency-report: true\n"
    )
    env = {"SNAKEMAKE_PBS_JOB_NAME_PREFIX": "yy", "SNAKEMAKE_PBS_QUEUE": "gpu_1"}
    settings = settings_from_profile(profile, environ=env)
    assert settings.registry_dir == Path("state/reg") and settings.job_name_prefix == "zz"
    assert settings.status_interval_max == 60 and settings.efficiency_report is True
    assert settings.queue == "gpu_1"  # not in the profile: the environment's
    assert settings.log_dir == Path("logs/pbs")  # in neither: the plugin's default
    assert settings_from_profile(None, environ={}).registry_dir == Path(".snakemake-pbs")
    (profile / "config.yaml").write_text("pbs-job-name-prefix: 9bad\n")
    with pytest.raises(WorkflowError, match="--pbs-job-name-prefix"):  # checked as Snakemake does
        settings_from_profile(profile / "config.yaml", environ={})
