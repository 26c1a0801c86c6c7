"""The sweep config: schema validation, semantic checks, the list of experiments and each
one's training spec.

This module owns the names a config may use (datasets, models, methods): kdflow.data,
kdflow.models and kdflow.losses register their implementations under these names and check
at import that they implement exactly these (tests/test_config.py asserts it too). It also
builds what each experiment trains with (`TrainSpec`, from `Sweep.spec`), the recipe's keys
taken from the schema, and says which of them make an experiment's identity and which the
students of a pack share. Importing it costs no torch and no numpy: stdlib, PyYAML, and
jsonschema when a config is validated.
"""

from __future__ import annotations

import difflib
import functools
import math
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, make_dataclass
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


def prepared_path(dataset: str) -> str:
    """A dataset as `prepare_dataset` leaves it (rules/data.smk)."""
    return f"data/{dataset}/prepared.npz"


# The roles of a training spec's fields: the experiment's identity (a checkpoint or finished run
# made under another value is refused), and what the students of a pack must share.
IDENTITY, PACK = "identity", "pack"


@functools.cache
def _schema() -> dict[str, Any]:
    """config/schema.yaml, read once (callers only read it)."""
    return yaml.load(SCHEMA_PATH.read_text(), Loader=_LOADER)


def _recipe_keys() -> dict[str, tuple[str, ...]]:
    """The recipe's keys, in the schema's order (`$defs.train`), and the roles of each: part of
    the identity unless the schema says `x-identity: false`, shared by a pack's students
    where it says `x-pack: true`."""
    keys = _schema()["$defs"]["train"]["properties"]
    return {
        key: (IDENTITY,) * s.get("x-identity", True) + (PACK,) * s.get("x-pack", False)
        for key, s in keys.items()
    }


def _recipe_from_dict(cls, d: Mapping[str, Any]):
    """The recipe of a mapping with every key (lists as sorted tuples: a milestone order
    means nothing)."""
    return cls(
        **{k: tuple(sorted(d[k])) if isinstance(d[k], list | tuple) else d[k] for k in RECIPE}
    )


# How one experiment trains (the validated `train` section, with dataset overrides): one field
# per key of the schema's `$defs.train`, the one place the recipe is declared.
RECIPE = _recipe_keys()
Recipe = make_dataclass(
    "Recipe",
    [(key, Any) for key in RECIPE],
    frozen=True,
    namespace={
        "__doc__": "How one experiment trains: a field per key of the schema's train recipe.",
        "__module__": __name__,
        "from_dict": classmethod(_recipe_from_dict),
    },
)


def _role(*roles: str, **kw: Any):
    return field(metadata={"roles": roles}, **kw)


