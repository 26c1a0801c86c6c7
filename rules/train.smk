# One job per pure experiment; a student's input is its teacher's `completed` sentinel. The
# students of a teacher train one job each (packing: none) or together (packing: teacher).
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
    # One rule per teacher: a rule's outputs are a fixed list, and each teacher has its own
    # students. Every student stays a target: requesting its `completed` runs its pack. The
    # profile's threads and resources for train_kd (or train_pack) apply to packs.
    for _teacher in sorted(SWEEP.teachers):

        rule:
            name:
                f"train_pack_{_teacher}"
            input:
                data="data/{dataset}/prepared.npz",
                teacher=f"results/{{dataset}}/pure/{_teacher}/seed{{seed}}/completed",
            output:
                pack_outputs(_teacher),
            log:
                **pack_logs(_teacher),
            priority: pack_priority
            conda:
                "../envs/kdflow.yaml"
            threads: kd_threads()
            resources:
                **pack_rule_resources(_teacher),
            params:
                hparams=pack_hparams(_teacher),
            script:
                "../scripts/train_pack.py"
