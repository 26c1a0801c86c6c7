"""Submission throughput of the PBS executor against a plain qsub loop and cluster-generic,
side by side on the real single-node OpenPBS of the cluster tests.

    flock /tmp/openpbs.lock .venv/bin/python bench/pbs_throughput.py [--counts 200 1000]
        [--done-count 200] [--plugin-src DIR] [--pbs-array-jobs all]

As root (like the cluster tests; the jobs are the ordinary test user's, from a venv of this
run's own: the working tree's kdflow and plugin on top of the shared test venv, plus
snakemake-executor-plugin-cluster-generic installed into it from the package index, never
into the project's dependencies). Hold /tmp/openpbs.lock: one user of the server at a time.

Each method submits N trivial jobs of one rule (`touch` an output), `--jobs N`:

- `qsub loop`: a shell loop of N plain `qsub` calls, the floor;
- `cluster-generic`: snakemake-executor-plugin-cluster-generic, `--cluster-generic-submit-cmd
  "qsub ..."` with the same resources;
- `pbs`: this plugin (`--executor pbs`), and `pbs arrays` (`--pbs-array-jobs all`), a column
  of its own when the installed plugin has that setting.

Columns: seconds from start to all N submitted (the last `qsub` to return whose jobs make N,
from a wrapper in front of the real qsub), submissions per second, and, at `--done-count`,
seconds to all done (Snakemake's exit; the last output for the loop), each with its ratio to
cluster-generic. At N above `--done-count` the server's scheduling is switched off first, so
the jobs stay queued and only the submission is measured (a 2-core machine runs 1,000 jobs'
Snakemakes for many minutes); the jobs are then deleted and scheduling switched back on. The
printed table says which.

Where a submission's time went: cProfile around the executor's run_jobs (Snakemake hands it
100 jobs per call), as the test user.

On the real OpenPBS, scheduling off (nothing running beside it), 100 jobs:

    before (3 atomic registry writes a submission: the job script, the intent, the job id,
    each with a file fsync and a directory fsync; one qsub after the other)   18.4 ms a job
        qsub (fork, exec, the server's answer): 13.9 ms; registry writes 2.8 ms, of which
        6 fsyncs 1.9 ms; format_job_exec, printing, Snakemake's incomplete mark ~1 ms
    after, as first built (a round's intents fsynced together by 8 threads, one directory
    fsync; job id, withdrawn intents and job script atomic without fsync; 4 qsubs at once)
                                                                                9.9 ms a job
        qsubs 7.9 ms a job (4 at once); intents 0.45 ms a job; the rest as before
    as merged: 4 qsubs at once gave way to job arrays (one qsub for a rule's ready jobs,
    their intents fsynced together); a plain job's intent is fsynced alone before its qsub,
    its job id and script after it are not (2 fsyncs a job instead of 6)
    cluster-generic (its qsub through `sh -c`, one after the other)               35.2 ms a job

With a qsub stub that prints a job id (the server left out), on the same machine while other
processes wrote to its disk: before 38.8 ms a job, of which 600 fsyncs 20.1 ms (3.4 ms each);
after 13.4 ms with qsubs one after the other, 9.8 ms with 4 at once; cluster-generic 10.5 ms.

An fsync costs little on an idle disk and a great deal on a busy one: ext4 (data=ordered)
commits its journal for an fsync, writing out with it the data every other process has
pending, and a PBS run's own jobs (each a Snakemake writing its metadata) are such processes.
That is the likeliest reason why the issue's author measured about 240 ms a submission with
jobs running (48 s for 200) against 18 ms here with none, and why the fix is fewer fsyncs (a
few journal commits per round) rather than faster code; the bench's table below measures it
with jobs running:

    | jobs | method | all submitted (s) | submissions/s | speed-up | all done (s) | speed-up |
    |---|---|---|---|---|---|---|
    | 200 | qsub loop | 3.3 | 61.4 | 19.11x | 3.8 | 35.95x |
    | 200 | cluster-generic | 62.3 | 3.2 | 1.00x | 136.3 | 1.00x |
    | 200 | pbs | 44.1 | 4.5 | 1.41x | 150.8 | 0.90x |
    | 1000 (queued only) | qsub loop | 9.8 | 102.2 | 2.52x | - | - |
    | 1000 (queued only) | cluster-generic | 24.6 | 40.6 | 1.00x | - | - |
    | 1000 (queued only) | pbs | 84.2 | 11.9 | 0.29x | - | - |

(2026-12-05, this plugin without arrays; speed-up: cluster-generic's seconds over these.) At
1,000 the plugin's qsubs ran about 90 a second, but one pause of 67 s after the 600th held
them all back: a status poll, which holds the controller while it runs, asked `qstat -x -f`
about 600 jobs, and OpenPBS's qstat sends the server one request per job id given (qstat.c:
pbs_statjob per operand unless `-E`). cluster-generic never polls the server. The remedy
(batched `qstat -E` where the server's version has it, or a poll that does not hold back
submissions) belongs to the polling's owner; the later end at 200 is likely those
polls too (each asks about every job still running).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "cluster"))

import conftest as cluster  # noqa: E402  (tests/cluster/conftest.py: the OpenPBS helpers)

PLUGIN_SRC = REPO / "plugins" / "snakemake-executor-plugin-pbs" / "src"
CLUSTER_GENERIC = "snakemake-executor-plugin-cluster-generic"
# a job's Snakemake needs ~200 MB, and the mom kills jobs over their request; 40 fit the node
MEM_MB, RUNTIME_MIN = 500, 5
SNAKEFILE = f"""
N = int(config["count"])