@dataclass(frozen=True, kw_only=True)
class TrainSpec:
    """Everything one experiment trains with: built by `Sweep.spec` from the validated config
    (the rules hand it to the scripts as `params()`), or `from_params` (tests, benchmarks).

    Each field says its roles: `identity` is what a checkpoint and metrics.json record and a
    resumed or finished run must match, `pack_key` what the students of a pack must share."""

    dataset: str = _role(IDENTITY, PACK)
    model: str = _role(IDENTITY)  # the model trained: the student of a KD run
    seed: int = _role(IDENTITY, PACK)
    method: str = _role(IDENTITY, default="pure")
    teacher: str | None = _role(IDENTITY, PACK, default=None)
    alpha: float = _role(IDENTITY, default=0.0)
    method_settings: dict[str, Any] = _role(IDENTITY, default_factory=dict)  # every setting
    recipe: Recipe = _role()  # its keys' roles are the schema's (RECIPE)
    teacher_weights: str | None = _role(IDENTITY, PACK, default=None)  # last | best; KD only
    precision: str = _role(IDENTITY, PACK, default="auto")  # auto | fp32 | bf16 | fp16
    data_path: str = _role(PACK)
    teacher_dir: str | None = _role(PACK, default=None)
    threads: int = _role(PACK, default=1)
    device: str = _role(PACK, default="auto")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrainSpec:
        """A spec from flat parameters (`params()`: the recipe's keys beside the others); a
        recipe key left out takes the schema's default, a method setting too."""
        names = {f.name for f in fields(cls)} - {"recipe"}
        unknown = sorted(set(params) - names - set(RECIPE))
        if unknown:
            raise ValueError(f"unknown training parameters {unknown}; known: {sorted(names)}")
        values = {k: v for k, v in params.items() if k in names}
        defaults = _schema()["properties"]["train"]["properties"]
        recipe = {k: params.get(k, defaults[k]["default"]) for k in RECIPE}
        method = values.get("method", "pure")
        if method == "pure":
            if values.get("method_settings") or values.get("teacher_weights"):
                raise ValueError(f"a pure run has no teacher or method settings: {params}")
        else:
            if not (values.get("teacher") and values.get("teacher_dir")):
                raise ValueError(f"method {method!r} needs a teacher and its teacher_dir")
            values["method_settings"] = method_settings(method, values.get("method_settings"))
            values.setdefault(
                "teacher_weights", _schema()["properties"]["teacher_weights"]["default"]
            )
            values["alpha"] = float(values.get("alpha", 0.0))
        for key in ("teacher_weights", "precision", "device"):
            allowed = _schema()["properties"][key]["enum"]
            if values.get(key) is not None and values[key] not in allowed:
                raise ValueError(f"{key} = {values[key]!r}: must be one of {allowed}")
        return cls(**values, recipe=Recipe.from_dict(recipe))

    def params(self) -> dict[str, Any]:
        """Plain parameters (JSON types) that `from_params` turns back into this spec."""
        flat = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "recipe"}
        return _plain({**flat, **_items(self.recipe)})

    def _with(self, role: str) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "recipe":
                out.update({k: v for k, v in _items(self.recipe).items() if role in RECIPE[k]})
            elif role in f.metadata["roles"]:
                out[f.name] = getattr(self, f.name)
        return out

    @property
    def identity(self) -> dict[str, Any]:
        """What makes the experiment itself, in JSON types (checkpoints and metrics.json)."""
        return _plain(self._with(IDENTITY))

    @property
    def pack_key(self) -> dict[str, Any]:
        """Specs with equal keys can train in one pack: the same batches, teacher, arithmetic
        and process."""
        return self._with(PACK)


def _items(recipe) -> dict[str, Any]:
    return {k: getattr(recipe, k) for k in RECIPE}


def _plain(value: Any) -> Any:
    """Tuples as lists, dicts copied: what JSON and YAML write."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def method_settings(method: str, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`given` settings of `method` with every other one at the schema's default."""
    documented = _schema()["properties"]["methods"]["properties"][method]["properties"]
    defaults = {k: s["default"] for k, s in documented.items() if "default" in s}
    unknown = sorted(set(given or {}) - set(defaults))
    if unknown:
        raise ValueError(
            f"distillation method {method!r} has no setting {', '.join(map(repr, unknown))}; "
            f"its settings: {', '.join(defaults)}"
        )
    return {**defaults, **(given or {})}


# What kdflow 0.1 did where its files say nothing: the identity keys it did not record yet.
def _legacy(saved: Mapping[str, Any]) -> dict[str, Any]:
    kd = saved.get("method") not in (None, "pure")
    legacy = {"teacher_weights": "best" if kd else None, "precision": "auto"}
    if saved.get("method") == "fitnet":
        legacy["method_settings.regressor"] = "conv1x1_bn"
    return legacy


def _flat(identity: Mapping[str, Any]) -> dict[str, Any]:
    """{'method_settings': {'beta': 8}} -> {'method_settings.beta': 8}, for readable diffs."""
    out = {}
    for key, value in identity.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def identity_changes(saved: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """How the identity `saved` in a checkpoint or metrics.json differs from `wanted`
    (`TrainSpec.identity`), as `key: old -> new, ...`; empty if they are the same experiment.
    Keys a file of kdflow 0.1 lacks count as what kdflow 0.1 did (`_legacy`); other keys it
    lacks are not compared, nor are keys of `saved` that are no identity (accuracies)."""
    old = _flat({k: v for k, v in saved.items() if k in wanted})
    for key, value in _legacy(saved).items():
        old.setdefault(key, value)
    new = _flat(wanted)
    changed = [k for k in old if old[k] != new.get(k)]
    return ", ".join(f"{k}: {old[k]!r} -> {new.get(k)!r}" for k in changed)


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
    """The distilled students of one (dataset, teacher, student, seed): every method and alpha
    of one pair, trained in one job with one teacher forward per batch (`packing: teacher`;
    kdflow.pack, docs/PACKS.md)."""

    dataset: str
    seed: int
    teacher: str
    student: str
    students: tuple[Experiment, ...]  # in the sweep's order

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.teacher}-{self.student}/seed{self.seed}"

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


