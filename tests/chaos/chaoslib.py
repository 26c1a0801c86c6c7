"""Shared helpers of the chaos tests: projects driven by scripts/cron.sh as the OpenPBS test
user, the server's own record of a workdir's jobs, registry checks and bit-for-bit comparison
with clean runs."""

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
# the fault wrappers (qstat, qsub) put first on the PATH of the executor under test
FAULT_BIN = HERE / "bin"
# where the server keeps its accounting records (PBS_HOME/server_priv/accounting/<yyyymmdd>)
PBS_HOME = Path(os.environ.get("PBS_HOME") or "/var/spool/pbs")


def e2e():
    """tests/cluster/test_e2e_pbs.py (SWEEP, ON_OPENPBS, SITE, OpenPBSSampler), loaded once."""
    return load_module("kdflow_e2e_pbs", ROOT / "tests/cluster/test_e2e_pbs.py")


def give(openpbs, *paths: Path) -> None:
    """Hand files and directories (recursively) that this root process wrote to the test user."""
    subprocess.run(["chown", "-R", f"{openpbs.uid}:{openpbs.gid}", *map(str, paths)], check=True)


def user_snakemake(openpbs, workdir: Path, *args: str | Path, snakefile: Path | None = None):
    """`snakemake` of the session's workflow copy (or `snakefile`), in `workdir`, as the test
    user would type it: the argv for `openpbs.run` / `openpbs.popen`."""
    return ["python", "-m", "snakemake", "-s", snakefile or openpbs.workflow / "Snakefile",
            "-d", workdir, *args]  # fmt: skip


# -- projects driven by scripts/cron.sh -------------------------------------------------------


def make_project(openpbs, name: str, sweep: dict[str, Any]) -> Path:
    """A working directory of the test user that cron.sh can tick: its own scripts/cron.sh (the
    tick works in the directory above its script) and the sweep as config/experiments.yaml (so
    that the tick's `kdflow status` reads it); the workflow itself stays in the session's copy
    of the repository."""
    directory = openpbs.workdir(name)
    (directory / "scripts").mkdir()
    (directory / "config").mkdir()
    shutil.copy2(openpbs.workflow / "scripts/cron.sh", directory / "scripts/cron.sh")
    (directory / "config/experiments.yaml").write_text(yaml.safe_dump(sweep, sort_keys=False))
    give(openpbs, directory)
    return directory


def cron_env(openpbs, *snakemake_args: str, site: dict[str, str]) -> dict[str, str]:
    """What the test user exports for a cron tick that runs profiles/pbs with the test's
    arguments (added to the user's own environment by `openpbs.run`)."""
    args = [
        "-s", str(openpbs.workflow / "Snakefile"),
        "--configfile", "config/experiments.yaml", "--replace-workflow-config",
        *snakemake_args,
    ]  # fmt: skip
    return {
        "KDFLOW_VENV": str(openpbs.venv),
        "KDFLOW_PROFILE": str(openpbs.workflow / "profiles/pbs"),
        "KDFLOW_SNAKEMAKE_ARGS": " ".join(args),
        # the tick returns as soon as it has started the controller, without watching it
        # get under way: the kills may land anywhere in its start (DAG, reconcile) as before
        "KDFLOW_START_WAIT": "0",
        **site,
    }


def tick(openpbs, project: Path, env: dict[str, str], timeout: float = 180):
    """One `scripts/cron.sh cron`, run as the test user in `project`."""
    return openpbs.run("bash", project / "scripts/cron.sh", "cron", env=env, cwd=project,
                       timeout=timeout)  # fmt: skip


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


def qsub_log(fault_dir: Path) -> list[dict[str, Any]]:
    """The executor's qsub calls as tests/chaos/bin/qsub logged them: number, exit status, the
    job id the server gave (None if none) and the directory it was called in."""
    path, calls = fault_dir / "qsub.log", []
    for line in path.read_text().splitlines() if path.exists() else []:
        n, rc, job_id, cwd = line.split(" ", 3)
        calls.append({"n": int(n), "rc": int(rc), "job_id": None if job_id == "-" else job_id,
                      "cwd": cwd})  # fmt: skip
    return calls


