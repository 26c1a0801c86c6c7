"""The sweep config: schema validation, semantic checks, and the list of experiments.

This module owns the names a config may use (datasets, models, methods): kdflow.data,
kdflow.models and kdflow.losses register their implementations under these names and check
at import that they implement exactly these (tests/test_config.py asserts it too). Importing it
costs no torch and no numpy: stdlib, PyYAML, and jsonschema when a config is validated.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from kdflow.architectures import ARCHITECTURES

# The schema ships inside the package (it works installed anywhere, editable or not);
# config/schema.yaml, where users and messages look for it, is a symlink to this file.
SCHEMA_PATH = Path(__file__).with_name("schema.yaml")

# The datasets kdflow.data can prepare, in the order the dashboard and docs list them.
DATASET_NAMES = ("cifar10", "cifar100", "svhn", "tinyimagenet", "digits")

# Names end up in paths and PBS job names; '-' is reserved to join teacher and student.
NAME_PATTERN = r"[a-z0-9_]+"

# libyaml's safe loader and dumper where PyYAML has them (about 10x faster; same results)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


class ConfigError(ValueError):
    """A config that must not run; the message names the key, the bad value and the fix."""


# Every experiment directory lives under this one, relative to the working directory.
RESULTS_DIR = "results"


@dataclass(frozen=True)
class Recipe:
    """How one experiment trains (the validated `train` section, with dataset overrides)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_milestones: tuple[int, ...]
    lr_decay: float
    crop_padding: int
    flip: bool
    eval_batch_size: int

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Recipe:
        values = dict(d)
        values["lr_milestones"] = tuple(sorted(values["lr_milestones"]))
        return cls(**{f.name: values[f.name] for f in fields(cls)})


@dataclass(frozen=True, order=True)
class Experiment:
    """One training job: a pure baseline (method 'pure') or a teacher -> student distillation."""

    dataset: str
    seed: int
    method: str
    model: str  # the model trained: the student of a KD run
    teacher: str | None = None
    alpha: str | None = None  # as written in paths: see alpha_label()

    @property
    def is_pure(self) -> bool:
        return self.method == "pure"

    @property
    def directory(self) -> str:
        if self.is_pure:
            return f"{RESULTS_DIR}/{self.dataset}/pure/{self.model}/seed{self.seed}"
        return (
            f"{RESULTS_DIR}/{self.dataset}/{self.method}/{self.teacher}-{self.model}"
            f"/alpha{self.alpha}/seed{self.seed}"
        )

    @property
    def target(self) -> str:
        return f"{self.directory}/completed"

    @property
    def teacher_directory(self) -> str | None:
        if self.is_pure:
            return None
        return f"{RESULTS_DIR}/{self.dataset}/pure/{self.teacher}/seed{self.seed}"


@dataclass(frozen=True)
class Pack:
    """The distilled students of one (dataset, teacher, seed), trained in one job with one
    teacher forward per batch (`packing: teacher`; kdflow.pack, docs/PACKS.md)."""

    dataset: str
    seed: int
    teacher: str
    students: tuple[Experiment, ...]  # in the sweep's order

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.teacher}/seed{self.seed}"

    @property
    def targets(self) -> list[str]:
        """The job's outputs: every student's `completed`."""
        return [student.target for student in self.students]


def alpha_label(alpha: float) -> str:
    """Write alpha the way a config does: 0.25 -> '0.25', 0.5 -> '0.5', 1 -> '1.0'."""
    text = repr(float(alpha))
    if "e" in text:  # tiny alphas such as 1e-05: spell them out, paths must not contain '-'
        text = f"{float(alpha):.12f}".rstrip("0")
    return text if not text.endswith(".") else text + "0"


