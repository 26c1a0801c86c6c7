# Tables (and, later, figures) from whatever has finished.


rule summarize_results:
    input:
        training_targets(),
    output:
        csv="results/summary/results.csv",
        md="results/summary/results.md",
    log:
        "logs/report/summarize_results.log",
    conda:
        "../envs/kdflow.yaml"
    script:
        "../scripts/summarize_results.py"
