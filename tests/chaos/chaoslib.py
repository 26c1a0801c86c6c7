"""Shared helpers of the chaos tests: projects driven by scripts/cron.sh, the scheduler's own
record of a workdir's jobs, registry checks and bit-for-bit comparison with clean runs."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from conftest import load_module

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
VENV = Path(sys.executable).parent.parent
SMALL_WORKFLOW = ROOT / "tests/cluster/workflows/Snakefile"


def e2e():
    """tests/cluster/test_e2e_pbs.py (SWEEP, ON_THIS_MACHINE, QueueSampler), loaded once."""
    return load_module("kdflow_e2e_pbs", ROOT / "tests/cluster/test_e2e_pbs.py")


# -- projects driven by scripts/cron.sh -------------------------------------------------------


def make_project(directory: Path, sweep: dict[str, Any]) -> Path:
    """A working directory that cron.sh can tick: its own scripts/cron.sh (the tick works in
    the directory above its script) and the sweep as config/experiments.yaml (so that the
    tick's `kdflow status` reads it); the workflow itself stays in the repository."""
    (directory / "scripts").mkdir(parents=True)
    (directory / "config").mkdir()
    shutil.copy2(ROOT / "scripts/cron.sh", directory / "scripts/cron.sh")
    (directory / "config/experiments.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    return directory


def cron_env(env: dict[str, str], *snakemake_args: str) -> dict[str, str]:
    """The environment of a cron tick that runs profiles/pbs with the test's arguments."""
    args = [
        "-s", str(ROOT / "Snakefile"),
        "--configfile", "config/experiments.yaml", "--replace-workflow-config",
        *snakemake_args,
    ]  # fmt: skip
    return {
        **env,
        "KDFLOW_VENV": str(VENV),
        "KDFLOW_PROFILE": str(ROOT / "profiles/pbs"),
        "KDFLOW_SNAKEMAKE_ARGS": " ".join(args),
        "SNAKEMAKE_PBS_QUEUE": "workq",
        "SNAKEMAKE_PBS_PROJECT": "ci",
    }


def tick(project: Path, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(project / "scripts/cron.sh"), "cron"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def controller_pid(project: Path) -> int | None:
    """The pid cron.sh started, while it is a live snakemake in `project`."""
    try:
        pid = int((project / ".kdflow/controller.pid").read_text())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except (OSError, ValueError):
        return None
    if b"snakemake" in cmdline and cwd == str(project) and alive(pid):
        return pid
    return None


def controllers(project: Path) -> list[int]:
    """Every snakemake controller running in `project` (not --unlock or -n ones)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            cwd = os.readlink(proc / "cwd")
        except OSError:
            continue
        if (
            cwd == str(project)
            and any(b"snakemake" in part for part in cmd[:3])
            and not {b"--unlock", b"-n"} & set(cmd)
            and alive(int(proc.name))
        ):
            pids.append(int(proc.name))
    return pids


def kill_controllers(project: Path) -> None:
    for pid in controllers(project):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def wait_until(predicate, timeout: float, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- what the scheduler saw -------------------------------------------------------------------


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def call_lines(cluster, tool: str, start: int = 0) -> list[str]:
    """The lines of <state>/<tool>.calls after the first `start` ones."""
    try:
        text = (cluster.state_dir / f"{tool}.calls").read_text()
    except FileNotFoundError:
        return []
    return text.splitlines()[start:]


def workdir_job_ids(cluster, workdir: Path) -> list[str]:
    """Ids of every job qsub'ed from `workdir` (the shim's record of what qsub knew)."""
    ids = []
    for path in (cluster.state_dir / "jobs").glob("*.json"):
        stem = path.name[: -len(".json")]
        if not stem.isdigit():
            continue
        try:
            meta = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if meta.get("workdir") == str(workdir):
            ids.append(f"{stem}.pbs-ci")
    return sorted(ids, key=lambda i: int(i.split(".")[0]))


def _ctime(text: str | None) -> float | None:
    if not text:
        return None
    return time.mktime(time.strptime(text, "%a %b %d %H:%M:%S %Y"))


def job_history(cluster, workdir: Path) -> dict[str, dict[str, Any]]:
    """Every job of `workdir` as the scheduler tells it now (qstat -x): name, state, exit
    status, queued/ended times."""
    ids = workdir_job_ids(cluster, workdir)
    if not ids:
        return {}
    p = cluster.run("qstat", "-x", "-f", "-F", "json", *ids)
    jobs = json.loads(p.stdout or "{}").get("Jobs", {})
    return {
        job_id: {
            "name": j.get("Job_Name"),
            "state": j.get("job_state"),
            "exit": j.get("Exit_status"),
            "queued": _ctime(j.get("qtime")),
            "ended": _ctime(j.get("obittime")),
        }
        for job_id, j in jobs.items()
    }


def overlapping_jobs(history: dict[str, dict[str, Any]]) -> list[str]:
    """Pairs of jobs of one name whose lives (queued .. ended) overlapped: two live jobs for
    one target. Times are whole seconds: a job queued in the second its predecessor ended
    does not count."""
    by_name: dict[str, list[tuple[float, float, str]]] = {}
    for job_id, job in history.items():
        ended = job["ended"] if job["ended"] is not None else float("inf")
        by_name.setdefault(job["name"], []).append((job["queued"] or 0, ended, job_id))
    problems = []
    for name, lives in by_name.items():
        lives.sort()
        for (_, end_a, a), (start_b, _, b) in zip(lives, lives[1:], strict=False):
            if start_b < end_a:
                problems.append(f"{name}: {a} and {b} were alive at the same time")
    return problems


def successes_by_name(history: dict[str, dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for job in history.values():
        out[job["name"]] = out.get(job["name"], 0) + (job["exit"] == 0)
    return out


# -- the registry -----------------------------------------------------------------------------


def registry(workdir: Path) -> list[dict[str, Any]]:
    return [
        json.loads(p.read_text()) for p in sorted((workdir / ".kdflow/pbs/targets").glob("*.json"))
    ]


def registry_problems(workdir: Path, allowed=("success", "killed", "lost")) -> list[str]:
    """What is wrong with a finished sweep's registry: targets not done or failed, not exactly
    one successful submission, outcomes outside `allowed`, submissions that overlapped."""
    problems = []
    records = registry(workdir)
    if not records:
        return ["no registry records"]
    for r in records:
        target = f"{r['rule']} {r['outputs'][0] if r['outputs'] else r['name']}"
        subs = r["submissions"]
        if not r["done"] or r["failed"]:
            problems.append(f"{target}: done={r['done']} failed={r['failed']!r}")
        successes = [s for s in subs if s["outcome"] == "success"]
        if len(successes) != 1:
            problems.append(f"{target}: {len(successes)} successful submissions")
        odd = [f"{s['job_id']}: {s['outcome']} ({s['reason']})" for s in subs
               if s["outcome"] not in allowed]  # fmt: skip
        if odd:
            problems.append(f"{target}: unexpected outcomes {odd}")
        for a, b in zip(subs, subs[1:], strict=False):
            if a["ended_at"] is None or a["ended_at"] > b["submitted_at"]:
                problems.append(f"{target}: {b['job_id']} submitted before {a['job_id']} ended")
    return problems


def outcomes(workdir: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in registry(workdir):
        for s in r["submissions"]:
            counts[str(s["outcome"])] = counts.get(str(s["outcome"]), 0) + 1
    return counts


# -- results ----------------------------------------------------------------------------------


def _history_rows(directory: Path) -> list[dict[str, str]]:
    with open(directory / "history.csv") as f:
        return [
            {k: v for k, v in row.items() if k not in ("epoch_seconds", "images_per_s")}
            for row in csv.DictReader(f)
        ]


def differences(got: Path, want: Path) -> list[str]:
    """How experiment directory `got` differs from `want`: final metrics, the weights in
    best.pth and checkpoint.pth (bit for bit), and the history (timings aside)."""
    import torch

    out = []
    if not (got / "completed").exists():
        return [f"{got}: not completed"]
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (got, want))
    for key in sorted(set(a) | set(b)):
        if key != "train_seconds" and a.get(key) != b.get(key):
            out.append(f"{got}: metrics.json {key}: {a.get(key)!r} != {b.get(key)!r}")
    for name in ("best.pth", "checkpoint.pth"):
        x = torch.load(got / name, map_location="cpu", weights_only=False)["model"]
        y = torch.load(want / name, map_location="cpu", weights_only=False)["model"]
        if x.keys() != y.keys() or not all(torch.equal(x[k], y[k]) for k in y):
            out.append(f"{got}: {name} weights differ")
    if _history_rows(got) != _history_rows(want):
        out.append(f"{got}: history.csv differs")
    return out


def experiment_dirs(workdir: Path) -> list[str]:
    return sorted(
        str(p.parent.relative_to(workdir)) for p in (workdir / "results").glob("**/completed")
    )


# Every second: the live jobs submitted from a directory, and any name seen twice. A context
# manager: `with Sampler(env, workdir) as sampler:` samples until the block ends.
Sampler = e2e().QueueSampler
