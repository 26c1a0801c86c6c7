"""qstat calls per poll and qstat parse time of the PBS executor, side by side in one run.

    python bench/pbs_poll.py [--counts 1 10 100 1000]

1. The executor's controller restarted with N live jobs in its registry (the fake PBS of the
   plugin's tests/samples answers qsub/qstat/qdel): qstat calls for the adoption round and for
   each of three poll rounds (goal: 1 per round, whatever N).
2. Parse time of a 1,000-job `qstat -x -f` in PBS Pro's wrapped text (goal < 50 ms), median
   of 5. (The executor never asks for `-F json`: see snakemake_executor_plugin_pbs.status.)
3. qstat calls per hour with 10 and 1,000 jobs in flight, before (a fixed 30 s, the plugin's
   old default) and after (the adaptive interval from Snakemake's default 10 s, up to 180 s,
   never below one second per 20 jobs), and how late a job's end is noticed on average. A
   simulated clock through the executor's own interval policy and change test: N jobs kept
   in flight for 8 hours, each queued 0-10 minutes and running 30-90 minutes (seeded).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import random
import statistics
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

from snakemake_executor_plugin_pbs import Executor
from snakemake_executor_plugin_pbs.controller import (
    Controller,
    ControllerConfig,
    Finished,
    Target,
    Tracked,
)
from snakemake_executor_plugin_pbs.policy import Limits
from snakemake_executor_plugin_pbs.polling import PollInterval
from snakemake_executor_plugin_pbs.registry import Registry, Submission, TargetRecord
from snakemake_executor_plugin_pbs.status import parse_qstat_text
from snakemake_executor_plugin_pbs.submit import job_name

SAMPLES = (
    Path(__file__).resolve().parents[1]
    / "plugins"
    / "snakemake-executor-plugin-pbs"
    / "tests"
    / "samples"
)


def _load(name):
    spec = importlib.util.spec_from_file_location(name, SAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def qstat_calls_per_round(count: int) -> list[int]:
    fake_pbs = _load("fake_pbs")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp) / "work"
        workdir.mkdir()
        pbs = fake_pbs.FakePbs(Path(tmp) / "pbs")
        os.environ.update(pbs.env())
        registry = Registry(workdir / ".kdflow/pbs")
        targets = []
        for i in range(count):
            output = f"results/cifar100/pure/resnet20/seed{i}/completed"
            name = job_name([output])
            targets.append(
                Target(name=name, rule="train_pure", outputs=(output,), command="true",
                       threads=10, mem_mb=24000, runtime_minutes=60, gpus=1)
            )  # fmt: skip
            job_id = pbs.add_job(5000 + i, name, str(workdir), state="R")
            registry.save(
                TargetRecord(name=name, submissions=[Submission(job_id=job_id, submitted_at=0)])
            )
        controller = Controller(
            ControllerConfig(workdir=workdir, log_dir=workdir / "logs/pbs", queue="gpu_1",
                             project="CSCI1234", limits=Limits(), submit_backoff=60,
                             command_timeout=60),
            registry,
        )  # fmt: skip
        calls, before = [], 0
        results = controller.start(targets)
        calls.append(len(pbs.status_calls()) - before)
        for _ in range(3):
            before = len(pbs.status_calls())
            results = controller.poll(r for r in results.values() if isinstance(r, Tracked))
            calls.append(len(pbs.status_calls()) - before)
        assert pbs.calls("qsub") == [], "a restarted controller must adopt, not submit"
        return calls


def parse_times(jobs: int = 1000) -> float:
    samples = _load("generate_samples")
    states = ["R", "Q", "F"]
    listing = [
        samples.job(7000 + i, f"kd{i:010x}", states[i % 3], used="00:41:07",
                    exit_status=-29 if i % 3 == 2 else None)
        for i in range(jobs)
    ]  # fmt: skip
    text = samples.text(listing)

    def median_ms(fn, arg):
        times = []
        for _ in range(5):
            start = time.perf_counter()
            parsed = fn(arg)
            times.append(time.perf_counter() - start)
        assert len(parsed) == jobs
        return 1000 * statistics.median(times)

    return median_ms(parse_qstat_text, text)


HOURS = 8


def simulate_polling(jobs: int, interval: PollInterval, seed: int = 1) -> tuple[float, float]:
    """(qstat calls per hour, mean seconds from a job's end to the check that sees it) with
    `jobs` jobs kept in flight for HOURS, checks spaced by `interval` (Executor._changed
    decides what counts as a change)."""
    rng = random.Random(seed)
    end_of_run = HOURS * 3600.0
    executor = SimpleNamespace(_last_seen={}, _submitted_since_check=True)

    def new_job(now: float, n: int) -> dict:
        queued = rng.uniform(0, 600)
        return {"n": n, "start": now + queued, "end": now + queued + rng.uniform(1800, 5400)}

    running = [new_job(0.0, n) for n in range(jobs)]
    count, now, checks, late = jobs, 0.0, 0, []
    while now < end_of_run:
        now += interval.current
        checks += 1
        results, submitted = {}, False
        for i, job in enumerate(running):
            target = Target(name=f"t{job['n']}", rule="r", outputs=(), command="")
            if job["end"] <= now:
                results[target.name] = Finished(target, True)
                late.append(now - job["end"])
                running[i], count, submitted = new_job(now, count), count + 1, True
            else:
                state = "R" if job["start"] <= now else "Q"
                results[target.name] = Tracked(target, job_id=f"{job['n']}.s", state=state)
        executor._submitted_since_check = executor._submitted_since_check or submitted
        changed = Executor._changed(executor, results)
        interval.next(changed, jobs=len(running))
    return checks / HOURS, statistics.mean(late) if late else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 10, 100, 1000])
    args = parser.parse_args()
    print(f"{'active jobs':>12}{'adoption round':>16}{'poll 1':>8}{'poll 2':>8}{'poll 3':>8}"
          f"{'goal':>6}")  # fmt: skip
    for count in args.counts:
        calls = qstat_calls_per_round(count)
        print(f"{count:>12}{calls[0]:>16}{calls[1]:>8}{calls[2]:>8}{calls[3]:>8}{1:>6}")
    print()
    print(f"parse 1,000 jobs, qstat -x -f text: {parse_times():7.1f} ms   (goal < 50 ms)")
    print()
    print(f"qstat calls per hour ({HOURS} simulated hours; late: mean seconds from a job's end "
          "to the check that sees it)")  # fmt: skip
    print(f"{'jobs in flight':>15}{'before: fixed 30 s':>22}{'after: adaptive':>20}")
    for jobs in (10, 1000):
        before = simulate_polling(jobs, PollInterval(shortest=30, longest=30, growth=1.0))
        after = simulate_polling(jobs, PollInterval(shortest=10, longest=180))
        print(f"{jobs:>15}{before[0]:>10.0f} /h, late {before[1]:3.0f} s"
              f"{after[0]:>8.0f} /h, late {after[1]:3.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
