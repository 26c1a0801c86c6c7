"""The plot_sweep rule: the tables and figures of exactly the experiments of its input (each
one's `completed`), into exactly its declared outputs."""

import logging
from pathlib import Path

from kdflow.config import RESULTS_DIR, Sweep
from kdflow.summary import ReportFiles, write_report

sm = snakemake  # noqa: F821
logging.basicConfig(filename=sm.log[0], level=logging.INFO, format="%(levelname)s: %(message)s")
files = ReportFiles(
    csv=Path(sm.output.csv),
    md=Path(sm.output.md),
    alpha=dict(zip(sm.params.alpha_datasets, map(Path, sm.output.alpha), strict=True)),
    curves=dict(zip(sm.params.curves_datasets, map(Path, sm.output.curves), strict=True)),
)
# what each experiment must have been trained as: a run of another recipe is left out
sweep = Sweep(sm.config, check_names=False)
expected = {Path(e.directory): sweep.spec(e).identity for e in sweep.experiments()}
write_report([Path(target).parent for target in sm.input], files, RESULTS_DIR, expected)
