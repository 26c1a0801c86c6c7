"""Fixtures of the cluster tests: a real single-node OpenPBS and a real single-node Slurm.

`openpbs` (session) starts the real OpenPBS server with tests/cluster/openpbs.sh and yields an
OpenPBS: the jobs are submitted by an ordinary user (root's are refused), who runs kdflow from
a venv of the session's own: the repository's current code (copied at the session's start) on
top of the dependencies in the shared test venv (`openpbs.sh venv`). `workdir(name)` gives a
directory that user owns, `command(*argv)` an argv that runs as that user, `run()` runs one,
`jobs()` reads the server's own account (text `qstat -f`), `calls("qsub")` counts the calls
through counting wrappers in front of the real commands. After every test that used it, the
test's jobs still alive are deleted.

`slurm` (session) starts Slurm with tests/cluster/slurm.sh (for `profiles/slurm`, the official
Slurm plugin) and yields the environment to run its commands in.

Where a scheduler cannot run (not root, not installed) its tests are skipped, except under
CI=true, where they fail. Both stay up after the session (KDFLOW_SLURM_STOP=1: stop Slurm when
this session started it).
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import pwd
import re
import shutil
import subprocess
import tempfile
import time
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
SLURM_SH = HERE / "slurm.sh"
OPENPBS_SH = HERE / "openpbs.sh"
REPO = HERE.parents[1]


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "openpbs: needs the real single-node OpenPBS (tests/cluster/openpbs.sh)"
    )


def wait_for(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = ""
) -> Any:
    """Poll predicate until it returns something truthy; return that; fail after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what or predicate!r}"
                f" (last value: {last!r})"
            )
        time.sleep(interval)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the cluster tests must run in CI, but: {reason}", pytrace=False)
    pytest.skip(reason)


def _slurm(cmd: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(SLURM_SH), cmd], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="session")
def slurm() -> dict[str, str]:
    """The real single-node Slurm: the environment its commands run in."""
    env = dict(os.environ)
    env["KDFLOW_SLURM_RUN"] = env.get("KDFLOW_SLURM_RUN") or "/tmp/kdflow-slurm"
    was_up = _slurm("status", env).returncode == 0
    if not was_up:
        if os.geteuid() != 0:
            _unavailable("starting the test Slurm needs root (tests/cluster/slurm.sh start)")
        if not (Path("/usr/sbin/slurmctld").exists() and shutil.which("sbatch")):
            _unavailable("Slurm is not installed: run tests/cluster/slurm.sh install (as root)")
    p = _slurm("start", env)
    if p.returncode != 0:
        _unavailable(f"tests/cluster/slurm.sh start failed:\n{p.stdout}{p.stderr}")
    yield env
    if not was_up and os.environ.get("KDFLOW_SLURM_STOP", "") == "1":
        _slurm("stop", env)


@pytest.fixture(autouse=True)
def _delete_jobs_after_test(request):
    """Delete the OpenPBS jobs a test left behind (after each test that used the server)."""
    yield
    if "openpbs" in request.fixturenames:
        request.getfixturevalue("openpbs").delete_session_jobs()


# -- the real OpenPBS ------------------------------------------------------------------------

PBS_EXEC = Path("/opt/pbs")
PBS_USER = os.environ.get("KDFLOW_PBS_USER") or "kdtest"
PBS_VENV = Path(os.environ.get("KDFLOW_PBS_VENV") or "/opt/kdflow-test/venv")
# Sessions work here, not under pytest's tmp_path: that is root's, mode 700, and the test user
# (and its PBS jobs) must reach every directory a test hands them.
OPENPBS_WORK = Path(os.environ.get("KDFLOW_OPENPBS_WORK") or "/tmp/kdflow-openpbs")
KEEP_SESSIONS = 3  # the newest session directories are kept for inspection, like pytest's
# What the test user's snakemake needs of the repository: the session copies these, so that
# the code under test is the working tree's, whatever was installed before.
WORKFLOW_FILES = ("Snakefile", "rules", "scripts", "config", "envs", "profiles", "src",
                  "plugins/snakemake-executor-plugin-pbs/src", "pyproject.toml", "README.md",
                  "tests/cluster/workflows", "tests/hooks")  # fmt: skip