localrules: all

rule all:
    input: expand("out/{{i}}.txt", i=range(N))

rule one:
    output: "out/{{i}}.txt"
    resources: mem_mb={MEM_MB}, runtime={RUNTIME_MIN}
    shell: "touch {{output}}"
"""
RESOURCES = f"-l select=1:ncpus=1:mem={MEM_MB}mb -l walltime=00:{RUNTIME_MIN:02d}:00"
# in front of the real qsub: each call's end time, and how many jobs it submitted
QSUB_WRAPPER = """#!/bin/bash
{real} "$@"
rc=$?
jobs=1
for arg in "$@"; do :; done
range=$(grep -m1 -oP '^#PBS\\s+-J\\s+\\K\\S+' "$arg" 2>/dev/null)
prev=
for a in "$@"; do [ "$prev" = "-J" ] && range=$a; prev=$a; done
echo "$(date +%s.%N) $rc ${{range:-1}}" >>{log}
exit $rc
"""


@dataclasses.dataclass
class Result:
    method: str
    count: int
    submitted_s: float | None
    done_s: float | None = None
    queued_only: bool = False

    @property
    def rate(self) -> float | None:
        return self.count / self.submitted_s if self.submitted_s else None


def _jobs_in(spec: str) -> int:
    """How many jobs one qsub made: 1, or the size of its array range `a-b[:step][%max]`."""
    if spec == "1":
        return 1
    m = re.match(r"(\d+)-(\d+)(?::(\d+))?", spec)
    if not m:
        return 1
    first, last, step = int(m[1]), int(m[2]), int(m[3] or 1)
    return len(range(first, last + 1, step))


def _all_submitted_at(log: Path, count: int) -> float | None:
    """The time the last qsub returned whose jobs brought the total to `count`."""
    total = 0
    try:
        lines = log.read_text().splitlines()
    except FileNotFoundError:
        return None
    for line in lines:
        stamp, rc, spec = line.split()
        if rc == "0":
            total += _jobs_in(spec)
            if total >= count:
                return float(stamp)
    return None


class Bench:
    """One session on the test server: the user's venv, work directories, the wrappers."""

    def __init__(self, plugin_src: Path):
        p = cluster._openpbs_sh("start")
        if p.returncode != 0:
            raise SystemExit(f"tests/cluster/openpbs.sh start failed:\n{p.stdout}{p.stderr}")
        p = cluster._openpbs_sh("venv", timeout=1800)
        if p.returncode != 0:
            raise SystemExit(f"tests/cluster/openpbs.sh venv failed:\n{p.stdout}{p.stderr}")
        user = pwd.getpwnam(cluster.PBS_USER)
        cluster.OPENPBS_WORK.mkdir(parents=True, exist_ok=True)
        session = Path(tempfile.mkdtemp(prefix="bench-", dir=cluster.OPENPBS_WORK))
        workflow = session / "workflow"
        for name in ("src", "pyproject.toml", "README.md", "tests/hooks"):
            target = workflow / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if (REPO / name).is_dir():
                shutil.copytree(REPO / name, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(REPO / name, target)
        shutil.copytree(plugin_src, workflow / "plugins/snakemake-executor-plugin-pbs/src",
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
        venv = cluster._session_venv(session, workflow)
        # cluster-generic into this venv only (the shared layer and the project stay as they are)
        p = subprocess.run(
            [sys.executable, "-m", "pip", "--python", str(venv / "bin/python"), "install",
             "--quiet", "--no-deps", CLUSTER_GENERIC],
            capture_output=True, text=True,
        )  # fmt: skip
        if p.returncode != 0:
            raise SystemExit(f"pip install {CLUSTER_GENERIC} failed:\n{p.stdout}{p.stderr}")
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(session)], check=True)
        session.chmod(0o755)
        host = subprocess.run(["hostname"], capture_output=True, text=True).stdout.strip()
        self.pbs = cluster.OpenPBS(user=user.pw_name, uid=user.pw_uid, gid=user.pw_gid,
                                   home=user.pw_dir, venv=venv, session_dir=session,
                                   workflow=workflow, server=host)  # fmt: skip
        self.session = session
        self.has_arrays = self._plugin_has("array_jobs")
        self.has_status_interval = self._plugin_has("status_interval")

    def _plugin_has(self, setting: str) -> bool:
        code = (
            "import dataclasses, snakemake_executor_plugin_pbs as p; "
            f"print({setting!r} in {{f.name for f in dataclasses.fields(p.ExecutorSettings)}})"
        )
        p = self.pbs.run(self.pbs.venv / "bin/python", "-c", code)
        return p.stdout.strip() == "True"

    def workdir(self, name: str, count: int) -> tuple[Path, Path, dict[str, str]]:
        """A fresh directory with the Snakefile, its qsub log, and the environment whose
        qsub is the logging wrapper."""
        work = self.pbs.workdir(name)
        (work / "Snakefile").write_text(SNAKEFILE)
        (work / "out").mkdir()
        log = work / "qsub.log"
        bin_dir = work / "bin"
        bin_dir.mkdir()
        wrapper = bin_dir / "qsub"
        wrapper.write_text(QSUB_WRAPPER.format(real=cluster.PBS_EXEC / "bin/qsub", log=log))
        wrapper.chmod(0o755)
        subprocess.run(["chown", "-R", f"{self.pbs.uid}:{self.pbs.gid}", str(work)], check=True)
        env = {"PATH": f"{bin_dir}:{self.pbs.venv / 'bin'}:{cluster.PBS_EXEC / 'bin'}:"
                       f"{cluster.PLAIN_PATH}"}  # fmt: skip
        return work, log, env

    def scheduling(self, on: bool) -> None:
        self.pbs.qmgr(f"set server scheduling = {'True' if on else 'False'}")

    def delete_all(self) -> None:
        """qdel every live job of the test user and wait until the server has none left."""
        env = self.pbs.root_env

        def live() -> list[str]:
            p = subprocess.run(["qselect", "-u", self.pbs.user], env=env, capture_output=True,
                               text=True)  # fmt: skip
            return p.stdout.split()

        ids = live()
        for start in range(0, len(ids), 200):
            subprocess.run(["qdel", "-W", "force", *ids[start : start + 200]], env=env,
                           capture_output=True)  # fmt: skip
        cluster.wait_for(lambda: not live(), 600, interval=1, what="the bench's jobs deleted")

    def run(self, method: str, count: int, done: bool, array_jobs: str | None) -> Result:
        work, log, env = self.workdir(method.replace(" ", "-"), count)
        common = ["--snakefile", str(work / "Snakefile"), "--directory", str(work),
                  "--config", f"count={count}", "--jobs", str(count), "--latency-wait", "30",
                  "--seconds-between-status-checks", "5", "--quiet", "rules"]  # fmt: skip
        if method == "qsub loop":
            script = work / "job.sh"
            script.write_text('#!/bin/bash\ntouch "$PBS_O_WORKDIR/out/$N.txt"\n')
            loop = (
                f"cd {work}; for i in $(seq 0 {count - 1}); do qsub {RESOURCES} -j oe "
                f"-o /dev/null -v N=$i -N loop {script} >/dev/null || exit 1; done"
            )
            argv = ["bash", "-c", loop]
        elif method == "cluster-generic":
            submit = f"qsub {RESOURCES} -j oe -o /dev/null -N cg"
            argv = [self.pbs.venv / "bin/snakemake", *common, "--executor", "cluster-generic",
                    "--cluster-generic-submit-cmd", submit]  # fmt: skip
        else:
            argv = [self.pbs.venv / "bin/snakemake", *common, "--executor", "pbs"]
            if self.has_status_interval:
                argv += ["--pbs-status-interval", "5"]
            if array_jobs:
                argv += ["--pbs-array-jobs", array_jobs]
        output = work / "run.log"
        start = time.time()
        process = self.pbs.popen(*argv, cwd=work, log=output, env=env)
        submitted = None
        try:
            if done:
                code = process.wait(timeout=900)
                end = time.time()
                if method == "qsub loop":  # the loop only submits: wait for the outputs
                    cluster.wait_for(
                        lambda: len(list((work / "out").iterdir())) >= count, 1800, interval=0.5,
                        what=f"{count} outputs of the qsub loop",
                    )  # fmt: skip
                    end = time.time()
                if code != 0:
                    raise SystemExit(f"{method}: exited {code}; see {output}")
                submitted = _all_submitted_at(log, count)
                return Result(method, count, submitted and submitted - start, end - start)
            submitted = cluster.wait_for(
                lambda: _all_submitted_at(log, count), 1800, interval=0.5,
                what=f"{count} jobs submitted by {method} (see {output})",
            )  # fmt: skip
            return Result(method, count, submitted - start, queued_only=True)
        finally:
            if process.poll() is None:  # a Snakemake of jobs left queued: they are deleted
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            self.delete_all()


