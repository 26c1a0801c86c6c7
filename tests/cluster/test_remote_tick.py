"""scripts/cron.sh's remote mode against the real OpenPBS: a "workstation" (root, here) ticks
over a real sshd into the cluster as the test user, whose PBS commands (/opt/pbs/bin) are on
PATH only through its login profile (/etc/profile.d/pbs.sh, as OpenPBS's installer leaves it;
a non-interactive ssh reads no profile). Successive ticks drive a one-experiment sweep through
profiles/pbs to the end and pull its results without checkpoints; the same tick run on the
cluster without a login shell reports the controller's death."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from fakedata import ONE_EXPERIMENT_SWEEP
from sshdlib import missing_tools, sshd
from test_cron import controllers

pytestmark = pytest.mark.slow

VENV = Path(sys.executable).parent.parent  # the workstation's: kdflow report draws here
# the workflow as a user's checkout has it (the session's copy of the code under test)
CHECKOUT = ("Snakefile", "rules", "scripts", "config", "envs", "profiles", "src", "pyproject.toml")
EXPERIMENT = "results/digits/pure/resnet8/seed0"
NEEDS_PBS = "The PBS executor needs qsub, qstat, qdel on PATH"
SETTINGS = {  # as test_e2e_pbs.py runs profiles/pbs: the site's queue and project, 1 thread
    "SNAKEMAKE_PBS_QUEUE": "gpu_1",
    "SNAKEMAKE_PBS_PROJECT": "ci",
    "KDFLOW_SNAKEMAKE_ARGS": (
        "--set-threads train_pure=1 train_kd=1 train_pack=1 --pbs-status-interval 3"
    ),
}


@pytest.fixture(scope="module")
def ssh_options(openpbs):
    """ssh options that log in as the test user on 127.0.0.1 (a real sshd; the user's own
    HOME and login profile)."""
    missing = missing_tools()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (make cluster installs openssh-server, rsync)")
    directory = openpbs.session_dir / "sshd"  # the user reads its authorized keys here
    with sshd(directory, openpbs.user, pam=True) as options:  # pam: the account is locked
        yield options


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return f"{pid} (gone)"


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.fixture
def cluster(openpbs, tmp_path):
    """(workstation checkout, the user's directory on the cluster with its venv)."""
    workstation = tmp_path / "workstation"
    for name in CHECKOUT:
        source, target = openpbs.workflow / name, workstation / name
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    (workstation / "config/experiments.yaml").write_text(ONE_EXPERIMENT_SWEEP)
    other = yaml.safe_load(ONE_EXPERIMENT_SWEEP) | {"seeds": [1]}  # not run: no ticks for it
    (workstation / "config/seed1.yaml").write_text(yaml.safe_dump(other))
    remote = openpbs.workdir("remote")
    (remote / ".venv").symlink_to(openpbs.venv)  # the cluster's venv
    yield workstation, remote
    for pid in controllers(remote):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def _tick(workstation: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", workstation / "scripts/cron.sh", "cron"], env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_remote_ticks_drive_a_sweep_on_openpbs_through_the_login_environment(
    openpbs, ssh_options, cluster
):
    workstation, remote = cluster
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KDFLOW_", "SNAKEMAKE_"))},
        **SETTINGS,
        "KDFLOW_REMOTE": f"{openpbs.user}@127.0.0.1:{remote}",
        "KDFLOW_SSH": ssh_options,
        "KDFLOW_VENV": str(VENV),
    }
    ticks = []
    while True:  # tick; wait for the controller it started to end; tick again
        result = _tick(workstation, env)
        out = result.stdout + result.stderr
        ticks.append(out)
        assert result.returncode == 0, "\n---\n".join(ticks)
        assert NEEDS_PBS not in out
        if "the sweep is finished" in out:
            break
        assert len(ticks) < 4, "\n---\n".join(ticks)  # a controller, or one more, finishes it
        assert "Snakemake is scheduling jobs" in out, out
        pid = int((remote / ".kdflow/controller.pid").read_text())
        openpbs.wait_for(lambda p=pid: not _alive(p), 600, interval=1,
                         what=f"the controller {pid} to end")  # fmt: skip
    # the last tick said how the last controller ended, with the end of its log
    assert re.search(r"the previous controller \(\d+\) has ended", ticks[-1]), ticks[-1]
    assert "steps (100%) done" in ticks[-1]

    # the job ran on the real server, submitted by the user from the cluster's directory
    jobs = openpbs.jobs_of(remote, history=True)
    assert jobs and all(j["Job_Owner"].startswith(f"{openpbs.user}@") for j in jobs.values())
    assert all(j["Exit_status"] == "0" and j["queue"] == "gpu_1" for j in jobs.values()), jobs
    # pulled: the results without checkpoints (the cluster has them); plots drawn here
    local = workstation / EXPERIMENT
    assert json.loads((local / "metrics.json").read_text())["model"] == "resnet8"
    assert (remote / EXPERIMENT / "best.pth").exists()
    assert not list((workstation / "results").rglob("*.pth"))
    assert "resnet8" in (workstation / "results/summary/results.csv").read_text()
    assert "finished 1/1" in (workstation / "logs/cron/status.remote.txt").read_text()

    # the same tick on the cluster through a plain non-interactive ssh (no login profile: no
    # PBS commands), for a sweep with work left: the controller dies, and the tick says so
    command = f"cd {remote} && KDFLOW_CONFIGFILE=config/seed1.yaml bash scripts/cron.sh cron"
    plain = subprocess.run(
        ["ssh", *ssh_options.split(), "-o", "BatchMode=yes", f"{openpbs.user}@127.0.0.1", command],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert plain.returncode == 1, plain.stdout + plain.stderr
    assert "started controller" not in plain.stdout
    assert re.search(r"FAILED: the controller \d+ died within \d+s of starting", plain.stdout)
    assert NEEDS_PBS in plain.stdout, plain.stdout
    # nothing of it runs on (a process that has exited may take a moment to leave /proc)
    openpbs.wait_for(lambda: not controllers(remote), 60, what="no controller in the directory "
                     f"(left: {[_cmdline(pid) for pid in controllers(remote)]})")  # fmt: skip
    assert set(openpbs.jobs_of(remote, history=True)) == set(jobs)  # nothing submitted
