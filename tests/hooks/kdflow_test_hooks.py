"""Conditions a test makes certain inside processes it does not start itself (PBS and Slurm
jobs, the trainers they run), instead of hoping that the machine is slow or fast enough.

Loaded at every start of a Python interpreter that the tests' jobs use: the OpenPBS session
venv names it in a `.pth` file (tests/cluster/conftest.py); Slurm jobs, which inherit the
submitter's environment, get `tests/hooks` on PYTHONPATH, whose sitecustomize.py imports it.
It does nothing unless a hooks file says so: `$KDFLOW_TEST_HOOKS`, else
`.kdflow-test-hooks.json` in the working directory (a PBS job gets no environment from its
submitter, and starts in the directory it was submitted from). The file:

    {"hold": {"results/digits/pure/resnet20/seed0": 1, ...}, "pace": 2.0}

`hold`: experiment directories (relative to the hooks file's directory) and an epoch. The
first process that records one of them in its status.json as in progress at that epoch or
later (the trainer writes status.json at its start and after every epoch) then holds: it
blocks until it is killed. Before it blocks it writes the marker
`.kdflow-test-hooks/held/<directory with / as __>` beside the hooks file, holding its job id
(PBS_JOBID or SLURM_JOB_ID, else "pid <pid>"); a later process finds the marker and trains on.
A walltime kill of a job that has trained (it cannot finish inside any walltime), or a qdel of
a job that is training (it is certainly still training when the test reads the marker), is
then made by construction, on a machine of any speed.

`pace`: seconds. Every process paces its status.json writes of a run in progress (one at its
start, one after every epoch) at least that far apart, sleeping after a write: a job is then
training for at least (epochs - 1) x pace seconds, however fast the machine, so that a test
can kill it while it trains.

Nothing here changes what a process computes: a held process only stops sooner or later, and
its results are those of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import time

HOOKS_FILE = ".kdflow-test-hooks.json"
MARKERS = ".kdflow-test-hooks/held"


def marker_name(directory: str) -> str:
    return directory.strip("/").replace("/", "__")


def _config() -> tuple[str, dict] | None:
    path = os.environ.get("KDFLOW_TEST_HOOKS") or os.path.join(os.getcwd(), HOOKS_FILE)
    try:
        with open(path) as f:
            return os.path.dirname(os.path.abspath(path)), json.load(f)
    except (OSError, ValueError):
        return None


def _holder() -> str:
    return os.environ.get("PBS_JOBID") or os.environ.get("SLURM_JOB_ID") or f"pid {os.getpid()}"


def _install(root: str, holds: dict[str, int], pace: float) -> None:
    real_replace = os.replace
    wanted = {os.path.normpath(os.path.join(root, d)): (d, int(e)) for d, e in holds.items()}
    last_write = [0.0]

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if os.path.basename(dst) != "status.json":
            return
        try:
            with open(dst) as f:
                status = json.load(f)
        except (OSError, ValueError):
            return
        if status.get("status") != "in_progress":
            return
        if pace > 0:
            time.sleep(max(0.0, last_write[0] + pace - time.monotonic()))
            last_write[0] = time.monotonic()
        found = wanted.get(os.path.dirname(os.path.abspath(dst)))
        if found is None:
            return
        directory, epoch = found
        if (status.get("epoch") or 0) < epoch:
            return
        markers = os.path.join(root, MARKERS)
        os.makedirs(markers, exist_ok=True)
        try:
            fd = os.open(os.path.join(markers, marker_name(directory)),
                         os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)  # fmt: skip
        except FileExistsError:
            return  # held once already: this one trains on
        with os.fdopen(fd, "w") as f:
            f.write(_holder() + "\n")
        while True:  # until the walltime, a qdel or the test's clean-up kills this process
            time.sleep(3600)

    os.replace = replace


def install() -> None:
    found = _config()
    if found is None:
        return
    root, config = found
    if config.get("hold") or config.get("pace"):
        _install(root, config.get("hold") or {}, float(config.get("pace") or 0))


def held_by(root, directory: str) -> str | None:
    """The job (or `pid N`) that holds `directory` under hooks file root `root`, or None."""
    try:
        with open(os.path.join(root, MARKERS, marker_name(directory))) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


install()