def _where(path: Iterator[Any] | list[Any]) -> str:
    """Render a jsonschema path as a config key: ['pairs', 0, 'teacher'] -> pairs[0].teacher."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _validator():
    import jsonschema

    base = jsonschema.Draft202012Validator

    def fill_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = _copy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    def is_integer(checker, instance):
        # JSON Schema counts 4.0 as an integer; a float here would reach range() and paths
        return isinstance(instance, int) and not isinstance(instance, bool)

    filling = jsonschema.validators.extend(
        base,
        {"properties": fill_defaults},
        type_checker=base.TYPE_CHECKER.redefine("integer", is_integer),
    )
    return filling(_schema())


def duplicate_keys(text: str) -> list[str]:
    """Keys given twice in one mapping of a YAML (or JSON) text, which loaders silently
    resolve by keeping the last one."""
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError:
        return []  # a syntax error: the loader reports it
    errors: list[str] = []

    def walk(node, where: str) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag.endswith(":merge"):
                    walk(value, where)
                    continue
                path = f"{where}.{key.value}" if where else key.value
                line = key.start_mark.line + 1
                first = seen.setdefault((key.tag, key.value), line)
                if first != line:
                    errors.append(
                        f"{path}: given twice (lines {first} and {line}); only the last would "
                        "count: remove one"
                    )
                walk(value, path)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{where}[{i}]")

    walk(root, "")
    return errors


def _file_errors(files) -> list[str]:
    errors = []
    for file in files:
        try:
            text = Path(file).read_text()
        except (OSError, UnicodeDecodeError):
            continue  # reading the config is Snakemake's (or from_file's) business
        prefix = f"{file}: " if len(files) > 1 else ""
        errors += [prefix + error for error in duplicate_keys(text)]
    return errors


@functools.cache
def _schema() -> dict[str, Any]:
    """config/schema.yaml, read once (callers only read it)."""
    return yaml.load(SCHEMA_PATH.read_text(), Loader=_LOADER)


def _copy(value: Any) -> Any:
    """A deep copy in plain YAML types (a value of another type fails here, not in a job)."""
    return yaml.load(yaml.dump(value, Dumper=_DUMPER), Loader=_LOADER)


def _schema_errors(config: dict[str, Any]) -> list[str]:
    errors = []
    for err in sorted(_validator().iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = _where(list(err.absolute_path))
        if err.validator == "additionalProperties":
            where = _where(list(err.absolute_path)) if err.absolute_path else "(top level)"
            errors.append(f"{where}: {err.message} (check the spelling against config/schema.yaml)")
        elif err.validator == "pattern":
            what = "key" if "propertyNames" in err.schema_path else "value"
            errors.append(
                f"{where}: {what} {err.instance!r} is not a valid name: use only lower-case "
                "letters, digits and '_' (names become paths and PBS job names)"
            )
        else:
            errors.append(f"{where} = {err.instance!r}: {err.message}")
    return errors


def dataset_names() -> list[str]:
    """The datasets a config may name; kdflow.data has one reader per name."""
    return list(DATASET_NAMES)


def model_names() -> list[str]:
    """The models a config may name, grouped by family: the keys of kdflow.architectures'
    torch-free table, from which kdflow.models builds the networks."""
    return list(ARCHITECTURES)


def method_names() -> list[str]:
    """The distillation methods a config may name: those config/schema.yaml documents, each
    with its settings; kdflow.losses registers one class per name."""
    return sorted(_schema()["properties"]["methods"]["properties"])


class RegistryMismatch(RuntimeError):
    """A registry of implementations (datasets, models, methods) that differs from the names
    this module owns: a bug in kdflow, raised when the registry's module is imported."""


def check_registry(kind: str, registered: Iterable[str], names: Iterable[str]) -> None:
    """Raise RegistryMismatch naming what differs between the `kind`s a module implements and
    the names this module lets a config use."""
    registered, names = list(registered), list(names)
    missing = [n for n in names if n not in registered]
    extra = [n for n in registered if n not in names]
    if missing or extra:
        problems = []
        if missing:
            problems.append(f"configs may name {missing}, which nothing implements")
        if extra:
            problems.append(f"{extra} are implemented, but kdflow.config does not know them")
        where = {
            "method": "config/schema.yaml (methods.<name>, with its settings)",
            "dataset": "kdflow.config.DATASET_NAMES",
            "model": "kdflow.architectures.ARCHITECTURES",
        }.get(kind, "kdflow.config")
        raise RegistryMismatch(
            f"{kind} names disagree: {'; '.join(problems)}. The names live in {where}: "
            "add or remove the name there and in the registry together"
        )


