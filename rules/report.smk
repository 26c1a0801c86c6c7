# Tables and figures from the finished sweep; `kdflow report` draws the same at any time.


rule plot_sweep:
    input:
        training_targets(),
    output:
        csv=report("results/summary/results.csv", category="Tables"),
        md="results/summary/results.md",
        alpha=report(
            expand(
                "results/summary/alpha_{dataset}.png", dataset=alpha_plot_datasets()
            ),
            caption="../docs/report/alpha.rst",
            category="Accuracy against alpha",
        ),
        curves=report(
            expand("results/summary/curves_{dataset}.png", dataset=SWEEP.datasets),
            caption="../docs/report/curves.rst",
            category="Training curves",
        ),
    log:
        "logs/report/plot_sweep.log",
    conda:
        "../envs/kdflow.yaml"
    script:
        "../scripts/plot_sweep.py"
