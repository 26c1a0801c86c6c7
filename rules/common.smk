# The sweep: validate the config, expand it to experiments, and give rules their parameters.

import sys
from pathlib import Path

# kdflow from this workflow's own src/, installed or not: the controller and every job process
# parse this file, and Snakemake appends their sys.path to each `script:`'s, so jobs in a conda
# environment (envs/kdflow.yaml holds no kdflow) import it from here too.
_SRC = str(Path(workflow.main_snakefile).parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from kdflow.config import Sweep

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


def _spec(dataset, seed, model, method="pure", teacher=None, alpha=None):
    """The TrainSpec (kdflow.trainer) of one experiment, as a dict of parameters."""
    recipe = SWEEP.recipe(dataset)
    spec = {
        "dataset": dataset,
        "data_path": f"data/{dataset}/prepared.npz",
        "seed": int(seed),
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "momentum": recipe.momentum,
        "weight_decay": recipe.weight_decay,
        "lr_milestones": list(recipe.lr_milestones),
        "lr_decay": recipe.lr_decay,
        "crop_padding": recipe.crop_padding,
        "flip": recipe.flip,
        "eval_batch_size": recipe.eval_batch_size,
        "device": SWEEP.config["device"],
    }
    if method == "pure":
        return {**spec, "model": model}
    return {
        **spec,
        "model": model,
        "method": method,
        "teacher": teacher,
        "teacher_dir": f"results/{dataset}/pure/{teacher}/seed{seed}",
        "alpha": float(alpha),
        "method_settings": SWEEP.method_settings(method),
    }


def train_hparams(wildcards):
    """The TrainSpec of one experiment, from the config and the wildcards."""
    w = wildcards
    if "student" not in w.keys():
        return _spec(w.dataset, w.seed, w.model)
    return _spec(w.dataset, w.seed, w.student, w.method, w.teacher, w.alpha)


# Packs (`packing: teacher`): one rule per teacher, whose outputs are the `completed` of every
# student of that teacher on one (dataset, seed), in the sweep's order.


def _student_path(teacher, method, student, alpha, kind):
    if kind == "log":
        return f"logs/train/{{dataset}}/{method}/{teacher}-{student}/alpha{alpha}/seed{{seed}}.log"
    return f"results/{{dataset}}/{method}/{teacher}-{student}/alpha{alpha}/seed{{seed}}/completed"


def pack_outputs(teacher):
    """The pack's outputs, flagged update(): Snakemake neither deletes a student's `completed`
    before the pack runs nor, when the pack fails, one that existed before it."""
    return [
        update(_student_path(teacher, *student, "completed"))
        for student in SWEEP.pack_students(teacher)
    ]


def pack_logs(teacher):
    """A log per student (where a job of its own would log) and one of the pack's."""
    return {
        "pack": f"logs/train/{{dataset}}/pack/{teacher}/seed{{seed}}.log",
        "students": [
            _student_path(teacher, *s, "log") for s in SWEEP.pack_students(teacher)
        ],
    }


def pack_hparams(teacher):
    students = SWEEP.pack_students(teacher)
    return lambda w: [
        _spec(w.dataset, w.seed, s, m, teacher, a) for m, s, a in students
    ]


def pack_resource(teacher, name):
    """A pack job's mem_mb or runtime from its dataset's settings and its size."""
    n = len(SWEEP.pack_students(teacher))
    values = {SWEEP.pack_resources(dataset, n)[name] for dataset in SWEEP.datasets}
    if len(values) == 1:
        return values.pop()
    return lambda wildcards: SWEEP.pack_resources(wildcards.dataset, n)[name]


def kd_threads():
    """A pack's threads: what the profile sets for train_pack, else for train_kd (profiles
    name the rule of a student's job; packs are that job for several students)."""
    overrides = workflow.resource_settings.overwrite_threads
    value = overrides.get("train_pack", overrides.get("train_kd", 1))
    return getattr(value, "value", value)


def pack_rule_resources(teacher):
    """A pack rule's resources: mem_mb and runtime from its dataset and size (pack_resource),
    then the profile's set-resources for train_pack, else for train_kd (see kd_threads).
    """
    overrides = workflow.resource_settings.overwrite_resources
    kd = overrides.get("train_pack", overrides.get("train_kd", {}))
    return {
        "mem_mb": pack_resource(teacher, "mem_mb"),
        "runtime": pack_resource(teacher, "runtime"),
        **{name: getattr(value, "value", value) for name, value in kd.items()},
    }


def dataset_resource(name):
    """A training job's `name` resource (mem_mb, runtime) from its dataset's settings: a number
    where all datasets agree, else a function of the wildcards (Snakemake calls a function
    once per job, which a 10,000-job dry run notices)."""
    values = {SWEEP.resources(dataset)[name] for dataset in SWEEP.datasets}
    if len(values) == 1:
        return values.pop()
    return lambda wildcards: SWEEP.resources(wildcards.dataset)[name]


def pure_priority(wildcards):
    return SWEEP.priority(int(wildcards.seed), "pure", wildcards.model)


def kd_priority(wildcards):
    return SWEEP.priority(int(wildcards.seed), wildcards.method, wildcards.student)


def pack_priority(wildcards):
    return SWEEP.priority(int(wildcards.seed), "pack", "")
