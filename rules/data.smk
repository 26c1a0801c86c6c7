# Prepare each dataset once, on the node that runs the controller: compute nodes have no internet.


rule prepare_dataset:
    output:
        "data/{dataset}/prepared.npz",
    log:
        "logs/prepare/{dataset}.log",
    conda:
        "../envs/kdflow.yaml"
    script:
        "../scripts/prepare_dataset.py"
