"""Load: a 10,000-experiment sweep through the dry run, the dashboard, and the executor.

Each test checks what must hold at that size (every job listed, every experiment shown, one
`qstat` per poll) and reports its figures to the chaos summary; the timings are figures, never
pass/fail (the machines are shared). The measuring code is bench/'s, so that `make chaos` and
`python bench/<script>.py` report the same thing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import yaml
from conftest import FULL, load_module

ROOT = Path(__file__).resolve().parents[2]
KDFLOW = Path(sys.executable).parent / "kdflow"


def _bench(name: str):
    """bench/<name>.py (bench/ is scripts, not a package)."""
    return load_module(f"kdflow_bench_{name}", ROOT / "bench" / f"{name}.py")


def test_dry_run_of_10000_experiments_against_a_bare_snakefile(chaos):
    """`snakemake -n` lists all 10,000 training jobs for kdflow's workflow and for a bare
    Snakefile of the same DAG shape; the ratio of their CPU times (median of 3 alternating runs
    at full counts, one run at small counts) goes to the summary (goal <= 1.3)."""
    rounds = 3 if FULL else 1
    r = _bench("dryrun").measure(rounds)
    assert r["jobs"] == 10_000
    cpu, wall = r["kdflow_cpu"] / r["bare_cpu"], r["kdflow_wall"] / r["bare_wall"]
    chaos.load.append(
        {
            "measure": "`snakemake -n`, 10,000 experiments: kdflow / bare Snakefile, CPU time "
            f"(wall-clock time) of the dry run, median of {rounds}",
            "result": f"{r['kdflow_cpu']:.1f} s / {r['bare_cpu']:.1f} s = {cpu:.2f} "
            f"({r['kdflow_wall']:.1f} s / {r['bare_wall']:.1f} s = {wall:.2f})",
            "goal": "<= 1.3",
        }
    )


def test_status_shows_every_experiment_of_a_large_sweep(chaos, tmp_path):
    """`kdflow status --json` over a sweep with results, status files and registry records for
    every experiment (10,000 at full counts, 312 at small ones): every experiment once, each
    finished one `done`; the command's wall time (Python start-up included, no qstat) goes to
    the summary (goal < 3 s for 10,000)."""
    bench = _bench("status")
    size = 10_000 if FULL else 312
    sweep = bench.sweep_of(size)
    bench.populate(sweep, tmp_path)
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep.config))
    argv = [str(KDFLOW), "status", "--configfile", "sweep.yaml", "--json", "--no-qstat"]
    start = time.perf_counter()
    out = subprocess.run(argv, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout)["experiments"]
    assert sorted(r["path"] for r in rows) == sorted(e.directory for e in sweep.experiments())
    done = {r["path"] for r in rows if r["state"] == "done"}
    assert done == {
        str(p.parent.relative_to(tmp_path)) for p in tmp_path.glob("results/**/completed")
    }
    chaos.load.append(
        {
            "measure": f"`kdflow status --json --no-qstat`, {size:,} experiments (whole command)",
            "result": f"{seconds:.2f} s",
            "goal": "< 3 s for 10,000",
        }
    )


def test_executor_tracks_1000_jobs_with_one_qstat_per_poll(chaos):
    """A controller restarted with N live jobs in its registry (1,000 at full counts, 100 at
    small ones; the unit tests' fake PBS) adopts them all with one qstat and polls each round
    with one qstat, submitting nothing."""
    jobs = 1000 if FULL else 100
    calls = _bench("pbs_poll").qstat_calls_per_round(jobs)
    assert calls == [1, 1, 1, 1], calls
    chaos.load.append(
        {
            "measure": f"executor with {jobs:,} live jobs: qstat calls for the adoption round "
            "and 3 polls",
            "result": ", ".join(map(str, calls)),
            "goal": "1 per round",
        }
    )