def _accounting_ends(job_ids: set[str]) -> dict[str, dict[str, str]]:
    """The server's accounting records (`E`: the job ended; `D`: deleted) of `job_ids`, as
    {job id: {key: value}}: they are written whatever `job_history_enable` says."""
    records: dict[str, dict[str, str]] = {}
    for path in sorted((PBS_HOME / "server_priv/accounting").glob("*")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(";", 3)
            if len(parts) < 4 or parts[2] not in job_ids or parts[1] not in ("E", "D"):
                continue
            fields = dict(item.partition("=")[::2] for item in parts[3].split())
            fields["record"] = parts[1]
            if parts[1] == "D":
                fields.setdefault("end", str(int(time.mktime(
                    time.strptime(parts[0], "%m/%d/%Y %H:%M:%S")))))  # fmt: skip
            records.setdefault(parts[2], {}).update(fields)
    return records


def job_history(openpbs, workdir: Path, job_ids=()) -> dict[str, dict[str, Any]]:
    """Every job of `workdir` as the server tells it now: name, state, exit status, queued,
    started and ended times (seconds), from its history (`qstat -x -f`, asked by root, jobs
    whose PBS_O_WORKDIR is `workdir`); jobs of `job_ids` it no longer knows (history off)
    from its accounting records, the `source` saying which."""
    out = {}
    for job_id, j in openpbs.jobs_of(workdir, history=True).items():
        ended = j.get("obittime") or (j.get("mtime") if j.get("job_state") == "F" else None)
        out[job_id] = {
            "name": j.get("Job_Name"),
            "state": j.get("job_state"),
            "exit": int(j["Exit_status"]) if "Exit_status" in j else None,
            "queued": openpbs.seconds(j.get("qtime")),
            "started": openpbs.seconds(j.get("stime")),
            "ended": openpbs.seconds(ended),
            "source": "qstat -x -f",
        }
    missing = set(job_ids) - set(out)
    for job_id, r in _accounting_ends(missing).items():
        out[job_id] = {
            "name": r.get("jobname"),
            "state": "F",
            "exit": int(r["Exit_status"]) if "Exit_status" in r else None,
            "queued": float(r["qtime"]) if "qtime" in r else None,
            "started": float(r["start"]) if "start" in r else None,
            "ended": float(r["end"]) if "end" in r else None,
            "source": "accounting",
        }
    for job_id in missing - set(out):
        out[job_id] = {"name": None, "state": "?", "exit": None, "queued": None,
                       "started": None, "ended": None, "source": "unknown"}  # fmt: skip
    return out


def overlapping_jobs(history: dict[str, dict[str, Any]]) -> list[str]:
    """Jobs of one name (and one workdir: `history` is one workdir's) that were alive at the
    same time: one queued before the other ended (so that, a fortiori, their run windows,
    stime..obittime, must not overlap either). Times are whole seconds: a job queued in the
    second its predecessor ended does not count. A job the server knows nothing of is a
    problem too."""
    by_name: dict[str, list[tuple[float, float, float | None, str]]] = {}
    problems = []
    for job_id, job in history.items():
        if job["name"] is None:
            problems.append(f"{job_id}: the server has no record of it")
            continue
        ended = job["ended"] if job["ended"] is not None else float("inf")
        by_name.setdefault(job["name"], []).append(
            (job["queued"] or 0, ended, job["started"], job_id)
        )
    for name, lives in by_name.items():
        lives.sort(key=lambda life: (life[0], int(life[3].split(".")[0])))
        for (_, end_a, _, a), (queued_b, _, start_b, b) in zip(lives, lives[1:], strict=False):
            if start_b is not None and start_b < end_a:
                problems.append(f"{name}: {a} and {b} ran at the same time")
            elif queued_b < end_a:
                problems.append(f"{name}: {b} was queued while {a} was still alive")
    return problems


def successes_by_name(history: dict[str, dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for job in history.values():
        out[job["name"]] = out.get(job["name"], 0) + (job["exit"] == 0)
    return out


# -- the registry -----------------------------------------------------------------------------


def registry(workdir: Path) -> list[dict[str, Any]]:
    """The registry's target records: kdflow's (.kdflow/pbs, set by profiles/pbs), or those of
    a test workflow run with the executor's defaults (.snakemake-pbs)."""
    kdflow = workdir / ".kdflow/pbs/targets"
    targets = kdflow if kdflow.is_dir() else workdir / ".snakemake-pbs/targets"
    return [json.loads(p.read_text()) for p in sorted(targets.glob("*.json"))]


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
        last = r["submissions"][-1]["outcome"] if r["submissions"] else None
        if last != "success" or r["failed"]:
            problems.append(f"{target}: last outcome {last!r}, failed={r['failed']!r}")
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


# Every second: the live jobs submitted from a directory (text `qstat -f` asked by root), and
# any name seen twice. A context manager: `with Sampler(openpbs, workdir) as sampler:` samples
# until the block ends.
Sampler = e2e().OpenPBSSampler


# -- epochs: what was recorded, what a resume starts from --------------------------------------


def lost_epochs(directory: Path) -> int:
    """Epochs that status.json records as trained but that no loadable checkpoint holds: what
    a resume would train again (read only: nothing is moved, unlike load_checkpoint)."""
    from kdflow.checkpoint import DamagedFile, load_verified, previous_path

    try:
        recorded = int(json.loads((directory / "status.json").read_text()).get("epoch") or 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0  # no status yet (or a damaged one): nothing is recorded as trained
    resumable = 0
    for path in (directory / "checkpoint.pth", previous_path(directory / "checkpoint.pth")):
        try:
            resumable = int(load_verified(path)["epoch"]) + 1
            break
        except (FileNotFoundError, DamagedFile, KeyError):
            continue
    return max(0, recorded - resumable)
