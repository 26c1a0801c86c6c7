"""The plugin inside Snakemake: discovery, settings, a profile, and whole runs on a fake PBS."""

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import disks
import pytest
import readme_settings
import yaml
from fakes import fake_pbs
from snakemake.exceptions import WorkflowError
from snakemake_interface_executor_plugins.registry import ExecutorPluginRegistry

from snakemake_executor_plugin_pbs import ExecutorSettings, common_settings, controller_config

HERE = Path(__file__).resolve().parent
PROFILE = HERE / "profile"  # the tests' own profile, also the README's example
README = HERE.parent / "README.md"
DOCS = HERE.parent / "docs"  # what the Snakemake plugin catalog shows
REGISTRY = ".snakemake-pbs"  # the default registry_dir
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


# -- discovery and settings ----------------------------------------------------------------


def test_snakemake_finds_the_plugin_by_its_module_name():
    plugin = ExecutorPluginRegistry().get_plugin("pbs")
    assert plugin.name == "pbs"
    assert plugin.settings_cls is ExecutorSettings
    assert plugin.common_settings is common_settings
    assert common_settings.non_local_exec and not common_settings.implies_no_shared_fs


def test_every_setting_is_documented_and_mapped_to_an_environment_variable():
    plugin = ExecutorPluginRegistry().get_plugin("pbs")
    info = {item["name"]: item for item in plugin.get_settings_info()}
    assert info["queue"]["cliarg"] == "--pbs-queue"
    assert info["queue"]["env_var"] == "SNAKEMAKE_PBS_QUEUE"
    assert info["project"]["env_var"] == "SNAKEMAKE_PBS_PROJECT"
    for field in dataclasses.fields(ExecutorSettings):
        assert len(field.metadata["help"]) > 30, field.name


def test_settings_defaults():
    settings = ExecutorSettings()
    assert str(settings.log_dir) == "logs/pbs" and str(settings.registry_dir) == REGISTRY
    assert settings.job_name_prefix == "smk"
    assert settings.progress_file is None and settings.progress_key == "progress"
    assert settings.max_error_retries == 2 and settings.mem_growth == 1.5
    config = controller_config(settings, Path("/w"))
    assert (config.progress_file, config.progress_key) == (None, "progress")


@pytest.fixture(scope="module")
def snakemake_help() -> str:
    out = subprocess.run([*SNAKEMAKE, "--help"], capture_output=True, text=True, check=True)
    return out.stdout


def test_help_lists_the_plugin_options(snakemake_help):
    for field in dataclasses.fields(ExecutorSettings):
        assert f"--pbs-{field.name.replace('_', '-')}" in snakemake_help, field.name


def _readme_profile() -> dict:
    """The profile example of the README (its one yaml block)."""
    [block] = re.findall(r"```yaml\n(.*?)```", README.read_text(), re.DOTALL)
    return yaml.safe_load(block)


def test_the_profiles_keys_are_snakemake_options(snakemake_help):
    profile = yaml.safe_load((PROFILE / "config.yaml").read_text())
    assert _readme_profile() == profile  # the README shows the profile these tests run
    for key in profile:
        assert f"--{key}" in snakemake_help, key
    assert profile["executor"] == "pbs" and profile["retries"] == 0


def test_the_readme_documents_every_setting():
    text = README.read_text()
    for field in dataclasses.fields(ExecutorSettings):
        assert f"--pbs-{field.name.replace('_', '-')}" in text, field.name


def test_the_readmes_settings_table_is_made_from_the_settings_help_texts():
    table = readme_settings.readme_table(README.read_text())
    assert table == readme_settings.settings_table(), (
        "the README's settings table differs from ExecutorSettings: run "
        "`python tests/readme_settings.py` in the plugin's folder"
    )
    rows = [line for line in table.splitlines() if line.startswith("| `--pbs-")]
    assert len(rows) == len(dataclasses.fields(ExecutorSettings))
    assert "| `--pbs-queue` | `SNAKEMAKE_PBS_QUEUE` | none | PBS queue (qsub -q)" in table
    assert "| `--pbs-log-dir` | `SNAKEMAKE_PBS_LOG_DIR` | `logs/pbs` |" in table


