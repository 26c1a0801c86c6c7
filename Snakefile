"""kdflow: every (seed, dataset, model, method, alpha) of config/experiments.yaml is one target."""


configfile: "config/experiments.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/report.smk"


localrules:
    all,
    prepare_dataset,
    plot_sweep,


rule all:
    input:
        final_outputs(),
