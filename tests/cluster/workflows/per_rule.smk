"""Jobs for the PBS executor's per-rule settings and usage report on the real OpenPBS
(tests/cluster/test_pbs_rules.py): a rule with its own two-chunk select, place, project and
qsub flags; and jobs that hold known amounts of memory until the server has seen them.
"""


rule two_chunks:
    output:
        "select.done",
    resources:
        runtime=5,
        # the job's own Snakemake (~150 MB) runs in the first chunk; $enforce mem checks the sum
        pbs_select="2:ncpus=1:mem=300mb",
        pbs_place="free",
        pbs_project="rulesproj",
        pbs_extra="-m n",
    shell:
        "touch {output}"


rule hold_memory:
    output:
        "mem{mb}.done",
    resources:
        mem_mb=1200,
        runtime=5,
    params:
        qstat=config.get("qstat", "qstat"),
    shell:
        "python3 {workflow.basedir}/hold_memory.py {wildcards.mb} {params.qstat} && touch {output}"


rule memory_jobs:
    input:
        "mem150.done",
        "mem300.done",
