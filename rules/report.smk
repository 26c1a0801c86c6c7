# The results of exactly this config's experiments: tables and figures. Its input is every
# experiment's `completed`, so it runs when the sweep is finished; `kdflow report` writes the
# same files at any time, through the same kdflow.summary.write_report.

from kdflow.summary import ReportFiles

REPORT_FILES = ReportFiles.of(SWEEP, "results/summary")


rule plot_sweep:
    input:
        training_targets(),
    output:
        csv=report(str(REPORT_FILES.csv), category="Tables"),
        md=str(REPORT_FILES.md),
        alpha=report(
            [str(path) for path in REPORT_FILES.alpha.values()],
            caption="../docs/report/alpha.rst",
            category="Accuracy against alpha",
        ),
        curves=report(
            [str(path) for path in REPORT_FILES.curves.values()],
            caption="../docs/report/curves.rst",
            category="Training curves",
        ),
    log:
        "logs/report/plot_sweep.log",
    conda:
        "../envs/kdflow.yaml"
    params:
        # the dataset of each file of output.alpha and output.curves, in the same order
        alpha_datasets=list(REPORT_FILES.alpha),
        curves_datasets=list(REPORT_FILES.curves),
    script:
        "../scripts/plot_sweep.py"