def _copy(value: Any) -> Any:
    """A deep copy in plain YAML types (a value of another type fails here, not in a job)."""
    return yaml.load(yaml.dump(value, Dumper=_DUMPER), Loader=_LOADER)


def _suggestion(given: list[str], known: Iterable[str]) -> str:
    """`did you mean 'epochs'?` for the given names close to a known one ('' if none is)."""
    known = [str(name) for name in known]
    close = {
        name: match[0]
        for name in map(str, given)
        if (match := difflib.get_close_matches(name, known, n=1, cutoff=0.6))
    }
    if not close:
        return ""
    if len(given) == 1:
        return f"did you mean {next(iter(close.values()))!r}?"
    return "did you mean " + ", ".join(f"{m!r} for {n!r}" for n, m in close.items()) + "?"


def _hint(text: str) -> str:
    return f"; {text}" if text else ""


def _unexpected(err) -> list[str]:
    """The keys an additionalProperties error is about."""
    if not isinstance(err.instance, dict):
        return []
    allowed = _keys_here(err.schema)
    return [key for key in err.instance if key not in allowed]


def _keys_here(schema: Mapping[str, Any]) -> list[str]:
    return list(schema.get("properties", {}))


def _schema_errors(config: dict[str, Any]) -> list[str]:
    errors = []
    for err in sorted(_validator().iter_errors(config), key=lambda e: list(e.absolute_path)):
        where = _where(list(err.absolute_path))
        if err.validator == "additionalProperties":
            where = _where(list(err.absolute_path)) if err.absolute_path else "(top level)"
            errors.append(
                f"{where}: {err.message}"
                f"{_hint(_suggestion(_unexpected(err), _keys_here(err.schema)))} "
                "(check the spelling against config/schema.yaml)"
            )
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


def _unknown(where: str, kind: str, name: str, known: list[str]) -> str:
    hint = _suggestion([name], known)
    return f"{where}: unknown {kind}{f' ({hint})' if hint else ''}; known: {', '.join(known)}"


def _unknown_names(config: dict[str, Any]) -> list[str]:
    """Names the config uses that kdflow does not know (the names above: no torch needed).
    Checked also in a config the schema refused (every problem at once): what is not a list
    or mapping of names here is the schema's to report."""
    errors = []
    models, known_models = config.get("models"), model_names()
    for i, model in enumerate(models if isinstance(models, list) else []):
        if isinstance(model, str) and model not in known_models:
            errors.append(_unknown(f"models[{i}] = {model!r}", "model", model, known_models))
    for key, known, kind in (
        ("datasets", dataset_names(), "dataset"),
        ("methods", method_names(), "method"),
    ):
        names = config.get(key)
        for name in names if isinstance(names, dict) else []:
            if name not in known and not (key == "methods" and name == "pure"):
                errors.append(_unknown(f"{key}.{name}", kind, name, known))
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

        for name, settings in pair.get("methods", {}).items():
            if name not in config["methods"]:
                errors.append(
                    f"pairs[{i}].methods.{name}: not a method of this sweep "
                    f"({', '.join(config['methods'])}): add it to `methods`"
                )
            elif "alphas" in settings:
                errors.append(f"pairs[{i}].methods.{name}.alphas: alphas are the sweep's")

    for i, alpha in enumerate(config["alphas"]):
        if math.isnan(alpha):  # NaN passes the schema's range checks: every comparison is false
            errors.append(f"alphas[{i}] = {alpha!r}: must be a number between 0 and 1")
    for name, settings in config["methods"].items():
        where = f"methods.{name}.alphas" if "alphas" in settings else "alphas"
        alphas = settings.get("alphas", config["alphas"])
        if config["pairs"] and not alphas:
            errors.append(f"{where}: empty, but pairs are listed: give at least one alpha")
        for i, alpha in enumerate(settings.get("alphas", [])):
            if math.isnan(alpha):
                errors.append(f"{where}[{i}] = {alpha!r}: must be a number between 0 and 1")

    for name, settings in config["datasets"].items():
        recipe = {**config["train"], **settings.get("train", {})}
        for j, milestone in enumerate(recipe["lr_milestones"]):
            if milestone >= recipe["epochs"]:
                where = "datasets." + name + ".train" if "train" in settings else "train"
                errors.append(
                    f"{where}.lr_milestones[{j}] = {milestone}: not before the last epoch "
                    f"({recipe['epochs']}); it would never take effect"
                )
    return list(dict.fromkeys(errors))  # a problem that several keys share, once


