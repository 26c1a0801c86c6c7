"""The config is validated before anything runs; every error names the key and the bad value."""

import copy
import importlib.util
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from kdflow import config as kdconfig
from kdflow.config import (
    ConfigError,
    Experiment,
    RegistryMismatch,
    Sweep,
    TrainSpec,
    alpha_label,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def good():
    return yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())


def test_shipped_configs_are_valid():
    real = Sweep.from_file(ROOT / "config" / "experiments.yaml")
    demo = Sweep.from_file(ROOT / "config" / "demo.yaml")
    # 3 seeds x 3 datasets x (4 models + 2 pairs x 3 methods x 4 alphas)
    assert len(real.experiments()) == 3 * 3 * (4 + 2 * 3 * 4) == 252
    assert sorted(real.methods) == ["dkd", "fitnet", "logit"]
    assert len(demo.experiments()) == 2 * 1 * (2 + 1 * 1 * 2)


def test_defaults_are_filled_from_the_schema(good):
    del good["train"]
    del good["methods"]
    sweep = Sweep(good)
    assert sweep.recipe("digits").epochs == 240
    assert sweep.recipe("digits").lr_milestones == (150, 180, 210)
    assert sweep.method_settings("logit") == {"temperature": 4}
    assert sweep.resources("digits") == {"mem_mb": 2000, "runtime": 10}


def test_packs_hold_every_student_of_one_teacher_and_ask_for_resources_by_their_size():
    sweep = Sweep.from_file(ROOT / "config" / "experiments.yaml")
    assert sweep.packing == "teacher"  # the default, and what the shipped config says
    packs = sweep.packs()
    assert len(packs) == 3 * 3 * 2  # (seed, dataset, pair)
    students = [s for pack in packs for s in pack.students]
    kd = [e for e in sweep.experiments() if not e.is_pure]
    assert sorted(students) == sorted(kd) and len(set(students)) == len(kd) == 216
    for pack in packs:
        assert len(pack.students) == 12
        assert {(s.dataset, s.seed, s.teacher, s.model) for s in pack.students} == {
            (pack.dataset, pack.seed, pack.teacher, pack.student)
        }
    jobs = sweep.jobs()
    assert len(set(jobs.values())) == 36 + 18  # the pure runs' jobs and the packs
    pack = packs[0]
    assert all(jobs[s] == tuple(pack.targets) for s in pack.students)
    # cifar100: 24000 MB + 11 x 1000 MB; 12 x 180 min, at most pack_runtime = 720
    assert sweep.pack_resources("cifar100") == {"mem_mb": 35000, "runtime": 720}
    three = Sweep({**sweep.config, "alphas": [0.5]})  # packs of 3 students
    assert three.pack_resources("cifar100") == {"mem_mb": 26000, "runtime": 540}
    # tinyimagenet sets no pack_runtime: a pack asks for runtime, as one student's job does
    assert sweep.pack_resources("tinyimagenet")["runtime"] == 720

    none = Sweep({**sweep.config, "packing": "none"})
    assert all(jobs == (e.target,) for e, jobs in none.jobs().items())


def test_method_settings_are_filled_from_the_schema(good):
    good["methods"] = {"logit": {}, "dkd": {"beta": 6}, "fitnet": {"hint_layer": 2}}
    sweep = Sweep(good)
    assert sweep.method_settings("dkd") == {
        "temperature": 4,
        "beta": 6,
        "tckd_weight": 1,
        "ce_weight": 1,
        "warmup": 20,
    }
    assert sweep.method_settings("fitnet") == {
        "hint_layer": 2,
        "regressor": "convreg",
        "hint_weight": 100,
        "ce_weight": 1,
    }
    assert len(sweep.experiments()) == 2 * (2 + 1 * 3 * 2)


