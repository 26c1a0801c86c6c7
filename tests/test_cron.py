"""scripts/cron.sh: a real crontab, ticks that keep exactly one controller alive, remote mode
over a real sshd on 127.0.0.1."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakedata import ONE_EXPERIMENT_SWEEP

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


def _need(*tools):
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        reason = f"needs {', '.join(missing)} (make test installs cron, openssh-server, rsync)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)


@pytest.fixture
def crontab():
    """The real crontab of this user, restored after the test."""
    _need("crontab")
    saved = subprocess.run(["crontab", "-l"], capture_output=True, text=True)
    yield lambda: subprocess.run(["crontab", "-l"], capture_output=True, text=True).stdout
    if saved.returncode == 0:
        subprocess.run(["crontab", "-"], input=saved.stdout, text=True, check=True)
    else:
        subprocess.run(["crontab", "-r"], capture_output=True)


# A project whose "sweep" is one job that sleeps: enough to have a controller to keep alive.
SNAKEFILE = """
rule all:
    input: "a.done"

rule a:
    output: "a.done"
    shell: "sleep {config[nap]} && touch {output}"
"""


@pytest.fixture
def project(tmp_path):
    root = tmp_path / "project"
    (root / "scripts").mkdir(parents=True)
    for name in ("cron.sh", "rsync-exclude.txt"):
        shutil.copy2(ROOT / "scripts" / name, root / "scripts" / name)
    (root / "Snakefile").write_text(SNAKEFILE)
    (root / "profiles/test").mkdir(parents=True)
    (root / "profiles/test/config.yaml").write_text("executor: local\ncores: 1\n")
    return root


def _env(**extra):
    return {
        **os.environ,
        "KDFLOW_VENV": str(VENV),
        "KDFLOW_PROFILE": "profiles/test",
        "KDFLOW_SNAKEMAKE_ARGS": "--config nap=60",
        **extra,
    }


def tick(project, **env):
    return subprocess.run(
        ["bash", str(project / "scripts/cron.sh"), "cron"],
        env=_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def controllers(project) -> list[int]:
    """Snakemake processes running in `project` (the controllers, not their job shells)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except (OSError, ValueError):
            continue
        is_snakemake = any(b"snakemake" in part for part in cmd[:3])
        if cwd == str(project) and is_snakemake and not {b"--unlock", b"-n"} & set(cmd):
            pids.append(int(proc.name))
    return pids


@pytest.fixture
def cleanup(project):
    yield
    for pid in controllers(project):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def _pid(project):
    return int((project / ".kdflow/controller.pid").read_text())


def wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def children(pid: int) -> list[list[bytes]]:
    """The command lines of the processes whose parent is `pid`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            stat = (proc / "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append((proc / "cmdline").read_bytes().split(b"\0"))
        except (OSError, ValueError, IndexError):
            continue
    return found


def runs_its_job(pid: int) -> bool:
    """Whether controller `pid` runs its job (the job's shell is its child): it got past
    Snakemake's lock, where a controller that found the lock taken exits."""
    return any(b"sleep" in b" ".join(cmd) for cmd in children(pid))


def test_on_twice_leaves_one_entry_and_off_removes_only_ours(crontab, project):
    other = "0 3 * * * /usr/local/bin/backup --all # the user's own\n"
    subprocess.run(["crontab", "-"], input=other, text=True, check=True)
    script = ["bash", str(project / "scripts/cron.sh")]
    env = _env(SNAKEMAKE_PBS_PROJECT="CSCI1234")
    subprocess.run([*script, "on"], env=env, check=True, capture_output=True)
    subprocess.run([*script, "on", "5"], env=env, check=True, capture_output=True)
    lines = crontab().splitlines()
    ours = [line for line in lines if f"kdflow-cron:{project}" in line]
    assert len(ours) == 1 and ours[0].startswith("*/5 * * * * cd ")
    assert "SNAKEMAKE_PBS_PROJECT=CSCI1234" in ours[0] and "PATH=" in ours[0]
    assert other.strip() in lines
    subprocess.run([*script, "off"], env=env, check=True, capture_output=True)
    assert crontab() == other


def test_on_rejects_a_bad_interval(crontab, project):
    result = subprocess.run(
        ["bash", str(project / "scripts/cron.sh"), "on", "every-hour"],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "'every-hour'" in result.stderr
    assert f"kdflow-cron:{project}" not in crontab()


@pytest.mark.slow
def test_ticks_keep_exactly_one_controller(project, cleanup):
    # dead: the first tick starts one
    first = tick(project)
    assert first.returncode == 0, first.stderr
    assert "started controller" in first.stdout
    assert wait_for(lambda: controllers(project) == [_pid(project)])

    # alive: the next tick leaves it alone
    again = tick(project)
    assert "is alive" in again.stdout and controllers(project) == [_pid(project)]
    assert (project / "logs/cron/status.txt").exists()

    # dead with a stale lock: SIGKILL leaves .snakemake/locks behind
    old = _pid(project)
    assert wait_for(lambda: any((project / ".snakemake/locks").glob("*")))
    os.killpg(os.getpgid(old), signal.SIGKILL)
    assert wait_for(lambda: not controllers(project))
    assert any((project / ".snakemake/locks").glob("*")), "the lock should be stale now"
    restarted = tick(project)
    assert "started controller" in restarted.stdout
    assert wait_for(lambda: controllers(project) == [_pid(project)]) and _pid(project) != old
    # the new controller took the lock (released by the tick) and runs the job
    assert wait_for(lambda: runs_its_job(_pid(project)), timeout=60)
    assert controllers(project) == [_pid(project)]
    assert "LockException" not in (project / "logs/cron/controller.log").read_text()


@pytest.mark.slow
def test_two_concurrent_ticks_start_one_controller(project, cleanup):
    ticks = [
        subprocess.Popen(
            ["bash", str(project / "scripts/cron.sh"), "cron"],
            env=_env(),
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [t.communicate(timeout=120)[0] for t in ticks]
    assert sum("started controller" in out for out in outputs) == 1, outputs
    assert sum("is alive" in out for out in outputs) == 1, outputs
    assert wait_for(lambda: len(controllers(project)) == 1)
    # both ticks have ended and the one controller runs its job: nothing can start another
    started = _pid(project)
    assert wait_for(lambda: runs_its_job(started), timeout=60)
    assert controllers(project) == [started]


def test_a_finished_sweep_starts_nothing(project, cleanup):
    (project / "a.done").write_text("")
    result = tick(project)
    assert result.returncode == 0, result.stderr
    assert "the sweep is finished" in result.stdout
    assert controllers(project) == []


def test_the_dashboard_and_report_show_the_config_the_controller_runs(project, cleanup):
    """KDFLOW_CONFIGFILE goes to the controller and to `kdflow status` and `kdflow report`:
    with another config, neither shows config/experiments.yaml's experiments (here there is
    none: they would fail)."""
    (project / "config").mkdir()
    (project / "config/one.yaml").write_text(ONE_EXPERIMENT_SWEEP)
    (project / "results").mkdir()
    (project / "a.done").write_text("")
    result = tick(project, KDFLOW_CONFIGFILE="config/one.yaml")
    assert result.returncode == 0, result.stderr
    assert "the sweep is finished" in result.stdout, result.stdout
    status = (project / "logs/cron/status.txt").read_text()
    assert "finished 0/1 " in status, status  # one.yaml's one experiment
    report = (project / "logs/cron/report.txt").read_text()
    assert "config/one.yaml: 0 of 1 experiments" in report, report


def test_logs_are_rotated(project, cleanup):
    log = project / "logs/cron/cron.log"
    log.parent.mkdir(parents=True)
    log.write_bytes(b"x" * 1_100_000)
    (project / "a.done").write_text("")
    tick(project)
    assert (project / "logs/cron/cron.log.1").stat().st_size == 1_100_000


# The controller's job writes numbered lines to the controller's output (controller.log) for as
# long as it runs: a live writer of the log, as a controller is while it runs a sweep.
WRITER_SNAKEFILE = r"""
rule all:
    input: "a.done"

rule a:
    output: "a.done"
    shell: "i=0; while true; do i=$((i+1)); echo \"writer $$ line $i\"; sleep 0.01; done"
"""


def writer_lines(path: Path) -> dict[str, list[int]]:
    """{writer: its line numbers, in file order} of the writers' lines in `path`."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return {}
    lines: dict[str, list[int]] = {}
    for match in re.finditer(r"^writer (\d+) line (\d+)$", text, re.MULTILINE):
        lines.setdefault(match[1], []).append(int(match[2]))
    return lines


@pytest.mark.slow
def test_a_controller_writing_while_ticks_run_keeps_its_log_and_loses_no_line(project, cleanup):
    (project / "Snakefile").write_text(WRITER_SNAKEFILE)
    log, rotated = project / "logs/cron/controller.log", project / "logs/cron/controller.log.1"
    assert tick(project).returncode == 0
    assert wait_for(lambda: writer_lines(log), timeout=60)
    first = _pid(project)
    (writer,) = writer_lines(log)
    with open(log, "ab") as f:  # past the rotation size (1 MB), appended as the writer does
        f.write(b"padding\n" * 140_000)
    inode = log.stat().st_ino

    for _ in range(3):  # ticks while the controller writes: its log stays where it is
        before = len(writer_lines(log).get(writer, []))
        assert tick(project).returncode == 0
        assert log.exists() and log.stat().st_ino == inode and not rotated.exists()
        assert wait_for(lambda b=before: len(writer_lines(log).get(writer, [])) > b + 10)

    os.killpg(os.getpgid(first), signal.SIGKILL)
    assert wait_for(lambda: not controllers(project))
    written = len(writer_lines(log)[writer])
    assert tick(project).returncode == 0  # no writer now: rotated; the new controller writes anew
    assert _pid(project) != first
    assert wait_for(lambda: len(writer_lines(log)) == 1 and writer not in writer_lines(log),
                    timeout=60)  # fmt: skip
    (second,) = writer_lines(log)
    assert rotated.stat().st_ino == inode
    size = rotated.stat().st_size
    now = len(writer_lines(log)[second])
    assert wait_for(lambda: len(writer_lines(log)[second]) > now + 50)
    assert rotated.stat().st_size == size  # the rotated log no longer grows

    # no line lost: each writer's lines are 1, 2, 3, ... without a gap, all in one file
    old = writer_lines(rotated)
    assert list(old) == [writer] and old[writer] == list(range(1, len(old[writer]) + 1))
    assert len(old[writer]) >= written
    new = writer_lines(log)[second]
    assert new == list(range(1, len(new) + 1))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sshd(tmp_path):
    """A real sshd on 127.0.0.1 that lets this user in with a key made for the test."""
    _need("sshd", "ssh", "ssh-keygen", "rsync")
    if os.geteuid() != 0:
        pytest.skip("sshd for the remote-mode test needs root here")
    d = tmp_path / "sshd"
    d.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "host"], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", d / "user"], check=True)
    shutil.copy(d / "user.pub", d / "authorized_keys")
    port = _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n"
        "StrictModes no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    server = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", d / "sshd_config"],
                              stderr=subprocess.PIPE)  # fmt: skip
    options = (
        f"-p {port} -i {d / 'user'} -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
    )
    assert wait_for(
        lambda: (
            subprocess.run(
                ["ssh", *options.split(), "-o", "BatchMode=yes", "127.0.0.1", "true"],
                capture_output=True,
            ).returncode
            == 0
        ),
        timeout=20,
    ), "sshd did not come up"
    yield options
    server.terminate()
    server.wait(timeout=10)


@pytest.mark.slow
def test_remote_mode_pushes_ticks_pulls_without_checkpoints_and_plots(project, sshd, tmp_path):
    remote = tmp_path / "remote"
    results = remote / "results/digits/pure/resnet8/seed0"
    results.mkdir(parents=True)
    (remote / ".venv").symlink_to(VENV)  # the cluster's own venv
    (results / "checkpoint.pth").write_bytes(b"big")
    (results / "best.pth").write_bytes(b"big")
    (results / "history.csv").write_text(
        "epoch,train_loss,train_acc,test_loss,test_acc,lr,epoch_seconds,images_per_s\n"
        "0,2.0,40,1.9,45.5,0.05,1.0,900\n"
    )
    metrics = {"dataset": "digits", "method": "pure", "model": "resnet8", "teacher": None,
               "alpha": 0.0, "seed": 0, "final_acc": 45.5, "best_acc": 45.5}  # fmt: skip
    (results / "metrics.json").write_text(json.dumps(metrics))
    (results / "completed").write_text("")
    # the sweep's config (what the remote results hold): `kdflow report` draws exactly its
    # experiments
    (project / "config").mkdir()
    (project / "config/experiments.yaml").write_text(ONE_EXPERIMENT_SWEEP)
    (project / "local-only.txt").write_text("not for the cluster")
    (project / ".snakemake").mkdir()
    (project / ".snakemake/local-state").write_text("this machine's controller state")

    env = _env(KDFLOW_REMOTE=f"{os.environ.get('USER', 'root')}@127.0.0.1:{remote}",
               KDFLOW_SSH=sshd)  # fmt: skip
    try:
        result = subprocess.run(
            ["bash", str(project / "scripts/cron.sh"), "cron"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        # pushed: the code, not the local state
        assert (remote / "Snakefile").read_text() == SNAKEFILE
        assert (remote / "local-only.txt").exists()
        assert not (remote / ".snakemake/local-state").exists()
        # ticked there: a controller runs in the remote directory
        assert wait_for(lambda: controllers(remote), timeout=30)
        # pulled: results without checkpoints; plots drawn here
        local = project / "results/digits/pure/resnet8/seed0"
        assert (local / "metrics.json").exists() and (local / "history.csv").exists()
        assert not (local / "checkpoint.pth").exists() and not (local / "best.pth").exists()
        assert "resnet8" in (project / "results/summary/results.csv").read_text()
        assert (project / "results/summary/curves_digits.png").exists()
    finally:
        for pid in controllers(remote):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