def test_the_catalogs_pages_exist_and_show_the_profile_the_tests_run():
    intro, further = (DOCS / "intro.md").read_text(), (DOCS / "further.md").read_text()
    # the catalog puts intro.md right under the plugin's title: text, not a heading
    assert intro.strip() and not intro.lstrip().startswith("#")
    assert "--executor pbs" in intro
    [block] = re.findall(r"```yaml\n(.*?)```", further, re.DOTALL)
    assert yaml.safe_load(block) == yaml.safe_load((PROFILE / "config.yaml").read_text())
    for option in re.findall(r"--pbs-[a-z-]+", further):  # only settings that exist
        assert option.removeprefix("--pbs-").replace("-", "_") in {
            f.name for f in dataclasses.fields(ExecutorSettings)
        }, option


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"job_name_prefix": "1abc"}, "--pbs-job-name-prefix"),
        ({"job_name_prefix": "toolong"}, "at most 5"),
        ({"job_name_prefix": ""}, "--pbs-job-name-prefix"),
        ({"progress_file": "/abs/progress.json"}, "--pbs-progress-file"),
        ({"progress_key": ""}, "--pbs-progress-key"),
        ({"queue": "a b"}, "--pbs-queue"),
    ],
)
def test_settings_out_of_range_are_refused_by_name(changes, named):
    with pytest.raises(WorkflowError, match=named):
        ExecutorSettings(**changes)


# -- whole runs on the fake PBS --------------------------------------------------------------

SNAKEFILE = """
rule all:
    input: "results/a/done.txt", "results/b.txt"

rule simulate:
    output: "results/a/done.txt"
    shell: "echo '{{\\"progress\\": 3}}' > results/a/progress.json; echo ok > {output}"

rule other:
    input: "results/a/done.txt"
    output: "results/b.txt"
    resources: pbs_queue="serial"
    shell: "echo ok > {output}"
"""


@pytest.fixture
def workflow(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "Snakefile").write_text(SNAKEFILE)
    pbs = fake_pbs.FakePbs(tmp_path / "pbs", run=True)
    env = pbs.env()
    env.pop("SNAKEMAKE_PROFILE", None)
    return work, pbs, env


def snakemake(work: Path, env: dict, *args: str, timeout: float = 120):
    return subprocess.run(
        [*SNAKEMAKE, *args], cwd=work, env=env, capture_output=True, text=True, timeout=timeout
    )


def scripts(work: Path) -> dict[str, str]:
    """The latest job script of each rule."""
    found = {}
    for path in (work / REGISTRY / "scripts").glob("*.sh"):
        text = path.read_text()
        rule = next(line.split()[2] for line in text.splitlines() if line.startswith("# rule "))
        found[rule.rstrip(",")] = text
    return found


def records(work: Path) -> dict[str, dict]:
    """The registry's record of each rule's target."""
    found = {}
    for path in (work / REGISTRY / "targets").glob("*.json"):
        record = json.loads(path.read_text())
        found[record["rule"]] = record
    return found


@pytest.mark.slow
def test_the_profile_runs_a_workflow_with_settings_from_the_environment(workflow):
    work, pbs, env = workflow
    env.update(SNAKEMAKE_PBS_QUEUE="gpu_1", SNAKEMAKE_PBS_PROJECT="PRJ0042")
    run = snakemake(work, env, "--profile", str(PROFILE), "--pbs-status-interval", "1")
    assert run.returncode == 0, run.stderr
    assert (work / "results" / "a" / "done.txt").read_text() == "ok\n"
    simulate = scripts(work)["simulate"]
    assert "#PBS -q gpu_1\n#PBS -P PRJ0042\n" in simulate
    assert "#PBS -l select=1:ncpus=4:ngpus=1:mem=4000mb\n" in simulate
    assert "#PBS -l walltime=01:00:00\n" in simulate
    other = scripts(work)["other"]
    assert "#PBS -q serial\n#PBS -P PRJ0042\n#PBS -l select=1:ncpus=1:mem=4000mb\n" in other
    # Jobs wait for their inputs, not for this controller's temporary directory, which a
    # job adopted by a later controller would wait for in vain.
    assert "--wait-for-files results/a/done.txt" in other.replace("'", "")
    assert ".snakemake/tmp." not in other
    # each job is named by its rule, then the profile's prefix and hash (its identity); the
    # progress hook read the job's number
    names = sorted(job["name"] for job in pbs.jobs())
    assert [name.split(".")[0] for name in names] == ["other", "simulate"]
    assert all(re.fullmatch(r"[a-z]+\.sim[0-9a-f]{10}", name) for name in names), names
    done = records(work)
    assert [s["outcome"] for s in done["simulate"]["submissions"]] == ["success"]
    assert done["simulate"]["last_progress"] == 3 and done["other"]["last_progress"] is None
    assert len(pbs.calls("qsub")) == 2


