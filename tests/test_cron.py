"""scripts/cron.sh: a real crontab, ticks that keep exactly one controller alive and report the
one that died, remote mode over a real sshd on 127.0.0.1 with the tick in the cluster's login
environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakedata import ONE_EXPERIMENT_SWEEP
from sshdlib import missing_tools, sshd

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


# A project whose "sweep" is one job that waits until the file `release` exists (no test makes
# it: the controller is certainly alive for as long as a test looks, on any machine).
WAIT = "until [ -e release ]; do sleep 0.2; done"
SNAKEFILE = f"""
rule all:
    input: "a.done"

rule a:
    output: "a.done"
    shell: "{WAIT} && touch {{output}}"
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
        "KDFLOW_SNAKEMAKE_ARGS": "",
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
    assert f"the previous controller ({old}) has ended" in restarted.stdout, restarted.stdout
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


# The "cluster" the remote tests reach: this machine over a real sshd, as root (the sshd lets
# only root in). Its login environment is the test's own: HOME is a fresh directory (sshd's
# SetEnv), whose ~/.profile a test may write, and PBS_CONF_FILE names no file, so that
# /etc/profile.d/pbs.sh (which OpenPBS installs here) puts no real PBS on the login PATH.
@pytest.fixture
def cluster_home(tmp_path):
    home = tmp_path / "cluster home"
    home.mkdir()
    return home


@pytest.fixture
def sshd_options(tmp_path, cluster_home):
    """The ssh options (KDFLOW_SSH) that reach the sshd on 127.0.0.1 as root."""
    missing = missing_tools()
    if missing:
        _need(*missing)
    if os.geteuid() != 0:
        pytest.skip("sshd for the remote-mode tests needs root here")
    env = {"HOME": cluster_home, "PBS_CONF_FILE": tmp_path / "no-pbs.conf"}
    with sshd(tmp_path / "sshd", "root", setenv=env) as options:
        yield options


def _remote(path: Path) -> str:
    return f"root@127.0.0.1:{path}"


@pytest.mark.slow
def test_remote_mode_pushes_ticks_pulls_without_checkpoints_and_plots(
    project, sshd_options, tmp_path
):
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

    env = _env(KDFLOW_REMOTE=_remote(remote), KDFLOW_SSH=sshd_options)
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


# -- ticks that tell whether the controller they start runs ----------------------------------

# A PBS "cluster" for profiles/fakepbs: qsub gives out a job id, qstat never answers (so the
# executor waits on the job for good, as on a busy server), qdel does nothing. The controller
# needs them on PATH (the PBS executor refuses to start without qsub, qstat and qdel), so it
# dies at once where they are not. The directory's name has a space and a quote in it.
FAKE_PBS = {
    "qsub": "#!/bin/sh\necho 1.fake\n",
    "qstat": "#!/bin/sh\necho 'qstat: cannot connect to server fake' >&2\nexit 1\n",
    "qdel": "#!/bin/sh\nexit 0\n",
}
# PATH without any PBS command: the system's directories (cron.sh puts the venv first)
NO_PBS_PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture
def fake_pbs(tmp_path) -> Path:
    bin_dir = tmp_path / "site's pbs bin"
    bin_dir.mkdir()
    for name, text in FAKE_PBS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


@pytest.fixture
def pbs_project(project):
    """The project with profiles/fakepbs: the PBS executor, as profiles/pbs has it."""
    if any(shutil.which(t, path=NO_PBS_PATH) for t in FAKE_PBS):
        pytest.skip(f"a PBS command is installed in {NO_PBS_PATH}: nothing can lack it here")
    (project / "profiles/fakepbs").mkdir()
    (project / "profiles/fakepbs/config.yaml").write_text(
        "executor: pbs\njobs: 1\npbs-status-interval: 1\n"
    )
    return project


def _pbs_env(**extra):
    return {"KDFLOW_PROFILE": "profiles/fakepbs", "PATH": NO_PBS_PATH, **extra}


def _tail_shown(stdout: str) -> list[str]:
    """The log lines a tick showed (indented with '    | ')."""
    return [line[6:] for line in stdout.splitlines() if line.startswith("    | ")]


NEEDS_PBS = "The PBS executor needs qsub, qstat, qdel on PATH"


def test_a_controller_that_dies_at_start_fails_the_tick_with_the_end_of_its_log(
    pbs_project, fake_pbs, cleanup
):
    result = tick(pbs_project, **_pbs_env())
    assert result.returncode == 1, result.stdout + result.stderr
    assert "started controller" not in result.stdout
    assert re.search(r"FAILED: the controller \d+ died within \d+s of starting \(exit status 1\)",
                     result.stdout), result.stdout  # fmt: skip
    shown = _tail_shown(result.stdout)
    assert any(NEEDS_PBS in line for line in shown) and len(shown) <= 20
    assert controllers(pbs_project) == []
    assert not (pbs_project / ".kdflow/controller.pid").exists()  # reported once, here

    # with the commands on PATH the same tick starts one that schedules its job
    fixed = tick(pbs_project, **_pbs_env(PATH=f"{NO_PBS_PATH}:{fake_pbs}"))
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert "Snakemake is scheduling jobs" in fixed.stdout
    assert "previous controller" not in fixed.stdout  # the dead one was reported already
    assert controllers(pbs_project) == [_pid(pbs_project)]


# A job that waits for the test to tell it to fail: the controller ends with the error after
# the tick that started it saw it under way.
FAILING_SNAKEFILE = """
rule all:
    input: "a.done"

rule a:
    output: "a.done"
    shell: "while [ ! -e fail-now ]; do sleep 0.1; done; echo 'the job failed on purpose'; exit 3"
"""