def test_dataset_overrides_only_what_it_names(good):
    good["datasets"]["digits"]["train"] = {"epochs": 12, "lr_milestones": [6]}
    recipe = Sweep(good).recipe("digits")
    assert (recipe.epochs, recipe.lr_milestones, recipe.lr) == (12, (6,), good["train"]["lr"])


def test_experiment_paths_follow_the_contract():
    pure = Experiment("cifar100", 1, "pure", "resnet8x4")
    kd = Experiment("cifar100", 2, "logit", "resnet8x4", "resnet32x4", "0.25")
    assert pure.target == "results/cifar100/pure/resnet8x4/seed1/completed"
    assert kd.target == "results/cifar100/logit/resnet32x4-resnet8x4/alpha0.25/seed2/completed"
    assert kd.teacher_directory == "results/cifar100/pure/resnet32x4/seed2"


@pytest.mark.parametrize(
    "alpha, label",
    [(0.25, "0.25"), (0.5, "0.5"), (0.95, "0.95"), (1, "1.0"), (0, "0.0"), (1e-5, "0.00001")],
)
def test_alpha_is_written_as_the_config_writes_it(alpha, label):
    assert alpha_label(alpha) == label


def test_priorities_put_teachers_first_and_lower_seeds_before_later_ones():
    sweep = Sweep.from_file(ROOT / "config" / "experiments.yaml")
    p = sweep.priority
    assert p(0, "pure", "resnet32x4") > p(0, "pure", "resnet8x4") > p(0, "logit", "resnet8x4")
    assert p(2, "pure", "resnet32x4") > p(0, "pure", "resnet8x4")
    assert p(0, "logit", "resnet8x4") > p(1, "logit", "resnet8x4") > p(2, "logit", "resnet8x4")


def _set(config, dotted, value):
    *parents, last = dotted
    node = config
    for key in parents:
        node = node[key]
    if value is DELETE:
        del node[last]
    else:
        node[last] = value


DELETE = object()