@pytest.mark.slow
def test_a_failed_job_is_resubmitted_by_the_plugin_not_by_snakemake(workflow):
    work, pbs, env = workflow
    (work / "Snakefile").write_text(
        """
rule flaky:
    output: "results/flaky.txt"
    shell: "if [ ! -e first-try ]; then touch first-try; exit 1; fi; echo ok > {output}"
"""
    )
    run = snakemake(work, env, "--executor", "pbs", "-j", "2", "--pbs-status-interval", "1")
    assert run.returncode == 0, run.stderr
    assert len(pbs.calls("qsub")) == 2
    assert "failed without progress: retry 1 of 2" in run.stderr
    # without a profile: the default job name prefix
    assert all(re.fullmatch(r"flaky\.smk[0-9a-f]{10}", job["name"]) for job in pbs.jobs())


@pytest.mark.slow
def test_a_resource_the_server_lacks_stops_the_run_with_one_message(workflow):
    # A stock PBS server has no `ngpus`: every job of the workflow would be refused alike.
    work, pbs, env = workflow
    pbs.configure(qsub_failures=[[187, "qsub: Unknown resource: ngpus"]] * 5)
    run = snakemake(work, env, "--profile", str(PROFILE), "--pbs-status-interval", "1")
    assert run.returncode != 0
    assert len(pbs.calls("qsub")) == 1
    assert run.stderr.count("Unknown resource: ngpus") == 1
    assert "does not know the resource `ngpus`" in run.stderr
    assert "--set-resources RULE:gpu=0" in run.stderr
    assert not any(record["submissions"] for record in records(work).values())


def test_a_failed_jobs_message_ends_its_line(workflow):
    # Snakemake writes "For further error details ..." right after the message.
    work, pbs, env = workflow
    pbs.configure(qsub_failures=[[170, "qsub: Unknown queue"]])
    (work / "Snakefile").write_text('rule a:\n    output: "a.txt"\n    shell: "touch {output}"\n')
    run = snakemake(work, env, *ARGS)
    assert run.returncode != 0
    assert "qsub: Unknown queue\n" in run.stderr


ARGS = ("--executor", "pbs", "-j", "2", "--pbs-status-interval", "1")


def wait_until(condition, what: str, seconds: float = 120) -> None:
    """Wait for `condition()` to hold; fail after `seconds` (generous: the machine may be busy)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {seconds} s waiting for {what}"
        time.sleep(0.1)


def _sigkill_the_controller_while_a_job_runs(work, pbs, env):
    """Start `snakemake *ARGS` on a one-job workflow, SIGKILL it once the job runs, and release
    its lock. The job runs until the test creates `release` in the working directory."""
    (work / "Snakefile").write_text(
        """
rule slow:
    output: "results/slow.txt"
    shell: "for i in $(seq 3000); do [ -e release ] && break; sleep 0.1; done; echo ok > {output}"
"""
    )
    first = subprocess.Popen(
        [*SNAKEMAKE, *ARGS], cwd=work, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_until(lambda: any(job["state"] == "R" for job in pbs.jobs()), "the job to run")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert snakemake(work, env, "--unlock").returncode == 0


@pytest.mark.slow
def test_a_sigkilled_controller_leaves_one_job_which_the_next_one_adopts(workflow, tmp_path):
    work, pbs, env = workflow
    _sigkill_the_controller_while_a_job_runs(work, pbs, env)
    log = tmp_path / "second.err"
    with open(log, "w") as err:
        second = subprocess.Popen(
            [*SNAKEMAKE, *ARGS, "--rerun-incomplete"], cwd=work, env=env,
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        wait_until(lambda: "adopting live job 1000.fakesrv" in log.read_text(), "the adoption")
        (work / "release").touch()  # only now may the job end
        assert second.wait(timeout=120) == 0, log.read_text()
    finally:
        second.kill()
    assert len(pbs.calls("qsub")) == 1
    assert (work / "results" / "slow.txt").read_text() == "ok\n"


@pytest.mark.slow
def test_a_job_that_succeeded_after_its_controller_was_killed_is_not_run_again(workflow):
    # The next controller asks for the target although the killed one's job wrote its output
    # and succeeded (as when its DAG was built before the job ended; here: -R): that success
    # is reported, and no second job runs. Asked again, the target is submitted as usual.
    work, pbs, env = workflow
    _sigkill_the_controller_while_a_job_runs(work, pbs, env)
    (work / "release").touch()
    wait_until(lambda: all(job["state"] == "F" for job in pbs.jobs()), "the job to end")
    assert (work / "results" / "slow.txt").read_text() == "ok\n"
    second = snakemake(work, env, *ARGS, "-R", "slow")
    assert second.returncode == 0, second.stderr
    assert "job 1000.fakesrv succeeded while no controller watched it" in second.stderr
    assert len(pbs.calls("qsub")) == 1
    [record] = records(work).values()
    assert [s["outcome"] for s in record["submissions"]] == ["success"] and not record["failed"]
    third = snakemake(work, env, *ARGS, "-R", "slow")
    assert third.returncode == 0, third.stderr
    assert len(pbs.calls("qsub")) == 2


# A controller killed the moment it has handed an earlier job's success to its Snakemake,
# before Snakemake recorded the end (the target keeps Snakemake's incomplete mark).
KILLED_AFTER_HANDING_OVER = """
import os, signal, sys
import snakemake_executor_plugin_pbs as plugin
from snakemake.cli import main

