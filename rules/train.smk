# One job per pure experiment; a student's input is its teacher's `completed` sentinel. The
# students of a pair train one job each (packing: none) or together (packing: teacher).
# Only `completed` is declared: Snakemake deletes declared outputs before a job runs and after
# it fails, and checkpoints must survive both.


rule train_pure:
    input:
        data="data/{dataset}/prepared.npz",
    output:
        "results/{dataset}/pure/{model}/seed{seed}/completed",
    log:
        "logs/train/{dataset}/pure/{model}/seed{seed}.log",
    priority: pure_priority
    conda:
        "../envs/kdflow.yaml"
    threads: 1  # profiles set the real count (set-threads); keep it fixed within a sweep
    resources:
        mem_mb=dataset_resource("mem_mb"),
        runtime=dataset_resource("runtime"),
    params:
        hparams=train_hparams,
    script:
        "../scripts/train.py"


if SWEEP.packing == "none":

    rule train_kd:
        input:
            data="data/{dataset}/prepared.npz",
            teacher="results/{dataset}/pure/{teacher}/seed{seed}/completed",
        output:
            "results/{dataset}/{method}/{teacher}-{student}/alpha{alpha}/seed{seed}/completed",
        log:
            "logs/train/{dataset}/{method}/{teacher}-{student}/alpha{alpha}/seed{seed}.log",
        priority: kd_priority
        conda:
            "../envs/kdflow.yaml"
        threads: 1
        resources:
            mem_mb=dataset_resource("mem_mb"),
            runtime=dataset_resource("runtime"),
        params:
            hparams=train_hparams,
        script:
            "../scripts/train.py"

else:

    # Every student stays a target: requesting its `completed` runs its pack. Profiles set
    # the threads and resources of train_pack as of any rule.
    rule train_pack:
        input:
            data="data/{dataset}/prepared.npz",
            teacher="results/{dataset}/pure/{teacher}/seed{seed}/completed",
        output:
            pack_outputs(),
        log:
            **pack_logs(),
        priority: pack_priority
        conda:
            "../envs/kdflow.yaml"
        threads: 1
        resources:
            mem_mb=pack_resource("mem_mb"),
            runtime=pack_resource("runtime"),
        params:
            hparams=pack_hparams,
        script:
            "../scripts/train_pack.py"