# (what is changed, the new value, words the message must contain)
BAD = [
    (("seeds",), "0", ["seeds", "'0'", "not of type 'array'"]),
    (("seeds",), [0, -1], ["seeds[1]", "-1"]),
    (("seeds",), [1, 1], ["seeds", "non-unique"]),
    (("seeds",), DELETE, ["'seeds' is a required property"]),
    (("alphas",), [0.5, 1.5], ["alphas[1]", "1.5", "maximum"]),
    (("alphas",), [-0.1], ["alphas[0]", "-0.1"]),
    (("alphas",), ["half"], ["alphas[0]", "'half'", "not of type 'number'"]),
    (("alphas",), [0.5, 0.50], ["alphas", "non-unique"]),
    (("alphas",), [float("nan")], ["alphas[0]", "nan", "between 0 and 1"]),
    (("models",), ["resnet20", "resnet8", "resnet9000"], ["models[2]", "resnet9000", "unknown"]),
    (("models",), ["resnet20", "ResNet8"], ["models[1]", "value 'ResNet8'", "lower-case"]),
    (("models",), ["resnet20", "../etc"], ["models[1]", "../etc"]),
    (("models",), ["resnet20", "resnet8; rm -rf ~"], ["models[1]", "rm -rf"]),
    (("pairs", 0, "teacher"), "wrn_40_2", ["pairs[0].teacher", "wrn_40_2", "not trained as pure"]),
    (("pairs", 0, "student"), "resnet20", ["pairs[0]", "both 'resnet20'"]),
    (("pairs", 0, "teacher"), DELETE, ["pairs[0]", "'teacher' is a required property"]),
    (("datasets",), {"imagenet22k": {}}, ["datasets.imagenet22k", "unknown dataset"]),
    (("datasets",), {"Digits": {}}, ["datasets: key 'Digits'", "not a valid name"]),
    (("datasets", "digits", "mem_mb"), 10, ["datasets.digits.mem_mb", "10", "minimum"]),
    (("datasets", "digits", "runtime"), "1h", ["datasets.digits.runtime", "'1h'"]),
    (("datasets", "digits", "walltime"), 60, ["datasets.digits", "'walltime'", "spelling"]),
    (("methods",), {"crd": {}}, ["methods.crd", "unknown method"]),
    (("methods",), {"pure": {}}, ["methods.pure", "reserved"]),
    (("methods", "logit", "temperature"), 0, ["methods.logit.temperature", "0"]),
    (("methods", "logit", "beta"), 8, ["methods.logit", "'beta' was unexpected", "spelling"]),
    (("methods",), {"dkd": {"beta": -1}}, ["methods.dkd.beta", "-1", "minimum"]),
    (("methods",), {"dkd": {"warmup": 2.5}}, ["methods.dkd.warmup", "2.5", "integer"]),
    (("methods",), {"dkd": {"gamma": 1}}, ["methods.dkd", "'gamma' was unexpected"]),
    (("methods",), {"fitnet": {"hint_layer": "last"}}, ["methods.fitnet.hint_layer", "'last'"]),
    (("methods",), {"fitnet": {"temperature": 4}}, ["methods.fitnet", "'temperature'"]),
    (("train", "epochs"), 0, ["train.epochs", "0", "minimum"]),
    (("train", "epochs"), 2.5, ["train.epochs", "2.5", "integer"]),
    (("train", "lr"), -0.1, ["train.lr", "-0.1"]),
    (("train", "momentum"), 1.0, ["train.momentum", "1.0"]),
    (("train", "lr_milestones"), [4, 60], ["train.lr_milestones[1]", "60", "never take effect"]),
    (("train", "batch_size"), True, ["train.batch_size", "True"]),
    (("train", "learning_rate"), 0.1, ["train", "'learning_rate'", "spelling"]),
    (("device",), "tpu", ["device", "'tpu'", "is not one of"]),
    (("packing",), "student", ["packing", "'student'", "is not one of"]),
    (("packing",), True, ["packing", "True"]),
    (("datasets", "digits", "pack_mem_mb"), -1, ["datasets.digits.pack_mem_mb", "-1", "minimum"]),
    (("datasets", "digits", "pack_runtime"), 0, ["datasets.digits.pack_runtime", "0", "minimum"]),
    (("epochs",), 10, ["(top level)", "'epochs'", "spelling"]),
]


@pytest.mark.parametrize("where, value, words", BAD, ids=[".".join(map(str, b[0])) for b in BAD])
def test_bad_config_is_rejected_naming_the_key(good, where, value, words):
    config = copy.deepcopy(good)
    _set(config, where, value)
    with pytest.raises(ConfigError) as err:
        Sweep(config, source="my.yaml")
    message = str(err.value)
    assert message.startswith("my.yaml: ")
    assert "nothing was run or submitted" in message
    for word in words:
        assert word in message, f"{word!r} missing from:\n{message}"


def test_duplicate_pair_is_rejected(good):
    good["pairs"].append(dict(good["pairs"][0]))
    with pytest.raises(
        ConfigError, match=r"pairs\[1\] = resnet20-resnet8: duplicate of pairs\[0\]"
    ):
        Sweep(good)


def test_every_problem_is_listed_at_once(good):
    good["models"].append("resnet9000")
    good["methods"]["crd"] = {}
    with pytest.raises(ConfigError) as err:
        Sweep(good)
    assert "2 problem(s)" in str(err.value)
    assert "resnet9000" in str(err.value) and "methods.crd" in str(err.value)


