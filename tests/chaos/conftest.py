"""Chaos and load tests: counts, the figures every test reports, and the real scheduler.

Counts come from here and nowhere else: `KDFLOW_CHAOS=full` (what `make chaos` sets) runs the
full counts, anything else the small ones that `make test` runs.

Every test asks for the `chaos` fixture and sets its figures on it (kills survived, faults
injected, bad inputs tried, duplicate jobs seen, results differing from clean runs); one JSON
line per test is appended to `KDFLOW_CHAOS_REPORT` (default: `chaos-report.jsonl` in pytest's
base temp dir), also when the test fails. `tests/chaos/summary.py` prints the table from it.

`openpbs` is tests/cluster's session fixture (the real single-node OpenPBS, jobs submitted by
its ordinary test user), loaded from there; every test that uses it first waits until the
server answers, and the jobs it left alive are deleted after it. `server_setting` changes a
server attribute with qmgr for one scenario and restores it afterwards, even on failure.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
CLUSTER_DIR = ROOT / "tests" / "cluster"

FULL = os.environ.get("KDFLOW_CHAOS", "").strip().lower() == "full"
MODE = "full" if FULL else "small"


@dataclass(frozen=True)
class Counts:
    """How much chaos each test inflicts (small: `make test`; full: `make chaos`)."""

    controller_kills: int  # SIGKILLs of the controller during a sweep through profiles/pbs
    pbs_job_kills: int  # qdel / qsig -s KILL of real training jobs during that sweep
    job_kills: int  # kills of training processes, SIGKILL/SIGTERM and inside writes
    fault_rounds: int  # times each scheduler fault scenario is run
    corruptions: int  # corrupted-file variants per kind of file


COUNTS = (
    Counts(controller_kills=50, pbs_job_kills=10, job_kills=100, fault_rounds=2, corruptions=6)
    if FULL
    else Counts(controller_kills=10, pbs_job_kills=2, job_kills=20, fault_rounds=1, corruptions=3)
)


def load_module(name: str, path: Path):
    """Import a module from a file under a private name (tests/ has no packages)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


cluster_conftest = load_module("kdflow_cluster_conftest", CLUSTER_DIR / "conftest.py")
OpenPBS = cluster_conftest.OpenPBS
# tests/cluster's session fixture, under another name: `openpbs` below waits for the server
_openpbs_session = cluster_conftest.openpbs


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "openpbs: needs the real single-node OpenPBS (tests/cluster/openpbs.sh)"
    )


def pytest_collection_modifyitems(config, items):
    for item in items:
        in_chaos = HERE in Path(str(item.fspath)).resolve().parents
        if in_chaos and "openpbs" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.openpbs)


def server_answers(openpbs: OpenPBS) -> bool:
    """The server answers a status request and its node takes jobs."""
    try:
        server = subprocess.run(["qstat", "-B"], env=openpbs.root_env, capture_output=True,
                                text=True, timeout=20)  # fmt: skip
        node = subprocess.run(["pbsnodes", "-a"], env=openpbs.root_env, capture_output=True,
                              text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = [line.split("=", 1)[1].strip() for line in node.stdout.splitlines()
              if line.strip().startswith("state =")]  # fmt: skip
    return (
        server.returncode == 0
        and node.returncode == 0
        and bool(states)
        and not any(bad in s for s in states for bad in ("down", "offline", "unknown", "stale"))
    )


def wait_for_server(openpbs: OpenPBS, timeout: float = 180) -> None:
    """The server may be restarted by someone else: wait until it takes jobs again."""
    deadline = time.monotonic() + timeout
    while not server_answers(openpbs):
        if time.monotonic() > deadline:
            raise AssertionError(f"OpenPBS did not answer within {timeout:.0f}s (qstat -B)")
        time.sleep(2)


@pytest.fixture
def openpbs(_openpbs_session):
    """tests/cluster's OpenPBS, once the server answers."""
    wait_for_server(_openpbs_session)
    return _openpbs_session


@pytest.fixture(autouse=True)
def _delete_jobs_after_test(request):
    """Delete the jobs a test left alive (after each test that used the server)."""
    yield
    if "openpbs" in request.fixturenames:
        request.getfixturevalue("_openpbs_session").delete_session_jobs()


def others_jobs(openpbs: OpenPBS) -> list[str]:
    """Live jobs on the server that this session did not submit (another test session's)."""
    prefix = f"{openpbs.session_dir}/"
    return [
        job_id
        for job_id, attrs in openpbs.jobs().items()
        if attrs.get("job_state") not in ("F", "X")
        and not attrs.get("Variable_List.PBS_O_WORKDIR", "").startswith(prefix)
    ]


@contextlib.contextmanager
def server_setting(openpbs: OpenPBS, directive: str, restore: str, wait: float = 300):
    """`qmgr -c directive` as root for the block, `qmgr -c restore` after it, even when the
    block fails. The setting holds for every job on the server: it waits (up to `wait`
    seconds) until no other session has a live job there, so as not to change the rules under
    another test run sharing the server."""
    deadline = time.monotonic() + wait
    while others_jobs(openpbs) and time.monotonic() < deadline:
        time.sleep(2)
    openpbs.qmgr(directive)
    try:
        yield
    finally:
        openpbs.qmgr(restore)


# -- the report -------------------------------------------------------------------------------


@dataclass
class Figures:
    """What one test did to the system and what it found; one JSON line of the report."""

    test: str
    mode: str = MODE
    seed: int = 0
    kills: int = 0  # kills survived (controller, job and process kills)
    faults: int = 0  # faults injected (scheduler, storage, corrupted files)
    bad_inputs: int = 0  # malformed configs and command lines tried
    duplicates: int = 0  # moments two live jobs trained one experiment
    differing: int = 0  # results that differ from a clean run
    # epochs recorded as trained that a resume would train again; None: not measured
    lost_epochs: int | None = None
    load: list = field(default_factory=list)  # {"measure", "result", "goal"} of load tests
    detail: dict = field(default_factory=dict)
    outcome: str = "unknown"
    seconds: float = 0.0
    finished_at: str = ""


def report_path(base_temp: Path) -> Path:
    return Path(os.environ.get("KDFLOW_CHAOS_REPORT") or base_temp / "chaos-report.jsonl")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        item._chaos_outcome = report.outcome  # passed / failed / skipped


@pytest.fixture
def chaos(request, tmp_path_factory):
    """Figures of this test; written to the report when it ends (whatever the outcome).

    `chaos.rng` is seeded from KDFLOW_CHAOS_SEED when set (to replay a run), else at random;
    the seed is in the report and in failure messages.
    """
    # not the global `random`: in-process training seeds it
    seed = int(os.environ.get("KDFLOW_CHAOS_SEED") or random.SystemRandom().randrange(2**31))
    figures = Figures(test=request.node.nodeid.split("tests/chaos/", 1)[-1], seed=seed)
    figures.rng = random.Random(seed)  # type: ignore[attr-defined]
    started = time.monotonic()
    yield figures
    figures.seconds = round(time.monotonic() - started, 1)
    figures.outcome = getattr(request.node, "_chaos_outcome", "failed")
    figures.finished_at = time.strftime("%Y-%m-%dT%H:%M:%S")
    path = report_path(tmp_path_factory.getbasetemp())
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(asdict(figures), sort_keys=True) + "\n")