handed = plugin.Executor._start

def start(self, jobs):
    handed(self, jobs)
    os.kill(os.getpid(), signal.SIGKILL)

plugin.Executor._start = start
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_a_success_handed_to_a_snakemake_killed_before_it_recorded_it_is_not_run_again(
    workflow,
):
    # Found by the chaos tests on OpenPBS: the success was handed over once, its record said
    # so, and the next controller, asked for the still-incomplete target, ran it again.
    work, pbs, env = workflow
    _sigkill_the_controller_while_a_job_runs(work, pbs, env)
    (work / "release").touch()
    wait_until(lambda: all(job["state"] == "F" for job in pbs.jobs()), "the job to end")
    # asked for again (as when its DAG was built before the job ended; here: -R), then killed
    second = subprocess.run(
        [sys.executable, "-c", KILLED_AFTER_HANDING_OVER, *ARGS, "-R", "slow"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert "succeeded while no controller watched it" in second.stderr
    assert snakemake(work, env, "--unlock").returncode == 0
    # the next one finds the target incomplete, as Snakemake left it, and asks for it
    third = snakemake(work, env, *ARGS, "--rerun-incomplete")
    assert third.returncode == 0, third.stderr
    assert "job 1000.fakesrv succeeded" in third.stderr, third.stderr
    assert len(pbs.calls("qsub")) == 1, "the target ran a second time"
    [record] = records(work).values()
    assert [s["outcome"] for s in record["submissions"]] == ["success"]
    # recorded now: asked for again, the target runs
    fourth = snakemake(work, env, *ARGS, "-R", "slow")
    assert fourth.returncode == 0, fourth.stderr
    assert len(pbs.calls("qsub")) == 2


@pytest.mark.slow
def test_a_job_that_finds_the_disk_full_waits_for_space_and_then_runs(workflow, tmp_path):
    """A real ENOSPC (a full tmpfs) fails the job; the executor holds the target back instead
    of spending its error retries, and resubmits it once the wait is over and space is free."""
    work, pbs, env = workflow
    with disks.small_disk(tmp_path / "disk") as disk:
        (work / "Snakefile").write_text(
            f"""
rule write:
    output: "results/w.txt"
    shell: "head -c 1000000 /dev/zero > {disk}/data.bin && echo ok > {{output}}"
"""
        )
        disks.fill(disk / "filler")
        log = tmp_path / "controller.err"
        with open(log, "w") as err:
            command = [*SNAKEMAKE, *ARGS, "--pbs-storage-wait", "1", "--pbs-max-error-retries", "0"]
            run = subprocess.Popen(
                command, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=err
            )
        wait_until(lambda: "out of disk space" in log.read_text(), "the failure for space")
        held = log.read_text()
        assert "No space left on device" in held and "resubmitted in 1 min" in held, held
        assert len(pbs.calls("qsub")) == 1
        (disk / "filler").unlink()  # someone freed space
        assert run.wait(timeout=900) == 0, log.read_text()  # a safety net: ~1 min hold, one job
    assert (work / "results" / "w.txt").read_text() == "ok\n"
    assert len(pbs.calls("qsub")) == 2
    [record] = records(work).values()
    assert [s["outcome"] for s in record["submissions"]] == ["storage", "success"]


@pytest.mark.parametrize(
    ("changes", "named"),
    [({"storage_wait": 0}, "--pbs-storage-wait"), ({"max_storage_failures": -1}, "-1")],
)
def test_storage_settings_out_of_range_are_refused_by_name(changes, named):
    with pytest.raises(WorkflowError, match=named):
        ExecutorSettings(**changes)


def test_storage_settings_reach_the_controller_in_seconds(tmp_path):
    settings = ExecutorSettings(storage_wait=90, max_storage_failures=3)
    limits = controller_config(settings, tmp_path).limits
    assert limits.storage_wait == 5400 and limits.max_storage_failures == 3