def test_misspelt_keys_and_names_are_reported_together_each_with_a_suggestion(good):
    # a misspelt key (the schema's) and a misspelt name (kdflow's): one pass reports both
    good["train"]["epoch"] = good["train"].pop("epochs")
    good["datasets"]["digit"] = good["datasets"].pop("digits")
    good["alpahs"] = good.pop("alphas")
    good["models"][0] = "reznet8"
    with pytest.raises(ConfigError) as err:
        Sweep(good, source="typo.yaml")
    lines = str(err.value).splitlines()
    assert lines[0] == "typo.yaml: 4 problem(s); nothing was run or submitted:"
    problems = "\n".join(lines[1:])
    for where, suggestion in (
        ("train:", "did you mean 'epochs'?"),
        ("(top level):", "did you mean 'alphas'?"),
        ("datasets.digit:", "did you mean 'digits'?"),
        ("models[0] = 'reznet8':", "did you mean 'resnet8'?"),
    ):
        line = next((x for x in lines if x.startswith(f"  - {where}")), None)
        assert line is not None and suggestion in line, f"{where} {suggestion}\n{problems}"


def test_a_name_with_nothing_close_gets_no_guess(good):
    good["datasets"]["mnist"] = {}
    with pytest.raises(ConfigError) as err:
        Sweep(good)
    assert "datasets.mnist: unknown dataset; known: cifar10," in str(err.value)
    assert "did you mean" not in str(err.value)


def test_the_caller_says_what_a_bad_config_stopped(good):
    good["alphas"] = [1.5]
    with pytest.raises(ConfigError, match=r"1 problem\(s\); nothing is shown:"):
        Sweep(good, consequence="nothing is shown")


def test_merged_keys_are_what_the_default_adds_to_a_given_file():
    default = {"seeds": [0], "datasets": {"digits": {}, "cifar100": {"mem_mb": 1}}, "pairs": []}
    given = {"seeds": [1], "datasets": {"digits": {"runtime": 5}}}
    assert kdconfig.merged_keys(default, given) == ["datasets.cifar100", "pairs"]
    assert kdconfig.merged_keys(default, default) == []


def test_config_owns_the_names_and_every_registry_implements_exactly_them():
    from kdflow import data, losses, models

    assert kdconfig.dataset_names() == ["cifar10", "cifar100", "svhn", "tinyimagenet", "digits"]
    assert kdconfig.dataset_names() == list(data.DATASETS) == data.dataset_names()
    assert kdconfig.model_names() == list(models.MODELS)
    assert kdconfig.method_names() == ["dkd", "fitnet", "logit"] == sorted(losses.METHODS)
    schema = yaml.safe_load((ROOT / "config" / "schema.yaml").read_text())
    assert kdconfig.method_names() == sorted(schema["properties"]["methods"]["properties"])


def test_a_registry_that_differs_from_the_names_is_refused_naming_both_sides():
    with pytest.raises(RegistryMismatch) as err:
        kdconfig.check_registry("method", ["dkd", "logit", "crd"], kdconfig.method_names())
    message = str(err.value)
    assert "['fitnet'], which nothing implements" in message
    assert "['crd'] are implemented, but kdflow.config does not know them" in message
    assert "config/schema.yaml" in message
    kdconfig.check_registry("model", ["a", "b"], ["b", "a"])  # the order does not matter


