# The sweep: validate the config, expand it to experiments, and give rules their parameters.

import os
import sys
from pathlib import Path

# kdflow from this workflow's own src/, installed or not: the controller and every job process
# parse this file, and Snakemake appends their sys.path to each `script:`'s, so jobs in a conda
# environment (envs/kdflow.yaml holds no kdflow) import it from here too.
_SRC = str(Path(workflow.main_snakefile).parent / "src")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

from kdflow.config import Experiment, Sweep, merged_keys
from snakemake.utils import update_config


# The files the config comes from: with --replace-workflow-config, the --configfile(s) alone
# (the Snakefile's `configfile:` is read, then discarded); without, all of them, merged.
def _shown(path):
    """A config file's path as the user reads it: relative where it is under the workdir."""
    relative = os.path.relpath(path)
    return relative if not relative.startswith("..") else str(path)


_GIVEN = [_shown(f) for f in workflow.config_settings.configfiles]
_REPLACED = workflow.config_settings.replace_workflow_config and bool(_GIVEN)
CONFIG_FILES = (
    _GIVEN if _REPLACED else list(dict.fromkeys(map(_shown, workflow.configfiles)))
)

# A --configfile merged into the default sweep runs the default's datasets, models and pairs
# too: say so once, in the controller (jobs parse this file again), naming what it added.
if _GIVEN and not _REPLACED and workflow.is_main_process:
    _default = [f for f in CONFIG_FILES if f not in _GIVEN]
    _given = {}
    for _file in _GIVEN:
        update_config(_given, Sweep.load(_file))  # as Snakemake merges them
    _added = merged_keys(Sweep.load(_default[0]), _given) if _default else []
    if _added:
        print(
            f"kdflow: {' + '.join(_GIVEN)} was merged into {_default[0]} (Snakemake's default "
            f"without --replace-workflow-config), which adds: {', '.join(_added)}. To run "
            f"{' + '.join(_GIVEN)} alone, add --replace-workflow-config.",
            file=sys.stderr,
        )

# Validates against config/schema.yaml and checks what a schema cannot (pairs naming models
# that are not trained as pure, duplicates, unknown names); raises before any job exists.
SWEEP = Sweep(
    config,
    source=" + ".join(CONFIG_FILES) or "config",
    files=CONFIG_FILES,  # checked for keys given twice
)
EXPERIMENTS = SWEEP.experiments()
if (
    workflow.is_main_process
):  # what this run reads, and where (jobs parse this file again)
    print(
        f"kdflow: sweep {' + '.join(CONFIG_FILES) or 'config'}, {len(EXPERIMENTS)} "
        f"experiments, in {os.getcwd()}",
        file=sys.stderr,
    )


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


def _gpus_asked():
    """Rules a profile or the command line gives GPUs (`gpu`/`gpus` in set-resources)."""
    asked = {}
    for rule, resources in (
        workflow.resource_settings.overwrite_resources or {}
    ).items():
        for name in ("gpu", "gpus"):
            value = getattr(resources.get(name), "value", resources.get(name))
            if isinstance(value, (int, float)) and value > 0:
                asked[rule] = f"{name}={value:g}"
    return asked


def check_slurm_gpus():
    """On Slurm, jobs that ask for a GPU where the partition has none are each refused by
    sbatch (`Invalid generic resource (gres) specification`): say it once, before the first
    job, with the switch for a CPU-only partition. profiles/pbs gets the same from the PBS
    plugin (an unknown resource stops the run at the first qsub)."""
    asked = _gpus_asked()
    if getattr(workflow.executor_plugin, "name", None) != "slurm" or not asked:
        return
    import subprocess

    def sinfo(*args):
        try:
            return subprocess.run(
                ["sinfo", "-h", *args], capture_output=True, text=True, timeout=60
            ).stdout
        except (OSError, subprocess.TimeoutExpired):
            return None

    partition = os.environ.get("SNAKEMAKE_SLURM_PARTITION", "")
    listing = sinfo("-o", "%P %G")
    if not listing:  # no answer: the plugin will say what is wrong with Slurm
        return
    gres = {}
    for line in listing.splitlines():
        name, _, resources = line.partition(" ")
        if name.endswith("*"):
            name = name[:-1]
            partition = partition or name
        gres.setdefault(name, set()).add(resources.strip())
    if partition not in gres or any("gpu" in g for g in gres[partition]):
        return
    rules = ", ".join(f"{rule} ({what})" for rule, what in sorted(asked.items()))
    switch = " ".join(f"{rule}:gpu=0" for rule in sorted(asked))
    raise WorkflowError(
        f"Slurm partition {partition!r} has no GPUs (sinfo: {', '.join(sorted(gres[partition]))}), "
        f"but the profile gives GPUs to {rules}: sbatch would refuse every one of those jobs. "
        f"Nothing was submitted. On a CPU-only partition run with --set-resources {switch}; "
        "or choose a partition with GPUs: export SNAKEMAKE_SLURM_PARTITION=<name>."
    )


onstart:
    check_slurm_gpus()