def merged_keys(default: Mapping[str, Any], given: Mapping[str, Any], where: str = "") -> list[str]:
    """The keys (`datasets.cifar100`, `pairs`) a `--configfile` without
    `--replace-workflow-config` takes over from the Snakefile's default config: Snakemake
    merges the two (the given file's values win, mapping by mapping), so whatever the default
    has and the given file does not is in the sweep too."""
    keys = []
    for key, value in default.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in given:
            keys.append(path)
        elif isinstance(value, Mapping) and isinstance(given[key], Mapping):
            keys += merged_keys(value, given[key], path)
    return keys


def _pair_methods(config: Mapping[str, Any]) -> list[Any]:
    """Each pair's `methods` as given (validation fills in defaults, which a pair's own
    settings must not carry: they would override the sweep's)."""
    pairs = config.get("pairs")
    if not isinstance(pairs, list):
        return []
    return [_copy(p.get("methods")) if isinstance(p, dict) else None for p in pairs]


class Sweep:
    """A validated config and the experiments it expands to."""

    def __init__(
        self,
        config: Mapping[str, Any],
        source: str = "config",
        files: Iterable[str | Path] = (),
        check_names: bool = True,
        consequence: str = "nothing was run or submitted",
    ):
        """Validate `config`, read from `files` (checked for keys given twice). check_names=False
        accepts models, datasets and methods kdflow does not know: the dashboard shows whatever
        a config names (the workflow has refused it already if they are unknown). Either way
        no torch is imported: the names are this module's. `consequence`: what the caller
        did not do because of the problems, said after their count."""
        self.config = _copy(dict(config))
        self._recipes: dict[str, Recipe] = {}
        given = _pair_methods(self.config)
        errors = _file_errors(list(files)) + _schema_errors(self.config)
        if errors:  # and the names, also in a config of the wrong shape: every problem at once
            errors += _unknown_names(self.config) if check_names else []
        else:
            for pair, methods in zip(self.config["pairs"], given, strict=True):
                if methods is not None:
                    pair["methods"] = methods
            errors = _semantic_errors(self.config, check_names)
        if errors:
            raise ConfigError(
                f"{source}: {len(errors)} problem(s); {consequence}:\n  - "
                + "\n  - ".join(dict.fromkeys(errors))
            )

    @staticmethod
    def load(path: str | Path) -> dict[str, Any]:
        """The mapping a config file holds, unvalidated; ConfigError naming the file if it
        cannot be read or is no mapping."""
        path = Path(path)
        try:
            data = yaml.load(path.read_text(), Loader=_LOADER)
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the config: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the config must be a mapping of keys, got {data!r}")
        return data

    @classmethod
    def from_file(cls, path: str | Path, check_names: bool = True, **options: Any) -> Sweep:
        data = cls.load(path)
        return cls(data, source=str(path), files=[path], check_names=check_names, **options)

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
        """Every alpha some method is trained at, as paths write it."""
        return list(dict.fromkeys(a for m in self.methods for a in self.alphas_of(m)))

    def alphas_of(self, method: str) -> list[str]:
        """The alphas `method` is trained at: its own `alphas`, else the sweep's."""
        alphas = self.config["methods"][method].get("alphas", self.config["alphas"])
        return [alpha_label(a) for a in alphas]

    @property
    def pairs(self) -> list[tuple[str, str]]:
        return [(p["teacher"], p["student"]) for p in self.config["pairs"]]

    @property
    def teachers(self) -> set[str]:
        return {teacher for teacher, _ in self.pairs}

    def recipe(self, dataset: str) -> Recipe:
        if dataset not in self._recipes:  # once: a dry run asks for every job's spec
            overrides = self.config["datasets"][dataset].get("train", {})
            self._recipes[dataset] = Recipe.from_dict({**self.config["train"], **overrides})
        return self._recipes[dataset]

    def resources(self, dataset: str) -> dict[str, int]:
        settings = self.config["datasets"][dataset]
        return {"mem_mb": settings["mem_mb"], "runtime": settings["runtime"]}

    @property
    def packing(self) -> str:
        """'teacher': the students of one (dataset, teacher, student, seed) train as one job;
        'none'."""
        return self.config["packing"]

    def pack_students(self) -> list[tuple[str, str]]:
        """(method, alpha) of every student of a pair, in the sweep's order: the same list for
        every pair (a pack job's outputs are a fixed list of paths)."""
        return [(method, alpha) for method in self.methods for alpha in self.alphas_of(method)]

    def pack(self, dataset: str, seed: int, teacher: str, student: str) -> Pack:
        """The pack of one pair on one (dataset, seed)."""
        return Pack(
            dataset,
            seed,
            teacher,
            student,
            tuple(
                Experiment(dataset, seed, method, student, teacher, alpha)
                for method, alpha in self.pack_students()
            ),
        )

    def packs(self) -> list[Pack]:
        """Every pack of the sweep (whatever `packing` says), seed-major like experiments()."""
        return [
            self.pack(dataset, seed, teacher, student)
            for seed in self.seeds
            for dataset in self.datasets
            for teacher, student in self.pairs
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

    def pack_resources(self, dataset: str) -> dict[str, int]:
        """A pack job's memory and walltime: mem_mb plus pack_mem_mb for each student after
        the first, and n x runtime up to pack_runtime (default: runtime)."""
        settings, n = self.config["datasets"][dataset], len(self.pack_students())
        runtime = settings["runtime"]
        longest = settings.get("pack_runtime", runtime)
        return {
            "mem_mb": settings["mem_mb"] + (n - 1) * settings["pack_mem_mb"],
            "runtime": min(n * runtime, longest),
        }

    def method_settings(self, method: str, pair: tuple[str, str] | None = None) -> dict[str, Any]:
        """The settings of `method`, every one filled in from the schema, the pair's own
        (`pairs[i].methods`) merged over the sweep's; `alphas` is no setting."""
        settings = dict(self.config["methods"][method])
        for p in self.config["pairs"]:
            if pair == (p["teacher"], p["student"]):
                settings.update(p.get("methods", {}).get(method, {}))
        settings.pop("alphas", None)
        return settings

    def spec(self, experiment: Experiment) -> TrainSpec:
        """What `experiment` trains with (one thread: the job's script sets the count)."""
        e = experiment
        common = dict(
            dataset=e.dataset,
            model=e.model,
            seed=e.seed,
            recipe=self.recipe(e.dataset),
            precision=self.config["precision"],
            data_path=prepared_path(e.dataset),
            device=self.config["device"],
        )
        if e.is_pure:
            return TrainSpec(**common)
        return TrainSpec(
            **common,
            method=e.method,
            teacher=e.teacher,
            alpha=float(e.alpha),
            method_settings=self.method_settings(e.method, (e.teacher, e.model)),
            teacher_weights=self.config["teacher_weights"],
            teacher_dir=e.teacher_directory,
        )

    def experiments(self) -> list[Experiment]:
        """Every training job, seed-major so that the queue fills in the order results matter."""
        out = []
        for seed in self.seeds:
            for dataset in self.datasets:
                out += [Experiment(dataset, seed, "pure", model) for model in self.models]
                out += [
                    Experiment(dataset, seed, method, student, teacher, alpha)
                    for teacher, student in self.pairs
                    for method, alpha in self.pack_students()
                ]
        return out

    def priority(self, seed: int, method: str, model: str) -> int:
        """Teachers first, then other baselines, then students; lower seeds before later ones."""
        tier = 0 if method != "pure" else (2 if model in self.teachers else 1)
        position = self.seeds.index(seed)
        return tier * len(self.seeds) + (len(self.seeds) - 1 - position)
