"""`kdflow status` on large sweeps, without the qstat call (the scheduler's time is its own).

    python bench/status.py [--sizes 312 10000]

For each size it writes a sweep of that many experiments into a temporary directory (a third
finished, a third with a status.json, every job submitted in the PBS registry), then times
the dashboard's collect + render, median of 3, with packing: teacher (the students of a
teacher share their pack's job and record) and none. Goals: 312 in < 1 s, 10,000 in < 3 s.
"""

from __future__ import annotations

import argparse
import io
import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console

from kdflow.config import Sweep
from kdflow.status import collect, executor_settings, render
from snakemake_executor_plugin_pbs.registry import Registry, Submission, TargetRecord
from snakemake_executor_plugin_pbs.submit import job_name


def sweep_of(size: int, packing: str = "teacher") -> Sweep:
    """seeds x 2 datasets x (models + pairs x 4 alphas) == size, for the sizes used here."""
    shapes = {312: (3, 4, 12), 10_000: (10, 20, 120)}  # seeds, models, pairs
    seeds, n_models, n_pairs = shapes[size]
    models = [f"m{i}" for i in range(n_models)]
    pairs = list(itertools.permutations(models, 2))[:n_pairs]
    config = {
        "seeds": list(range(seeds)),
        "datasets": {"cifar100": {}, "svhn": {}},
        "models": models,
        "pairs": [{"teacher": t, "student": s} for t, s in pairs],
        "alphas": [0.25, 0.5, 0.75, 0.95],
        "packing": packing,
    }
    sweep = Sweep(config, check_names=False)
    assert len(sweep.experiments()) == size, len(sweep.experiments())
    return sweep


def populate(sweep: Sweep, root: Path) -> None:
    settings = executor_settings()  # profiles/pbs: where the controller writes its registry
    registry = Registry(root / settings.registry_dir)
    for i, experiment in enumerate(sweep.experiments()):
        directory = root / experiment.directory
        directory.mkdir(parents=True)
        if i % 3 == 0:
            (directory / "completed").write_text("")
        elif i % 3 == 1:
            status = {"status": "in_progress", "epoch": 10, "epochs": 240, "best_acc": 50.0}
            (directory / "status.json").write_text(json.dumps(status))
    for i, outputs in enumerate(dict.fromkeys(sweep.jobs().values())):
        submission = Submission(job_id=f"{i}.pbs", submitted_at=time.time(), outcome="success")
        name = job_name(outputs, prefix=settings.job_name_prefix)
        registry.save(TargetRecord(name=name, outputs=list(outputs), submissions=[submission]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[312, 10_000])
    args = parser.parse_args()
    print(
        f"{'experiments':>12}{'packing':>9}{'collect (s)':>14}{'render (s)':>13}"
        f"{'total (s)':>12}{'goal':>8}"
    )
    for size, packing in itertools.product(args.sizes, ("teacher", "none")):
        sweep = sweep_of(size, packing)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            populate(sweep, root)
            collects, renders = [], []
            for _ in range(3):
                start = time.perf_counter()
                rows, note = collect(sweep, root)
                collects.append(time.perf_counter() - start)
                start = time.perf_counter()
                render(rows, note, Console(file=io.StringIO(), width=160))
                renders.append(time.perf_counter() - start)
        c, r = statistics.median(collects), statistics.median(renders)
        goal = "< 1 s" if size <= 312 else "< 3 s"
        print(f"{size:>12}{packing:>9}{c:>14.3f}{r:>13.3f}{c + r:>12.3f}{goal:>8}")


if __name__ == "__main__":
    main()