def test_importing_the_config_imports_neither_torch_nor_numpy():
    # the workflow and the dashboard import it: a dry run must not pay for torch
    code = (
        "import sys, kdflow.config as c\n"
        "c.Sweep.from_file('config/experiments.yaml')\n"
        "assert 'torch' not in sys.modules, 'torch'\n"
        "assert 'numpy' not in sys.modules, 'numpy'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_the_schema_ships_in_the_package_and_config_schema_yaml_is_the_same_file():
    assert kdconfig.SCHEMA_PATH.parent == Path(kdconfig.__file__).parent
    assert (ROOT / "config" / "schema.yaml").resolve() == kdconfig.SCHEMA_PATH.resolve()


@pytest.mark.skipif(not importlib.util.find_spec("setuptools"), reason="needs setuptools")
def test_a_non_editable_install_validates_configs_and_runs_kdflow_status(tmp_path):
    # pip builds from a copy (a build from the checkout leaves build/ there), offline, into a
    # directory of its own; it is then used from outside the repository
    copy = tmp_path / "copy"
    (copy / "src").mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, copy / name)
    shutil.copytree(
        ROOT / "src" / "kdflow",
        copy / "src" / "kdflow",
        ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"),
    )
    target = tmp_path / "installed"
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-index"]
    pip += ["--no-build-isolation", "--target", str(target), str(copy)]
    subprocess.run(pip, check=True, capture_output=True, text=True)
    assert (target / "kdflow" / "schema.yaml").read_text() == kdconfig.SCHEMA_PATH.read_text()
    shutil.rmtree(copy)  # nothing may find the source tree any more
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(ROOT / "config" / "demo.yaml", work / "sweep.yaml")
    env = {**os.environ, "PYTHONPATH": str(target)}
    code = (
        "import kdflow.config as c, pathlib, sys\n"
        f"assert pathlib.Path(c.__file__).is_relative_to({str(target)!r}), c.__file__\n"
        "print(len(c.Sweep.from_file('sweep.yaml').experiments()))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True
    )
    assert loaded.returncode == 0 and loaded.stdout.strip() == "8", loaded.stderr
    status = subprocess.run(
        [sys.executable, str(target / "bin" / "kdflow"), "status", "--configfile", "sweep.yaml"]
        + ["--no-qstat"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 0, status.stderr
    assert "finished 0/8" in status.stdout


def test_unreadable_file_is_named(tmp_path):
    path = tmp_path / "sweep.yaml"
    path.write_text("seeds: [0\n")
    with pytest.raises(ConfigError, match="sweep.yaml: cannot read the config"):
        Sweep.from_file(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        Sweep.from_file(path)


# -- each experiment's training spec, built from the sweep --------------------------------------


def test_a_pairs_own_method_settings_merge_over_the_sweeps(good):
    good["models"] += ["resnet14"]
    good["pairs"].append(
        {"teacher": "resnet20", "student": "resnet14", "methods": {"dkd": {"beta": 6}}}
    )
    good["methods"] = {"logit": {}, "dkd": {"beta": 8, "warmup": 5}}
    sweep = Sweep(good)
    assert sweep.config["pairs"][1]["methods"] == {"dkd": {"beta": 6}}  # no defaults filled in
    students = {(e.model, e.method): sweep.spec(e) for e in sweep.experiments() if not e.is_pure}
    assert students[("resnet8", "dkd")].method_settings["beta"] == 8
    wrn = students[("resnet14", "dkd")].method_settings
    assert (wrn["beta"], wrn["warmup"], wrn["temperature"]) == (6, 5, 4)  # the rest: the sweep's
    assert students[("resnet14", "logit")].method_settings == {"temperature": 4}


@pytest.mark.parametrize(
    "methods, words",
    [
        ({"fitnet": {}}, ["pairs[0].methods.fitnet", "not a method of this sweep"]),
        ({"logit": {"alphas": [0.5]}}, ["pairs[0].methods.logit.alphas", "the sweep's"]),
        ({"logit": {"beta": 8}}, ["pairs[0].methods.logit", "'beta' was unexpected"]),
    ],
)
def test_a_pairs_methods_are_checked(good, methods, words):
    good["pairs"][0]["methods"] = methods
    with pytest.raises(ConfigError) as err:
        Sweep(good)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_a_method_may_list_its_own_alphas(good):
    good["methods"] = {"logit": {"alphas": [0.9]}, "dkd": {"alphas": [1.0]}, "fitnet": {}}
    sweep = Sweep(good)
    assert sweep.pack_students() == [("dkd", "1.0"), ("fitnet", "0.5"), ("fitnet", "0.9"),
                                     ("logit", "0.9")]  # fmt: skip
    assert sweep.alphas == ["1.0", "0.5", "0.9"]  # for the wildcard constraint
    assert "alphas" not in sweep.method_settings("logit")
    good["methods"] = {"logit": {"alphas": []}}
    with pytest.raises(ConfigError, match=r"methods.logit.alphas: empty, but pairs are listed"):
        Sweep(good)


def test_the_spec_of_an_experiment_and_its_parameters_round_trip(good):
    good.update(teacher_weights="best", precision="fp16")
    sweep = Sweep(good)
    for experiment in sweep.experiments():
        spec = sweep.spec(experiment)
        assert TrainSpec.from_params(spec.params()) == spec
        assert spec.data_path == "data/digits/prepared.npz"
        assert spec.recipe == sweep.recipe("digits") and spec.precision == "fp16"
        if experiment.is_pure:
            assert (spec.teacher, spec.teacher_weights, spec.method_settings) == (None, None, {})
        else:
            assert spec.teacher_dir == experiment.teacher_directory
            assert (spec.teacher_weights, spec.alpha) == ("best", float(experiment.alpha))


def test_identity_and_pack_key_come_from_the_fields_roles_and_the_schema():
    """The recipe is declared once, in the schema: each key a field of Recipe, in the identity
    unless `x-identity: false`, in the pack key where `x-pack: true`."""
    train = yaml.safe_load(kdconfig.SCHEMA_PATH.read_text())["$defs"]["train"]["properties"]
    assert list(kdconfig.RECIPE) == list(train) == [f.name for f in fields(kdconfig.Recipe)]
    spec = Sweep.from_file(ROOT / "config" / "experiments.yaml").spec(
        Experiment("cifar100", 0, "dkd", "wrn_16_2", "wrn_40_2", "0.5")
    )
    assert list(spec.identity) == [
        "dataset", "model", "seed", "method", "teacher", "alpha", "method_settings",
        "batch_size", "lr", "momentum", "weight_decay", "lr_milestones", "lr_decay",
        "crop_padding", "flip", "teacher_weights", "precision",
    ]  # fmt: skip
    assert spec.identity["method_settings"]["beta"] == 6  # the WRN pair's own
    assert sorted(spec.pack_key) == sorted([
        "dataset", "seed", "teacher", "batch_size", "crop_padding", "flip", "eval_batch_size",
        "teacher_weights", "precision", "data_path", "teacher_dir", "threads", "device",
    ])  # fmt: skip


def test_identity_changes_read_kdflow_0_1s_files_as_what_it_did():
    sweep = Sweep.from_file(ROOT / "config" / "experiments.yaml")
    fitnet = sweep.spec(Experiment("cifar100", 0, "fitnet", "resnet8x4", "resnet32x4", "0.5"))
    old = {k: v for k, v in fitnet.identity.items() if k not in ("teacher_weights", "precision")}
    old["method_settings"] = {"hint_layer": -1, "hint_weight": 100.0, "ce_weight": 1.0}
    assert kdconfig.identity_changes(old, fitnet.identity) == (
        "method_settings.hint_layer: -1 -> 2, teacher_weights: 'best' -> 'last', "
        "method_settings.regressor: 'conv1x1_bn' -> 'convreg'"
    )
    # kdflow 0.1's settings, written out, are that same experiment; its metrics' extra keys
    # (accuracies) are no identity
    legacy = TrainSpec.from_params(
        {
            **fitnet.params(),
            "teacher_weights": "best",
            "method_settings": {"hint_layer": -1, "regressor": "conv1x1_bn"},
        }  # fmt: skip
    )
    assert kdconfig.identity_changes({**old, "final_acc": 70.1}, legacy.identity) == ""
    pure = sweep.spec(Experiment("cifar100", 0, "pure", "resnet8x4"))
    old = {k: v for k, v in pure.identity.items() if k not in ("teacher_weights", "precision")}
    assert kdconfig.identity_changes(old, pure.identity) == ""  # a baseline resumes as it was
