# The sweep: validate the config, expand it to experiments, and give rules their parameters.

import sys
from pathlib import Path

# kdflow from this workflow's own src/, installed or not: the controller and every job process
# parse this file, and Snakemake appends their sys.path to each `script:`'s, so jobs in a conda
# environment (envs/kdflow.yaml holds no kdflow) import it from here too.
_SRC = str(Path(workflow.main_snakefile).parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from kdflow.config import Experiment, Sweep

# Validates against config/schema.yaml and checks what a schema cannot (pairs naming models
# that are not trained as pure, duplicates, unknown names); raises before any job exists.
SWEEP = Sweep(
    config,
    source=" + ".join(map(str, workflow.configfiles)) or "config",
    # checked for keys given twice: the files the config was read from (with
    # --replace-workflow-config, the `configfile:` above is read, then discarded)
    files=(
        workflow.config_settings.configfiles
        if workflow.config_settings.replace_workflow_config
        else workflow.configfiles
    ),
)
EXPERIMENTS = SWEEP.experiments()


def _alternatives(names):
    return "|".join(sorted(names, key=len, reverse=True))


wildcard_constraints:
    dataset=_alternatives(SWEEP.datasets),
    model=_alternatives(SWEEP.models),
    teacher=_alternatives(SWEEP.models),
    student=_alternatives(SWEEP.models),
    method=_alternatives(SWEEP.methods),
    alpha=_alternatives(SWEEP.alphas).replace(".", r"\."),
    seed=r"\d+",


def training_targets():
    return [experiment.target for experiment in EXPERIMENTS]


def alpha_plot_datasets():
    """Datasets with students to plot against alpha (all of them, unless there are no pairs)."""
    return SWEEP.datasets if SWEEP.pairs else []


def final_outputs():
    return training_targets() + rules.plot_sweep.output


def experiment(wildcards):
    """The experiment a training job's wildcards name."""
    w = wildcards
    if "student" not in w.keys():
        return Experiment(w.dataset, int(w.seed), "pure", w.model)
    return Experiment(w.dataset, int(w.seed), w.method, w.student, w.teacher, w.alpha)


def train_hparams(wildcards):
    """What one experiment trains with (kdflow.config.TrainSpec), as parameters."""
    return SWEEP.spec(experiment(wildcards)).params()


# Packs (`packing: teacher`): the rule train_pack, whose outputs are the `completed` of every
# student of one pair on one (dataset, seed), in the sweep's order.


def _student_path(method, alpha, kind):
    if kind == "log":
        return f"logs/train/{{dataset}}/{method}/{{teacher}}-{{student}}/alpha{alpha}/seed{{seed}}.log"
    return f"results/{{dataset}}/{method}/{{teacher}}-{{student}}/alpha{alpha}/seed{{seed}}/completed"


def pack_outputs():
    """The pack's outputs, flagged update(): Snakemake neither deletes a student's `completed`
    before the pack runs nor, when the pack fails, one that existed before it."""
    return [
        update(_student_path(*student, "completed"))
        for student in SWEEP.pack_students()
    ]


def pack_logs():
    """A log per student (where a job of its own would log) and one of the pack's."""
    return {
        "pack": "logs/train/{dataset}/pack/{teacher}-{student}/seed{seed}.log",
        "students": [_student_path(*s, "log") for s in SWEEP.pack_students()],
    }


def pack_hparams(wildcards):
    w = wildcards
    pack = SWEEP.pack(w.dataset, int(w.seed), w.teacher, w.student)
    return [SWEEP.spec(student).params() for student in pack.students]


def _per_dataset(resources, name):
    """A resource from its dataset's settings: a number where all datasets agree, else a
    function of the wildcards (Snakemake calls a function once per job, which a 10,000-job
    dry run notices)."""
    values = {resources(dataset)[name] for dataset in SWEEP.datasets}
    if len(values) == 1:
        return values.pop()
    return lambda wildcards: resources(wildcards.dataset)[name]


def dataset_resource(name):
    """A training job's mem_mb or runtime."""
    return _per_dataset(SWEEP.resources, name)


def pack_resource(name):
    """A pack job's mem_mb or runtime, from its dataset's settings and its size."""
    return _per_dataset(SWEEP.pack_resources, name)


def pure_priority(wildcards):
    return SWEEP.priority(int(wildcards.seed), "pure", wildcards.model)


def kd_priority(wildcards):
    return SWEEP.priority(int(wildcards.seed), wildcards.method, wildcards.student)


def pack_priority(wildcards):
    return SWEEP.priority(int(wildcards.seed), "pack", "")