def _unknown_names(config: dict[str, Any]) -> list[str]:
    """Names the config uses that kdflow does not know (the names above: no torch needed)."""
    errors = []
    known_models = model_names()
    for i, model in enumerate(config["models"]):
        if model not in known_models:
            errors.append(
                f"models[{i}] = {model!r}: unknown model; known: {', '.join(known_models)}"
            )
    known_datasets = dataset_names()
    for name in config["datasets"]:
        if name not in known_datasets:
            errors.append(f"datasets.{name}: unknown dataset; known: {', '.join(known_datasets)}")
    known_methods = method_names()
    for name in config["methods"]:
        if name not in known_methods and name != "pure":
            errors.append(f"methods.{name}: unknown method; known: {', '.join(known_methods)}")
    return errors


def _semantic_errors(config: dict[str, Any], check_names: bool) -> list[str]:
    errors = _unknown_names(config) if check_names else []
    models = config["models"]
    if "pure" in config["methods"]:
        errors.append("methods.pure: 'pure' is reserved for the baselines listed in `models`")

    seen_pairs: dict[tuple[str, str], int] = {}
    for i, pair in enumerate(config["pairs"]):
        teacher, student = pair["teacher"], pair["student"]
        for role, model in (("teacher", teacher), ("student", student)):
            if model not in models:
                errors.append(
                    f"pairs[{i}].{role} = {model!r}: not trained as pure; add it to `models` "
                    "(a student needs its teacher's completed pure run, and the plots need the "
                    "student alone)"
                )
        if teacher == student:
            errors.append(f"pairs[{i}]: teacher and student are both {teacher!r}")
        first = seen_pairs.setdefault((teacher, student), i)
        if first != i:
            errors.append(f"pairs[{i}] = {teacher}-{student}: duplicate of pairs[{first}]")

    for i, alpha in enumerate(config["alphas"]):
        if math.isnan(alpha):  # NaN passes the schema's range checks: every comparison is false
            errors.append(f"alphas[{i}] = {alpha!r}: must be a number between 0 and 1")
    if config["pairs"] and not config["alphas"]:
        errors.append("alphas: empty, but pairs are listed: give at least one alpha")

    for name, settings in config["datasets"].items():
        recipe = {**config["train"], **settings.get("train", {})}
        for j, milestone in enumerate(recipe["lr_milestones"]):
            if milestone >= recipe["epochs"]:
                where = "datasets." + name + ".train" if "train" in settings else "train"
                errors.append(
                    f"{where}.lr_milestones[{j}] = {milestone}: not before the last epoch "
                    f"({recipe['epochs']}); it would never take effect"
                )
    return errors


