"""`snakemake -n` on the real sweep (config/experiments.yaml, 252 experiments) and on a
10,000-experiment one: kdflow's workflow over a bare Snakefile with the same DAG shape, measured
side by side (alternating, median of 3) in one run, in wall-clock and CPU seconds (a dry run is
one busy process: its CPU time is what it costs, and other load on a shared machine moves it
far less than the wall clock). At 252 jobs the ratio is mostly start-up (imports, validation);
at 10,000 mostly the per-job cost of the rules.

    python bench/dryrun.py [--rounds 3] [--sizes 252 10000]

kdflow runs with `packing: none` (one job per experiment, the DAG shape of the bare
Snakefile; with packs, the default, a dry run lists fewer and larger jobs). The bare Snakefile
has the same rules (running a script, as kdflow's do), wildcards, teacher -> student edges and
targets, but no schema validation, no semantic checks and no
parameter, priority or resource functions: the ratio is what kdflow's config handling costs
on top of Snakemake itself (goal <= 1.3).
"""

from __future__ import annotations

import argparse
import itertools
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

# 4 seeds x 5 datasets x (18 models + 241 pairs x 1 method x 2 alphas) = 10,000 experiments
MODELS = [
    "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110",
    "resnet8x4", "resnet32x4", "wrn_16_1", "wrn_16_2", "wrn_40_1", "wrn_40_2",
    "vgg8", "vgg11", "vgg13", "vgg16", "vgg19",
]  # fmt: skip
CONFIG = {
    "seeds": [0, 1, 2, 3],
    "datasets": {d: {} for d in ["cifar10", "cifar100", "svhn", "tinyimagenet", "digits"]},
    "models": MODELS,
    "pairs": [{"teacher": t, "student": s} for t, s in itertools.permutations(MODELS, 2)][:241],
    "methods": {"logit": {"temperature": 4}},
    "alphas": [0.5, 0.9],
}

BARE = """
configfile: "sweep.yaml"

SEEDS, DATASETS, MODELS = config["seeds"], list(config["datasets"]), config["models"]
PAIRS = [(p["teacher"], p["student"]) for p in config["pairs"]]
METHODS, ALPHAS = list(config["methods"]), [str(a) for a in config["alphas"]]
TARGETS = []
for seed in SEEDS:
    for dataset in DATASETS:
        TARGETS += [f"results/{dataset}/pure/{m}/seed{seed}/completed" for m in MODELS]
        TARGETS += [
            f"results/{dataset}/{method}/{t}-{s}/alpha{a}/seed{seed}/completed"
            for t, s in PAIRS for method in METHODS for a in ALPHAS
        ]

wildcard_constraints:
    dataset="|".join(DATASETS),
    model="|".join(MODELS),
    teacher="|".join(MODELS),
    student="|".join(MODELS),
    method="|".join(METHODS),
    alpha="|".join(a.replace(".", r"\\.") for a in ALPHAS),
    seed=r"\\d+",

rule all:
    input: TARGETS

rule prepare_dataset:
    output: "data/{dataset}/prepared.npz"
    script: "noop.py"

rule train_pure:
    input: "data/{dataset}/prepared.npz"
    output: "results/{dataset}/pure/{model}/seed{seed}/completed"
    script: "noop.py"

rule train_kd:
    input:
        data="data/{dataset}/prepared.npz",
        teacher="results/{dataset}/pure/{teacher}/seed{seed}/completed",
    output: "results/{dataset}/{method}/{teacher}-{student}/alpha{alpha}/seed{seed}/completed"
    script: "noop.py"
"""


def dry_run(snakefile: Path, workdir: Path, extra: list[str]) -> tuple[float, float, int]:
    """Wall and CPU seconds of one `snakemake -n` (CPU: the child's user + system time, which
    other load on a shared machine barely moves), and the training jobs it listed."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), "-n",
         "--quiet", "rules", *extra],
        capture_output=True, text=True, cwd=workdir,
    )  # fmt: skip
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    stats = out.stdout.split("Job stats:")[1].split("\n\n")[0]  # the first table
    train_jobs = sum(
        int(line.split()[1])
        for line in stats.splitlines()
        if line.split()[:1] in (["train_pure"], ["train_kd"])
    )
    return wall, cpu, train_jobs


def sweep_of(size: int) -> dict:
    """The sweep of `size` training jobs: config/experiments.yaml (252) or CONFIG (10,000)."""
    if size == 10_000:
        return CONFIG
    if size == 252:
        return yaml.safe_load((ROOT / "config" / "experiments.yaml").read_text())
    raise ValueError(f"no sweep of {size} jobs: 252 (config/experiments.yaml) or 10000")


def measure(rounds: int = 3, size: int = 10_000) -> dict[str, float | int]:
    """`snakemake -n` on the sweep of `size` jobs for kdflow's workflow and for BARE, run
    alternately `rounds` times: the median wall and CPU seconds of each, and the training jobs
    both listed."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "kdflow").mkdir()
        (tmp / "bare").mkdir()
        sweep = {**sweep_of(size), "packing": "none"}  # one job per experiment, as in BARE
        for d in ("kdflow", "bare"):
            (tmp / d / "sweep.yaml").write_text(yaml.safe_dump(sweep))
        (tmp / "bare" / "Snakefile").write_text(BARE)
        (tmp / "bare" / "noop.py").write_text("open(snakemake.output[0], 'w').close()\n")
        kdflow_args = ["--configfile", str(tmp / "kdflow/sweep.yaml"), "--replace-workflow-config"]
        runs: dict[str, list[tuple[float, float, int]]] = {"kdflow": [], "bare": []}
        for _ in range(rounds):
            runs["kdflow"].append(dry_run(ROOT / "Snakefile", tmp / "kdflow", kdflow_args))
            runs["bare"].append(dry_run(tmp / "bare" / "Snakefile", tmp / "bare", []))
    jobs = {run[2] for runs_ in runs.values() for run in runs_}
    assert jobs == {size}, jobs
    out: dict[str, float | int] = {"jobs": size}
    for name, results in runs.items():
        out[f"{name}_wall"] = statistics.median(r[0] for r in results)
        out[f"{name}_cpu"] = statistics.median(r[1] for r in results)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sizes", type=int, nargs="+", default=[252, 10_000])
    args = parser.parse_args()
    for size in args.sizes:
        r = measure(args.rounds, size)
        print(f"snakemake -n, {r['jobs']:,} training jobs, median of {args.rounds}")
        print(f"{'':20}{'wall (s)':>10}{'CPU (s)':>10}")
        print(f"{'kdflow workflow':20}{r['kdflow_wall']:10.2f}{r['kdflow_cpu']:10.2f}")
        print(f"{'bare Snakefile':20}{r['bare_wall']:10.2f}{r['bare_cpu']:10.2f}")
        wall, cpu = r["kdflow_wall"] / r["bare_wall"], r["kdflow_cpu"] / r["bare_cpu"]
        print(f"{'ratio':20}{wall:10.2f}{cpu:10.2f}   (goal <= 1.3)", flush=True)


if __name__ == "__main__":
    main()