COUNTED = ("qsub", "qstat", "qdel")
PLAIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def parse_qstat_f(text: str) -> dict[str, dict[str, str]]:
    """`qstat -f` text as {job id: {attribute: value}}: attributes are `    name = value`;
    a long value goes on over lines that begin with a TAB (joined with nothing between).
    `Variable_List` is added split as `Variable_List.<NAME>`."""
    jobs: dict[str, dict[str, str]] = {}
    attrs: dict[str, str] = {}
    last = None
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            attrs = jobs.setdefault(line.split(":", 1)[1].strip(), {})
            last = None
        elif line.startswith("\t") and last is not None:
            attrs[last] += line[1:]
        elif line.startswith("    ") and " = " in line:
            last, _, value = line.lstrip().partition(" = ")  # a value may end in a space
            attrs[last] = value
        else:
            last = None
    for attrs in jobs.values():
        for item in re.split(r"(?<!\\),", attrs.get("Variable_List", "")):
            name, _, value = item.partition("=")
            if name:
                attrs[f"Variable_List.{name}"] = value.replace("\\,", ",")
    return jobs


def pbs_time(value: str | None) -> float | None:
    """A time as qstat -f prints it (`Mon Nov 30 13:29:32 2026`), in seconds since the epoch."""
    if not value:
        return None
    return time.mktime(time.strptime(value.strip(), "%a %b %d %H:%M:%S %Y"))


