"""`snakemake -n` on a 10,000-experiment sweep: kdflow's workflow over a bare Snakefile with the
same DAG shape, measured side by side (alternating, median of 3) in one run.

    python bench/dryrun.py [--rounds 3]

The bare Snakefile has the same rules (running a script, as kdflow's do), wildcards,
teacher -> student edges and targets, but no schema validation, no semantic checks and no
parameter, priority or resource functions: the ratio is what kdflow's config handling costs
on top of Snakemake itself (goal <= 1.3).
"""

from __future__ import annotations

import argparse
import itertools
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


def dry_run(snakefile: Path, workdir: Path, extra: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), "-n",
         "--quiet", "rules", *extra],
        capture_output=True, text=True, cwd=workdir,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(out.stderr[-3000:])
    stats = out.stdout.split("Job stats:")[1].split("\n\n")[0]  # the first table
    train_jobs = sum(
        int(line.split()[1])
        for line in stats.splitlines()
        if line.split()[:1] in (["train_pure"], ["train_kd"])
    )
    return elapsed, train_jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "kdflow").mkdir()
        (tmp / "bare").mkdir()
        for d in ("kdflow", "bare"):
            (tmp / d / "sweep.yaml").write_text(yaml.safe_dump(CONFIG))
        (tmp / "bare" / "Snakefile").write_text(BARE)
        (tmp / "bare" / "noop.py").write_text("open(snakemake.output[0], 'w').close()\n")
        kdflow_args = ["--configfile", str(tmp / "kdflow/sweep.yaml"), "--replace-workflow-config"]
        times: dict[str, list[float]] = {"kdflow": [], "bare": []}
        for _ in range(args.rounds):
            t, n_kdflow = dry_run(ROOT / "Snakefile", tmp / "kdflow", kdflow_args)
            times["kdflow"].append(t)
            t, n_bare = dry_run(tmp / "bare" / "Snakefile", tmp / "bare", [])
            times["bare"].append(t)
    assert n_kdflow == n_bare == 10_000, (n_kdflow, n_bare)
    kd, bare = statistics.median(times["kdflow"]), statistics.median(times["bare"])
    print(f"snakemake -n, {n_kdflow:,} training jobs, median of {args.rounds}")
    print(f"  kdflow workflow   {kd:8.1f} s")
    print(f"  bare Snakefile    {bare:8.1f} s")
    print(f"  ratio             {kd / bare:8.2f}   (goal <= 1.3)")


if __name__ == "__main__":
    main()
