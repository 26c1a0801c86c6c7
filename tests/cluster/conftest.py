"""Fixtures for tests against the real single-node Slurm with PBS Pro shims in front.

`pbs_cluster` (session) starts Slurm with tests/cluster/slurm.sh and yields a PBSCluster:
`env` for subprocesses (tests/cluster/pbs first on PATH, a fresh PBS_SHIM_STATE), `run()` to
call the shims, `calls("qstat")` to read the call counters, `wait_for()`. Where Slurm cannot
run (not root, not installed) the tests are skipped, except under CI=true, where they fail.
After every test that used the cluster, the jobs it left (submitted through the shims with this
session's state dir) are cancelled. Slurm stays up after the session (KDFLOW_SLURM_STOP=1: stop
it when this session started it).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
PBS_BIN = HERE / "pbs"
SLURM_SH = HERE / "slurm.sh"
USER = pwd.getpwuid(os.getuid()).pw_name


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cluster: needs the single-node Slurm with PBS shims (tests/cluster)"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@dataclass
class PBSCluster:
    env: dict[str, str]
    state_dir: Path
    run_dir: Path
    bin_dir: Path = PBS_BIN
    started_here: bool = False
    start_seconds: float = 0.0
    _cpus: int | None = field(default=None, repr=False)

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """Run a command (e.g. 'qstat', '-fx', id) with the cluster's environment."""
        e = dict(self.env)
        if env:
            e.update(env)
        return subprocess.run(
            list(args),
            env=e,
            cwd=cwd,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def calls(self, tool: str = "qstat") -> int:
        """How many times `tool` (qstat, qsub, qdel) ran with this state dir."""
        try:
            return (self.state_dir / f"{tool}.calls").read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def cpus(self) -> int:
        if self._cpus is None:
            p = self.run("sinfo", "-h", "-n", "localhost", "-o", "%c")
            self._cpus = int(p.stdout.split()[0])
        return self._cpus

    @staticmethod
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
def pbs_cluster(tmp_path_factory) -> PBSCluster:
    env = dict(os.environ)
    run_dir = Path(env.get("KDFLOW_SLURM_RUN") or "/tmp/kdflow-slurm")
    was_up = _slurm("status", env).returncode == 0
    if not was_up:
        if os.geteuid() != 0:
            _unavailable("starting the test Slurm needs root (tests/cluster/slurm.sh start)")
        if not (Path("/usr/sbin/slurmctld").exists() and shutil.which("sbatch")):
            _unavailable("Slurm is not installed: run tests/cluster/slurm.sh install (as root)")
    t0 = time.monotonic()
    p = _slurm("start", env)
    if p.returncode != 0:
        _unavailable(f"tests/cluster/slurm.sh start failed:\n{p.stdout}{p.stderr}")
    state = tmp_path_factory.mktemp("pbs-shim-state")
    env["PATH"] = f"{PBS_BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PBS_SHIM_STATE"] = str(state)
    env["KDFLOW_SLURM_RUN"] = str(run_dir)
    for knob in [k for k in env if k.startswith("PBS_SHIM_") and k != "PBS_SHIM_STATE"]:
        del env[knob]  # a knob left in the caller's environment would change every test
    cluster = PBSCluster(
        env=env,
        state_dir=state,
        run_dir=run_dir,
        started_here=not was_up,
        start_seconds=time.monotonic() - t0,
    )
    yield cluster
    _cancel_all(cluster)
    if not was_up and os.environ.get("KDFLOW_SLURM_STOP", "") == "1":
        _slurm("stop", env)


def _session_jobs(cluster: PBSCluster) -> list[str]:
    """Slurm ids of this session's jobs that are not over: those the qsub shim recorded in
    this session's state dir. (Not every job of the user: other test sessions may share
    the machine's Slurm.)"""
    jobs_dir = cluster.state_dir / "jobs"
    seqs = {p.name.split(".")[0] for p in jobs_dir.glob("*.json") if p.name.split(".")[0].isdigit()}
    tokens = {p.name[len("pending-") : -len(".json")] for p in jobs_dir.glob("pending-*.json")}
    p = subprocess.run(
        ["squeue", "-h", "-u", USER, "-t", "PENDING,RUNNING,SUSPENDED,COMPLETING", "-o", "%i %k"],
        env=cluster.env,
        capture_output=True,
        text=True,
    )
    ids = []
    for line in p.stdout.splitlines():
        jid, _, comment = line.partition(" ")
        if jid in seqs or comment.strip().removeprefix("pbsshim:") in tokens:
            ids.append(jid)
    return ids


def _cancel_all(cluster: PBSCluster, timeout: float = 30) -> None:
    ids = _session_jobs(cluster)
    if not ids:
        return
    subprocess.run(["scancel", *ids], env=cluster.env, capture_output=True)
    with contextlib.suppress(AssertionError):
        cluster.wait_for(
            lambda: not _session_jobs(cluster), timeout, interval=0.3, what="cancelled jobs"
        )


@pytest.fixture(autouse=True)
def _cancel_jobs_after_test(request):
    """Cancel the jobs a test left behind (after each test that used the cluster)."""
    yield
    if "pbs_cluster" in request.fixturenames:
        _cancel_all(request.getfixturevalue("pbs_cluster"))
