"""kdflow's profiles: every key is a Snakemake option, and profiles/pbs tells the PBS executor
plugin what kdflow relies on: the registry where `kdflow status` reads it, job names it can
compute, progress from the trainer's status.json. Whole runs go through the plugin's fake PBS
(plugins/snakemake-executor-plugin-pbs/tests/samples/fake_pbs.py)."""

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from kdflow.status import executor_settings
from snakemake_executor_plugin_pbs.submit import job_name

ROOT = Path(__file__).resolve().parents[1]
PROFILES = ROOT / "profiles"
PBS_PROFILE = PROFILES / "pbs"
SNAKEMAKE = [sys.executable, "-m", "snakemake"]

_spec = importlib.util.spec_from_file_location(
    "kdflow_fake_pbs", ROOT / "plugins/snakemake-executor-plugin-pbs/tests/samples/fake_pbs.py"
)
fake_pbs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fake_pbs)


def profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


@pytest.fixture(scope="module")
def snakemake_help() -> str:
    out = subprocess.run([*SNAKEMAKE, "--help"], capture_output=True, text=True, check=True)
    return out.stdout


@pytest.mark.parametrize("name", ["local", "pbs", "slurm"])
def test_profile_keys_are_snakemake_options(name, snakemake_help):
    for key in profile(name):
        assert f"--{key}" in snakemake_help, key


def test_the_pbs_profile_runs_on_any_pbs_unmodified():
    pbs = profile("pbs")
    assert pbs["executor"] == "pbs" and pbs["retries"] == 0
    assert pbs["set-threads"] == {"train_pure": 10, "train_kd": 10, "train_pack": 10}
    assert pbs["set-resources"]["train_kd"] == pbs["set-resources"]["train_pack"] == {"gpu": 1}
    # Site facts come from the environment, so the profile runs on any PBS unmodified.
    assert "pbs-queue" not in pbs and "pbs-project" not in pbs


def test_the_pbs_profile_tells_the_plugin_what_kdflow_status_reads():
    pbs = profile("pbs")
    # `kdflow status` reads the executor's settings from this profile, not from a copy
    settings = executor_settings(PROFILES / "pbs")
    assert settings.registry_dir == Path(pbs["pbs-registry-dir"]) == Path(".kdflow/pbs")
    assert settings.job_name_prefix == pbs["pbs-job-name-prefix"] == "kd"
    # the trainer's status.json, and its number of finished epochs, measure progress
    assert (pbs["pbs-progress-file"], pbs["pbs-progress-key"]) == ("status.json", "epoch")


SNAKEFILE = """
rule all:
    input: "results/a/completed", "results/b.txt"

rule train_pure:
    output: "results/a/completed"
    shell: "echo '{{\\"epoch\\": 3}}' > results/a/status.json; echo ok > {output}"

rule other:
    input: "results/a/completed"
    output: "results/b.txt"
    resources: pbs_queue="serial"
    shell: "echo ok > {output}"
"""


@pytest.mark.slow
def test_the_pbs_profile_runs_a_workflow_with_settings_from_the_environment(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "Snakefile").write_text(SNAKEFILE)
    pbs = fake_pbs.FakePbs(tmp_path / "pbs", run=True)
    env = pbs.env()
    env.pop("SNAKEMAKE_PROFILE", None)
    env.update(SNAKEMAKE_PBS_QUEUE="gpu_1", SNAKEMAKE_PBS_PROJECT="CSCI1234")
    run = subprocess.run(
        [*SNAKEMAKE, "--profile", str(PBS_PROFILE), "--pbs-status-interval", "1"],
        cwd=work, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert (work / "results" / "a" / "completed").read_text() == "ok\n"

    registry = work / ".kdflow" / "pbs"
    scripts = {path.stem: path.read_text() for path in (registry / "scripts").glob("*.sh")}
    train = scripts[job_name(["results/a/completed"], prefix="kd")]
    other = scripts[job_name(["results/b.txt"], prefix="kd")]
    assert "#PBS -q gpu_1\n#PBS -P CSCI1234\n" in train
    assert "#PBS -l select=1:ncpus=10:ngpus=1:mem=4000mb\n" in train
    assert "#PBS -l walltime=01:00:00\n" in train
    assert "#PBS -q serial\n#PBS -P CSCI1234\n#PBS -l select=1:ncpus=1:mem=4000mb\n" in other
    # readable in qstat: the rule, then kdflow's prefix and the hash `kdflow status` computes
    names = sorted(job["name"] for job in pbs.jobs())
    assert [name.split(".")[0] for name in names] == ["other", "train_pure"], names
    assert all(re.fullmatch(r"[a-z_]+\.kd[0-9a-f]{10}", name) for name in names), names
    assert len(pbs.calls("qsub")) == 2

    records = {
        record["rule"]: record
        for record in (json.loads(p.read_text()) for p in (registry / "targets").glob("*.json"))
    }
    assert [s["outcome"] for s in records["train_pure"]["submissions"]] == ["success"]
    assert records["train_pure"]["last_progress"] == 3  # the epoch in status.json
    assert records["other"]["last_progress"] is None