def _ratio(value: float | None, reference: float | None) -> str:
    if value is None or not reference:
        return "-"
    return f"{value / reference:.2f}x"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: list[Result]) -> str:
    lines = [
        "| jobs | method | all submitted (s) | submissions/s | speed-up on cluster-generic | "
        "all done (s) | speed-up on cluster-generic |",
        "|---|---|---|---|---|---|---|",
    ]
    for count in sorted({r.count for r in results}):
        rows = [r for r in results if r.count == count]
        cg = next((r for r in rows if r.method == "cluster-generic"), None)
        for r in rows:
            lines.append(
                f"| {count}{' (queued only)' if r.queued_only else ''} | {r.method} | "
                f"{_seconds(r.submitted_s)} | {_seconds(r.rate)} | "
                f"{_ratio(cg and cg.submitted_s, r.submitted_s)} | "
                f"{_seconds(r.done_s)} | {_ratio(cg and cg.done_s, r.done_s)} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 1000])
    parser.add_argument(
        "--done-count",
        type=int,
        default=200,
        help="at this many jobs and fewer, also run them to completion",
    )
    parser.add_argument(
        "--plugin-src",
        type=Path,
        default=PLUGIN_SRC,
        help="the plugin's src/ to measure (default: the working tree's)",
    )
    parser.add_argument(
        "--pbs-array-jobs",
        default="all",
        help="the arrays column's setting, where the plugin has arrays",
    )
    parser.add_argument(
        "--methods", nargs="+", default=["qsub loop", "cluster-generic", "pbs", "pbs arrays"]
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (like the cluster tests): the jobs are the test user's")
    bench = Bench(args.plugin_src)
    methods = [m for m in args.methods if m != "pbs arrays" or bench.has_arrays]
    if "pbs arrays" in args.methods and not bench.has_arrays:
        print("the plugin has no --pbs-array-jobs: no arrays column", flush=True)
    results = []
    try:
        for count in args.counts:
            done = count <= args.done_count
            bench.scheduling(on=done)
            for method in methods:
                arrays = args.pbs_array_jobs if method == "pbs arrays" else None
                result = bench.run(method, count, done, arrays)
                print(f"{count} jobs, {method}: submitted in {_seconds(result.submitted_s)}s"
                      + (f", done in {result.done_s:.1f}s" if result.done_s else
                         " (scheduling off: left queued, then deleted)"), flush=True)  # fmt: skip
                results.append(result)
    finally:
        bench.scheduling(on=True)
    print()
    print(f"OpenPBS on {bench.pbs.server}, {os.cpu_count()} cores; plugin from {args.plugin_src}")
    print(table(results))


if __name__ == "__main__":
    main()
