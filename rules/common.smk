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


def train_hparams(wildcards):
    """The TrainSpec of one experiment (kdflow.trainer), from the config and the wildcards."""
    recipe = SWEEP.recipe(wildcards.dataset)
    spec = {
        "dataset": wildcards.dataset,
        "data_path": f"data/{wildcards.dataset}/prepared.npz",
        "seed": int(wildcards.seed),
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
    if "student" not in wildcards.keys():
        return {**spec, "model": wildcards.model}
    return {
        **spec,
        "model": wildcards.student,
        "method": wildcards.method,
        "teacher": wildcards.teacher,
        "teacher_dir": f"results/{wildcards.dataset}/pure/{wildcards.teacher}/seed{wildcards.seed}",
        "alpha": float(wildcards.alpha),
        "method_settings": SWEEP.method_settings(wildcards.method),
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