@dataclass
class OpenPBS:
    """The real OpenPBS server, its test user and this session's copy of the workflow."""

    user: str
    uid: int
    gid: int
    home: str
    venv: Path  # the session's venv: the code under test on top of the shared test venv
    session_dir: Path  # owned by the user: workflow copy, counters, work directories
    workflow: Path  # the session's copy of the repository's workflow and code
    server: str  # the server's name: job ids are `<n>.<server>`
    started_here: bool = False
    start_seconds: float = 0.0
    _names: itertools.count = field(default_factory=itertools.count, repr=False)

    @property
    def counter_dir(self) -> Path:
        return self.session_dir / "counted"

    @property
    def path(self) -> str:
        """The test user's PATH: counting wrappers, the venv, the PBS commands, the system."""
        return f"{self.counter_dir / 'bin'}:{self.venv / 'bin'}:{PBS_EXEC / 'bin'}:{PLAIN_PATH}"

    @property
    def env(self) -> dict[str, str]:
        """The whole environment of the test user's commands (nothing of root's leaks in)."""
        return {
            "HOME": self.home,
            "USER": self.user,
            "LOGNAME": self.user,
            "SHELL": "/bin/bash",
            "LANG": "C.UTF-8",
            "PATH": self.path,
        }

    @property
    def root_env(self) -> dict[str, str]:
        """Root's environment with the PBS commands (for qmgr and for looking on)."""
        return {**os.environ, "PATH": f"{PBS_EXEC / 'bin'}:{PBS_EXEC / 'sbin'}:{PLAIN_PATH}"}

    def workdir(self, name: str) -> Path:
        """A fresh directory owned by the test user, `<session>/work/<name>-<n>`."""
        directory = self.session_dir / "work" / f"{name}-{next(self._names)}"
        directory.mkdir(parents=True)
        os.chown(directory, self.uid, self.gid)
        return directory

    def command(self, *argv: str | Path, env: dict[str, str] | None = None) -> list[str]:
        """`argv` run as the test user with its own environment (plus `env`). setpriv execs
        the command in place (runuser would stay as its parent and turn a SIGINT into
        SIGTERM + SIGKILL): a signal to the process reaches the command itself."""
        variables = {**self.env, **(env or {})}
        return [
            "setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups", "--",
            "env", "-i", *(f"{k}={v}" for k, v in variables.items()), *map(str, argv),
        ]  # fmt: skip

    def run(
        self,
        *args: str | Path,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """Run a command (e.g. 'qsub', script) as the test user."""
        return subprocess.run(
            self.command(*args, env=env),
            cwd=cwd or self.session_dir,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def popen(self, *args: str | Path, cwd: Path, log: Path, env=None) -> subprocess.Popen:
        """Start a command as the test user in a session of its own (so that a SIGKILL of it
        never reaches anything else), output appended to `log`."""
        with open(log, "a") as out:
            process = subprocess.Popen(
                self.command(*args, env=env),
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return process

    def qmgr(self, directive: str) -> subprocess.CompletedProcess:
        """One qmgr directive, as root (the server's manager); fails the test if refused."""
        p = subprocess.run(["qmgr", "-c", directive], env=self.root_env, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        assert p.returncode == 0, f"qmgr -c {directive!r}: {p.stdout}{p.stderr}"
        return p

    def jobs(self, *ids: str, history: bool = False) -> dict[str, dict[str, str]]:
        """The server's own account of jobs (all, or `ids`), from text `qstat -f` asked by root:
        {job id: attributes}; finished ones too with `history`. `-F json` is not used: OpenPBS
        prints only the first of several jobs asked for by id in JSON."""
        argv = ["qstat", "-f", *(["-x"] if history else []), *ids]
        p = subprocess.run(argv, env=self.root_env, capture_output=True, text=True, timeout=60)
        if p.returncode not in (0, 35, 153):  # 35/153: one of the ids finished / unknown
            raise RuntimeError(f"{' '.join(argv)} exited with {p.returncode}: {p.stderr}")
        return parse_qstat_f(p.stdout)

    def jobs_of(self, workdir: Path, history: bool = False) -> dict[str, dict[str, str]]:
        """The jobs submitted from `workdir` (their PBS_O_WORKDIR)."""
        return {
            job_id: attrs
            for job_id, attrs in self.jobs(history=history).items()
            if attrs.get("Variable_List.PBS_O_WORKDIR") == str(workdir)
        }

    def calls(self, tool: str = "qstat") -> int:
        """How many times the user's commands called `tool` (qsub, qstat, qdel) through the
        counting wrappers this session; `qstat --version` (no server asked) is not counted."""
        return len(self.call_args(tool))

    def call_args(self, tool: str = "qstat") -> list[str]:
        """The argument lines of those calls, oldest first."""
        try:
            lines = (self.counter_dir / f"{tool}.calls").read_text().splitlines()
        except FileNotFoundError:
            return []
        return [line for line in lines if line.strip() != "--version"]

    def qstat_calls(self) -> list[tuple[str, str]]:
        """(arguments, what the server printed on stdout) of every qstat call through the
        wrapper this session, oldest first."""
        out = self.counter_dir / "qstat.out"
        return [
            (argv.read_text().strip(), argv.with_suffix(".stdout").read_text())
            for argv in sorted(out.glob("*.argv"), key=lambda p: int(p.name.split(".")[0]))
            if argv.with_suffix(".stdout").exists()
        ]

    def history(self, workdir: Path) -> dict[str, list[dict[str, str]]]:
        """Every job submitted from `workdir` as the server's history tells it (text
        `qstat -x -f`), grouped by job name, in the order they were queued; each job's
        attributes with its `id`."""
        by_name: dict[str, list[dict[str, str]]] = {}
        for job_id, job in self.jobs_of(workdir, history=True).items():
            by_name.setdefault(job["Job_Name"], []).append({"id": job_id, **job})
        for jobs in by_name.values():
            jobs.sort(key=lambda j: (pbs_time(j["qtime"]), int(j["id"].split(".")[0])))
        return by_name

    @staticmethod
    def overlapping(history: dict[str, list[dict[str, str]]]) -> list[str]:
        """Jobs of one name (in `history()`) whose lives overlapped: the later one was queued
        before the earlier one ended (obittime; mtime for one deleted before it ran). Whole
        seconds: a job queued in the second its predecessor ended does not count."""
        problems = []
        for name, jobs in history.items():
            for earlier, later in zip(jobs, jobs[1:], strict=False):
                if earlier["job_state"] != "F":
                    problems.append(f"{name}: {earlier['id']} still {earlier['job_state']} "
                                    f"when {later['id']} was queued")  # fmt: skip
                elif pbs_time(later["qtime"]) < pbs_time(earlier.get("obittime") or
                                                         earlier["mtime"]):  # fmt: skip
                    problems.append(f"{name}: {later['id']} queued at {later['qtime']}, before "
                                    f"{earlier['id']} ended")  # fmt: skip
        return problems

    parse = staticmethod(parse_qstat_f)
    seconds = staticmethod(pbs_time)

    def delete_session_jobs(self, timeout: float = 60) -> None:
        """qdel every job of this session (submitted from under its directory) that is alive,
        and wait until the server has finished them."""
        prefix = f"{self.session_dir}/"

        def alive() -> list[str]:
            return [
                job_id
                for job_id, attrs in self.jobs().items()
                if attrs.get("Variable_List.PBS_O_WORKDIR", "").startswith(prefix)
                and attrs.get("job_state") not in ("F", "X")
            ]

        ids = alive()
        if not ids:
            return
        self.run("qdel", "-W", "force", *ids)
        with contextlib.suppress(AssertionError):
            self.wait_for(lambda: not alive(), timeout, interval=0.5, what="deleted jobs")

    wait_for = staticmethod(wait_for)


def _openpbs_sh(cmd: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(OPENPBS_SH), cmd], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def _counting_wrappers(bin_dir: Path, counters: Path) -> None:
    """Tiny scripts in front of the real qsub/qstat/qdel: each appends its arguments as one
    line to `<counters>/<cmd>.calls`, then runs the real command. qstat's also keeps what the
    server printed, in `<counters>/qstat.out/<time>.<pid>.{argv,stdout}`."""
    bin_dir.mkdir(parents=True)
    (counters / "qstat.out").mkdir()
    for tool in COUNTED:
        wrapper = bin_dir / tool
        lines = ["#!/bin/sh", f"# counts the calls, then runs the real {tool}",
                 f'echo "$*" >>"{counters}/{tool}.calls"']  # fmt: skip
        if tool == "qstat":
            lines += [
                f'out="{counters}/qstat.out/$(date +%s%N).$$"',
                'printf "%s\\n" "$*" >"$out.argv"',
                f'{PBS_EXEC}/bin/qstat "$@" >"$out.stdout"',
                "rc=$?",
                'cat "$out.stdout"',
                "exit $rc",
            ]
        else:
            lines.append(f'exec {PBS_EXEC}/bin/{tool} "$@"')
        wrapper.write_text("\n".join(lines) + "\n")
        wrapper.chmod(0o755)


def _remove_old_sessions(keep: int) -> None:
    """Remove all but the newest `keep` session directories, never one whose session still
    runs (it holds the lock on its `.lock` file): sessions may run side by side."""
    sessions = sorted(OPENPBS_WORK.glob("session-*"), key=lambda p: p.stat().st_mtime)
    for old in sessions[: max(0, len(sessions) - keep)]:
        try:
            with open(old / ".lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(old, ignore_errors=True)
        except OSError:  # locked: that session still runs
            continue


def _session_venv(session: Path, workflow: Path) -> Path:
    """A venv of this session's own on top of the shared one (`openpbs.sh venv`, which holds
    the dependencies only): its site-packages points first at the session's copies of `src`
    and the plugin's `src`, then
    at the shared site-packages. Nothing shared is changed, so sessions side by side each test
    their own code. The jobs PBS starts run this venv's python (Snakemake's job command names
    it), whatever their PATH: they import kdflow and the plugin from the copy too."""
    venv = session / "venv"
    shared_venv = PBS_VENV.resolve()  # `openpbs.sh venv` may swap the link in a later session
    subprocess.run(["/usr/bin/python3", "-m", "venv", "--without-pip", str(venv)], check=True,
                   env={"PATH": PLAIN_PATH})  # fmt: skip
    purelib = "import sysconfig; print(sysconfig.get_path('purelib'))"
    shared, own = (
        subprocess.run(
            [str(python), "-c", purelib], capture_output=True, text=True, check=True
        ).stdout.strip()  # fmt: skip
        for python in (shared_venv / "bin/python", venv / "bin/python")
    )
    # .pth files are read in name order; addsitedir also reads the shared venv's own .pth files
    plugin = workflow / "plugins/snakemake-executor-plugin-pbs/src"
    Path(own, "00-kdflow-under-test.pth").write_text(f"{workflow / 'src'}\n{plugin}\n")
    # the conditions a test makes certain inside its jobs (tests/hooks/kdflow_test_hooks.py:
    # nothing, unless the job's directory has a hooks file)
    hooks = workflow / "tests/hooks"
    Path(own, "05-kdflow-test-hooks.pth").write_text(f"{hooks}\nimport kdflow_test_hooks\n")
    Path(own, "10-kdflow-test-venv.pth").write_text(f"import site; site.addsitedir({shared!r})\n")
    # the console scripts (snakemake, ruff, ... and kdflow's own), run by this venv's python
    shebang = f"#!{shared_venv / 'bin/python'}"
    for script in (shared_venv / "bin").iterdir():
        if script.is_file() and not script.name.startswith(("python", "activate", "pip")):
            text = script.read_text(errors="replace")
            if text.startswith(shebang + "\n"):
                _script(
                    venv / "bin" / script.name, text.replace(shebang, f"#!{venv}/bin/python", 1)
                )
    project = tomllib.loads((workflow / "pyproject.toml").read_text())["project"]
    for name, entry in project.get("scripts", {}).items():
        module, _, function = entry.partition(":")
        _script(venv / "bin" / name, f"#!{venv}/bin/python\nimport sys\nfrom {module} import "
                f"{function}\nsys.exit({function}())\n")  # fmt: skip
    return venv


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture(scope="session")
def openpbs() -> OpenPBS:
    if not (PBS_EXEC / "bin/qstat").exists():
        _unavailable("OpenPBS is not installed: run tests/cluster/openpbs.sh install (as root)")
    was_up = _openpbs_sh("status", timeout=60).returncode == 0
    t0 = time.monotonic()
    if os.geteuid() != 0:
        # the fixture makes the user's directories as root, and the server may need starting
        _unavailable("the OpenPBS tests need root (tests/cluster/openpbs.sh start)")
    p = _openpbs_sh("start")
    if p.returncode != 0:
        _unavailable(f"tests/cluster/openpbs.sh start failed:\n{p.stdout}{p.stderr}")
    started = time.monotonic() - t0
    version = subprocess.run([str(PBS_EXEC / "bin/qstat"), "--version"], capture_output=True,
                             text=True)  # fmt: skip
    # the real server's client at /opt/pbs/bin
    assert "pbs_version =" in version.stdout, version.stdout + version.stderr
    p = _openpbs_sh("venv", timeout=1800)
    if p.returncode != 0:
        _unavailable(f"tests/cluster/openpbs.sh venv failed:\n{p.stdout}{p.stderr}")
    user = pwd.getpwnam(PBS_USER)

    OPENPBS_WORK.mkdir(parents=True, exist_ok=True)
    OPENPBS_WORK.chmod(0o755)
    _remove_old_sessions(KEEP_SESSIONS - 1)
    session = Path(tempfile.mkdtemp(prefix="session-", dir=OPENPBS_WORK))
    lock = open(session / ".lock", "a")  # noqa: SIM115 (held for the whole session)
    fcntl.flock(lock, fcntl.LOCK_EX)
    workflow = session / "workflow"
    for name in WORKFLOW_FILES:
        source, target = REPO / name, workflow / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns(
                "__pycache__", "*.egg-info", ".snakemake"))  # fmt: skip
        else:
            shutil.copy2(source, target)
    venv = _session_venv(session, workflow)
    _counting_wrappers(session / "counted/bin", session / "counted")
    subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(session)], check=True)
    session.chmod(0o755)

    host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
    cluster = OpenPBS(
        user=user.pw_name,
        uid=user.pw_uid,
        gid=user.pw_gid,
        home=user.pw_dir,
        venv=venv,
        session_dir=session,
        workflow=workflow,
        server=host,
        started_here=not was_up,
        start_seconds=started,
    )
    # the user's commands find the plugin, the venv and the server
    p = cluster.run("snakemake", "--executor", "pbs", "--help")
    assert p.returncode == 0 and "--pbs-queue" in p.stdout, p.stdout[-2000:] + p.stderr[-2000:]
    yield cluster
    cluster.delete_session_jobs()
    lock.close()
    if not was_up and os.environ.get("KDFLOW_OPENPBS_STOP", "") == "1":
        _openpbs_sh("stop")