class Sweep:
    """A validated config and the experiments it expands to."""

    def __init__(
        self,
        config: Mapping[str, Any],
        source: str = "config",
        files: Iterable[str | Path] = (),
        check_names: bool = True,
    ):
        """Validate `config`, read from `files` (checked for keys given twice). check_names=False
        accepts models, datasets and methods kdflow does not know: the dashboard shows whatever
        a config names (the workflow has refused it already if they are unknown). Either way
        no torch is imported: the names are this module's."""
        self.config = _copy(dict(config))
        errors = _file_errors(list(files)) + _schema_errors(self.config)
        if not errors:
            errors = _semantic_errors(self.config, check_names)
        if errors:
            raise ConfigError(
                f"{source}: {len(errors)} problem(s); nothing was run or submitted:\n  - "
                + "\n  - ".join(errors)
            )

    @classmethod
    def from_file(cls, path: str | Path, check_names: bool = True) -> Sweep:
        path = Path(path)
        try:
            data = yaml.load(path.read_text(), Loader=_LOADER)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the config: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys, got {data!r}")
        return cls(data, source=str(path), files=[path], check_names=check_names)

    @property
    def seeds(self) -> list[int]:
        return list(self.config["seeds"])

    @property
    def datasets(self) -> list[str]:
        return list(self.config["datasets"])

    @property
    def models(self) -> list[str]:
        return list(self.config["models"])

    @property
    def methods(self) -> list[str]:
        return list(self.config["methods"])

    @property
    def alphas(self) -> list[str]:
        return [alpha_label(a) for a in self.config["alphas"]]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(p["teacher"], p["student"]) for p in self.config["pairs"]]

    @property
    def teachers(self) -> set[str]:
        return {teacher for teacher, _ in self.pairs}

    def recipe(self, dataset: str) -> Recipe:
        overrides = self.config["datasets"][dataset].get("train", {})
        return Recipe.from_dict({**self.config["train"], **overrides})

    def resources(self, dataset: str) -> dict[str, int]:
        settings = self.config["datasets"][dataset]
        return {"mem_mb": settings["mem_mb"], "runtime": settings["runtime"]}

    @property
    def packing(self) -> str:
        """'teacher': the students of one (dataset, teacher, seed) train as one job; 'none'."""
        return self.config["packing"]

    def pack_students(self, teacher: str) -> list[tuple[str, str, str]]:
        """(method, student, alpha) of every student of `teacher`, in the sweep's order."""
        return [
            (method, student, alpha)
            for pair_teacher, student in self.pairs
            if pair_teacher == teacher
            for method in self.methods
            for alpha in self.alphas
        ]

    def packs(self) -> list[Pack]:
        """Every pack of the sweep (whatever `packing` says), seed-major like experiments()."""
        teachers = list(dict.fromkeys(teacher for teacher, _ in self.pairs))
        return [
            Pack(
                dataset,
                seed,
                teacher,
                tuple(
                    Experiment(dataset, seed, method, student, teacher, alpha)
                    for method, student, alpha in self.pack_students(teacher)
                ),
            )
            for seed in self.seeds
            for dataset in self.datasets
            for teacher in teachers
        ]

    def jobs(self) -> dict[Experiment, tuple[str, ...]]:
        """Each experiment's job, as the outputs of that job: its own `completed`, or with
        `packing: teacher` every `completed` of its pack (a PBS job's name and registry
        record are the executor's function of these outputs)."""
        jobs = {experiment: (experiment.target,) for experiment in self.experiments()}
        if self.packing == "teacher":
            for pack in self.packs():
                outputs = tuple(pack.targets)
                jobs.update(dict.fromkeys(pack.students, outputs))
        return jobs

    def pack_resources(self, dataset: str, students: int) -> dict[str, int]:
        """A pack job's memory and walltime: mem_mb plus pack_mem_mb for each student after
        the first, and n x runtime up to pack_runtime (default: runtime)."""
        settings = self.config["datasets"][dataset]
        runtime = settings["runtime"]
        longest = settings.get("pack_runtime", runtime)
        return {
            "mem_mb": settings["mem_mb"] + (students - 1) * settings["pack_mem_mb"],
            "runtime": min(students * runtime, longest),
        }

    def method_settings(self, method: str) -> dict[str, Any]:
        """The validated `methods.<method>` entry, every setting filled in from the schema."""
        return dict(self.config["methods"][method])

    def experiments(self) -> list[Experiment]:
        """Every training job, seed-major so that the queue fills in the order results matter."""
        out = []
        for seed in self.seeds:
            for dataset in self.datasets:
                out += [Experiment(dataset, seed, "pure", model) for model in self.models]
                out += [
                    Experiment(dataset, seed, method, student, teacher, alpha)
                    for teacher, student in self.pairs
                    for method in self.methods
                    for alpha in self.alphas
                ]
        return out

    def priority(self, seed: int, method: str, model: str) -> int:
        """Teachers first, then other baselines, then students; lower seeds before later ones."""
        tier = 0 if method != "pure" else (2 if model in self.teachers else 1)
        position = self.seeds.index(seed)
        return tier * len(self.seeds) + (len(self.seeds) - 1 - position)