def test_a_controller_that_ended_since_the_last_tick_is_reported_once(project, cleanup):
    (project / "Snakefile").write_text(FAILING_SNAKEFILE)
    first = tick(project)
    assert first.returncode == 0 and "Snakemake is scheduling jobs" in first.stdout, first.stdout
    old = _pid(project)
    assert wait_for(lambda: runs_its_job(old), timeout=60)
    (project / "fail-now").touch()
    assert wait_for(lambda: not controllers(project), timeout=120)
    (project / "fail-now").unlink()  # the next controller's job waits again

    second = tick(project)
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"the previous controller ({old}) has ended" in second.stdout, second.stdout
    assert any("Error in rule a" in line for line in _tail_shown(second.stdout)), second.stdout
    assert "Snakemake is scheduling jobs" in second.stdout and _pid(project) != old
    third = tick(project)
    assert "is alive" in third.stdout and "previous controller" not in third.stdout


# A controller that cannot get to scheduling until the test lets it (the dry run and the unlock
# of the tick are let through).
SLOW_START_SNAKEFILE = f"""
import os, sys, time
if not {{"-n", "--unlock"}} & set(sys.argv):
    while not os.path.exists("go"):
        time.sleep(0.1)

rule all:
    input: "a.done"

rule a:
    output: "a.done"
    shell: "{WAIT} && touch {{output}}"
"""


def test_a_controller_still_starting_when_the_watch_ends_is_left_to_run(project, cleanup):
    (project / "Snakefile").write_text(SLOW_START_SNAKEFILE)
    result = tick(project, KDFLOW_START_WAIT="2")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "not scheduling jobs yet after 2s" in result.stdout, result.stdout
    pid = _pid(project)
    assert controllers(project) == [pid]
    (project / "go").touch()
    assert wait_for(lambda: runs_its_job(pid), timeout=60)


def test_a_bad_start_wait_is_refused(project):
    result = tick(project, KDFLOW_START_WAIT="a minute")
    assert result.returncode == 2 and "'a minute'" in result.stderr


# -- remote ticks in the cluster's login environment -----------------------------------------


@pytest.fixture
def remote(tmp_path, pbs_project, fake_pbs):
    """The project's directory on the "cluster" (a path with a space, a quote and a $), with
    the cluster's venv; no results/ yet. Its controllers are killed after the test."""
    path = tmp_path / "cluster's kdflow $HOME"
    path.mkdir()
    (path / ".venv").symlink_to(VENV)
    yield path
    for pid in controllers(path):
        os.killpg(os.getpgid(pid), signal.SIGKILL)


def remote_tick(project, remote, sshd_options, **env):
    return tick(project, **_pbs_env(KDFLOW_REMOTE=_remote(remote), KDFLOW_SSH=sshd_options, **env))


def _scheduling_there(result, remote) -> None:
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "Snakemake is scheduling jobs" in out and NEEDS_PBS not in out
    assert "nothing to pull yet: no results/ on the cluster" in out
    assert not (remote.parent / "project/results").exists()  # nothing pulled, no plots
    assert wait_for(lambda: controllers(remote), timeout=30)
    assert controllers(remote) == [_pid(remote)]


@pytest.mark.slow
def test_a_remote_tick_gets_the_commands_the_login_profile_puts_on_path(
    pbs_project, remote, sshd_options, cluster_home, fake_pbs
):
    (cluster_home / ".profile").write_text(f'PATH="$PATH":{shlex.quote(str(fake_pbs))}\n')
    _scheduling_there(remote_tick(pbs_project, remote, sshd_options), remote)


@pytest.mark.slow
def test_a_remote_tick_runs_the_site_setup_line_first(pbs_project, remote, sshd_options, fake_pbs):
    # shell code as a user writes it, quotes and a comment included: it runs in the login
    # shell before the tick, and nothing in it reaches the tick's own command
    setup = f'export PATH="$PATH":{shlex.quote(str(fake_pbs))}  # the site\'s "module load pbs"'
    result = remote_tick(pbs_project, remote, sshd_options, KDFLOW_REMOTE_SETUP=setup)
    _scheduling_there(result, remote)

    failing = remote_tick(pbs_project, remote, sshd_options, KDFLOW_REMOTE_SETUP="false")
    assert failing.returncode == 2, failing.stdout + failing.stderr
    assert "KDFLOW_REMOTE_SETUP failed there (exit status 1): no tick" in failing.stdout
    assert "FAILED: the tick on root@127.0.0.1 (exit status 2)" in failing.stdout


@pytest.mark.slow
def test_a_remote_tick_without_the_login_profile_reports_the_dead_controller(
    pbs_project, remote, sshd_options
):
    result = remote_tick(pbs_project, remote, sshd_options)
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "started controller" not in out
    assert re.search(r"FAILED: the controller \d+ died within \d+s of starting", out), out
    assert any(NEEDS_PBS in line for line in _tail_shown(result.stdout)), out
    assert "FAILED: the tick on root@127.0.0.1 (exit status 1)" in out
    assert "nothing to pull yet: no results/ on the cluster" in out
    assert controllers(remote) == []

    # a pull that fails for another reason fails the tick and says why
    (remote / "results").write_text("a file where the results directory should be")
    again = remote_tick(pbs_project, remote, sshd_options)
    assert again.returncode != 0
    assert "FAILED: pulling results from root@127.0.0.1:" in again.stdout, again.stdout
