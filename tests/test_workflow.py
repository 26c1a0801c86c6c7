"""The workflow: the queue a dry run shows, teacher -> student edges, a real small run."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kdflow.config import Sweep

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]


def snakemake(workdir, *args, config=None, check=True):
    cmd = [*SNAKEMAKE, "-d", str(workdir), *args]
    if config is not None:
        path = Path(workdir) / "sweep.yaml"
        path.write_text(yaml.safe_dump(config))
        cmd += ["--configfile", str(path), "--replace-workflow-config"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def job_counts(output: str) -> dict[str, int]:
    table = output.split("Job stats:")[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, re.M)}


def test_dry_run_lists_exactly_the_sweep_without_importing_torch(tmp_path):
    # torch is most of a preview's start-up: a dry run must not need it (a `torch` that
    # refuses to import comes first on the path)
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text("raise ImportError('torch imported')\n")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    result = subprocess.run([*SNAKEMAKE, "-n"], capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    seeds, datasets, models, pairs, methods, alphas = 3, 3, 4, 2, 3, 4
    assert counts["train_pure"] == seeds * datasets * models
    assert counts["prepare_dataset"] == datasets
    # packing: teacher (the default): one job per (dataset, pair, seed) trains its students
    assert counts["train_pack"] == seeds * datasets * pairs
    packs = [b for b in result.stdout.split("\nrule ")[1:] if b.startswith("train_pack:")]
    outputs = [re.search(r"output: (.*)", block)[1].split(", ") for block in packs]
    students = [path for job in outputs for path in job]
    assert {len(job) for job in outputs} == {methods * alphas}
    assert len(set(students)) == seeds * datasets * pairs * methods * alphas
    # update(): Snakemake neither deletes a finished student's `completed` before its pack
    # runs again nor, if the pack fails, one that existed before
    assert all(path.endswith("/completed (update)") for path in students)

    none = subprocess.run(
        [*SNAKEMAKE, "-n", "--config", "packing=none"], capture_output=True, text=True, cwd=ROOT
    )
    assert none.returncode == 0, none.stderr[-3000:]
    counts = job_counts(none.stdout)
    assert counts["train_kd"] == seeds * datasets * pairs * methods * alphas
    assert not any(rule.startswith("train_pack") for rule in counts)


def _dag(*args) -> tuple[dict[str, dict[str, str]], list[tuple[str, str]]]:
    dot = subprocess.run(
        [*SNAKEMAKE, "--dag", *args], capture_output=True, text=True, cwd=ROOT, check=True
    ).stdout
    labels = {
        node: dict(re.findall(r"\\n(\w+): ([\w.]+)", "\\n" + label.split("\\n", 1)[-1]))
        | {"rule": label.split("\\n")[0]}
        for node, label in re.findall(r'^\s*(\d+)\[label = "([^"]*)"', dot, re.M)
    }
    return labels, re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)


def test_every_student_is_fed_by_its_teacher():
    labels, edges = _dag("--config", "packing=none")
    students = [n for n, info in labels.items() if info["rule"] == "train_kd"]
    assert len(students) == 3 * 3 * 2 * 3 * 4
    for student in students:
        feeders = [labels[a] for a, b in edges if b == student]
        teachers = [f for f in feeders if f["rule"] == "train_pure"]
        assert len(teachers) == 1, labels[student]
        assert teachers[0]["model"] == labels[student]["teacher"]


def test_every_pack_is_fed_by_its_teacher_and_trains_only_its_students():
    # (--dag labels a pack with no wildcards: its teacher's node has them all; the dry run has)
    out = subprocess.run([*SNAKEMAKE, "-n"], capture_output=True, text=True, cwd=ROOT).stdout
    packs = [b for b in out.split("\nrule ")[1:] if b.startswith("train_pack:")]
    assert len(packs) == 3 * 3 * 2
    for block in packs:
        w = dict(re.findall(r"(\w+)=(\w+)", re.search(r"wildcards: (.*)", block)[1]))
        fed = f"results/{w['dataset']}/pure/{w['teacher']}/seed{w['seed']}/completed"
        assert fed in re.search(r"input: (.*)", block)[1].split(", "), block
        for output in re.search(r"output: (.*)", block)[1].split(", "):
            dataset, method, pair, alpha, seed, _ = output.split("/")[1:]
            assert (dataset, seed, pair) == (
                w["dataset"],
                f"seed{w['seed']}",
                f"{w['teacher']}-{w['student']}",
            )


@pytest.mark.parametrize("datasets", [["digits"], ["digits", "cifar10"]])
def test_every_training_job_gets_its_datasets_memory_and_runtime(tmp_path, datasets):
    # one dataset: the numbers are constants of the rules; two that differ: a function per job
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    settings = {
        "digits": {"mem_mb": 2000, "runtime": 10},
        "cifar10": {"mem_mb": 9000, "runtime": 600},
    }
    config["datasets"] = {name: settings[name] for name in datasets}
    out = snakemake(tmp_path, "-n", config={**config, "packing": "none"}).stdout
    jobs = [block for block in out.split("rule ")[1:] if block.startswith("train_")]
    assert len(jobs) == 8 * len(datasets)
    for block in jobs:
        dataset = re.search(r"wildcards: dataset=(\w+)", block)[1]
        resources = dict(re.findall(r"(\w+)=(\w+)", re.search(r"resources: (.*)", block)[1]))
        assert int(resources["mem_mb"]) == settings[dataset]["mem_mb"], block
        assert int(resources["runtime"]) == settings[dataset]["runtime"], block


@pytest.mark.parametrize("datasets", [["digits"], ["digits", "cifar10"]])
def test_a_pack_asks_for_its_datasets_memory_and_walltime_grown_by_its_size(tmp_path, datasets):
    # demo.yaml: 2 seeds, one pair, one method, 2 alphas: packs of 2 students
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    settings = {
        "digits": {"mem_mb": 2000, "runtime": 10, "pack_runtime": 15},  # 2 x 10, up to 15
        "cifar10": {"mem_mb": 9000, "runtime": 600, "pack_mem_mb": 3000},  # 2 x 600 > 600
    }
    expected = {"digits": (2000 + 1000, 15), "cifar10": (9000 + 3000, 600)}
    config["datasets"] = {name: settings[name] for name in datasets}
    out = snakemake(tmp_path, "-n", config=config).stdout
    packs = [block for block in out.split("rule ")[1:] if block.startswith("train_pack:")]
    assert len(packs) == 2 * len(datasets)
    for block in packs:
        dataset = re.search(r"wildcards: dataset=(\w+)", block)[1]
        resources = dict(re.findall(r"(\w+)=(\w+)", re.search(r"resources: (.*)", block)[1]))
        assert (int(resources["mem_mb"]), int(resources["runtime"])) == expected[dataset], block


def test_bad_config_stops_before_anything_runs(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["alphas"] = [0.5, 1.5]
    config["pairs"][0]["teacher"] = "wrn_40_2"
    result = snakemake(tmp_path, "--cores", "1", config=config, check=False)
    assert result.returncode != 0
    out = result.stdout + result.stderr
    assert "alphas[1] = 1.5" in out
    assert "nothing was run or submitted" in out
    assert not (tmp_path / "results").exists() and not (tmp_path / "data").exists()


def test_a_configfile_merged_into_the_default_is_named_with_what_it_added(tmp_path):
    demo = str(ROOT / "config" / "demo.yaml")
    merged = subprocess.run([*SNAKEMAKE, "-n", "--configfile", demo], capture_output=True,
                            text=True, cwd=ROOT)  # fmt: skip
    assert merged.returncode == 0, merged.stderr[-3000:]
    warning = next(line for line in merged.stderr.splitlines() if "was merged into" in line)
    assert "config/demo.yaml was merged into config/experiments.yaml" in warning
    assert "datasets.cifar100" in warning and "--replace-workflow-config" in warning
    alone = subprocess.run([*SNAKEMAKE, "-n", "--configfile", demo, "--replace-workflow-config"],
                           capture_output=True, text=True, cwd=ROOT)  # fmt: skip
    assert alone.returncode == 0 and "was merged into" not in alone.stderr
    assert f"kdflow: sweep config/demo.yaml, 8 experiments, in {ROOT}\n" in alone.stderr


def test_a_bad_config_given_alone_is_named_alone(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config["alphas"] = [1.5]
    result = snakemake(tmp_path, "-n", config=config, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"{tmp_path / 'sweep.yaml'}: 1 problem(s)" in out or "sweep.yaml: 1 problem(s)" in out
    assert "experiments.yaml" not in out


@pytest.mark.slow
def test_small_sweep_runs_end_to_end(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config.update(seeds=[0], models=["resnet14", "resnet8"], alphas=[0.7])
    config["pairs"] = [{"teacher": "resnet14", "student": "resnet8"}]
    config["train"].update(epochs=2, lr_milestones=[1])
    snakemake(
        tmp_path, "--cores", "2", "--set-threads", "train_pure=1", "train_kd=1", config=config
    )

    results = tmp_path / "results" / "digits"
    teacher = results / "pure" / "resnet14" / "seed0"
    student = results / "logit" / "resnet14-resnet8" / "alpha0.7" / "seed0"
    for d in (teacher, results / "pure" / "resnet8" / "seed0", student):
        assert (d / "completed").exists()
        for name in ("status.json", "history.csv", "checkpoint.pth", "best.pth", "metrics.json"):
            assert (d / name).exists(), d / name
        assert json.loads((d / "status.json").read_text())["status"] == "completed"
        assert len(pd.read_csv(d / "history.csv")) == 2
    # the student started only after its teacher had finished
    started = json.loads((student / "status.json").read_text())["started_at"]
    assert started > (teacher / "completed").stat().st_mtime

    table = pd.read_csv(tmp_path / "results" / "summary" / "results.csv")
    assert len(table) == 3
    kd = table[table["method"] == "logit"].iloc[0]
    alone = table[(table["method"] == "pure") & (table["model"] == "resnet8")].iloc[0]
    metrics = json.loads((student / "metrics.json").read_text())
    assert kd["final_acc_mean"] == pytest.approx(metrics["final_acc"], abs=1e-4)
    assert kd["gain_final"] == pytest.approx(kd["final_acc_mean"] - alone["final_acc_mean"], 1e-3)
    assert (
        "| digits | logit | resnet14 | resnet8 | 0.7 | 1 |"
        in (tmp_path / "results" / "summary" / "results.md").read_text()
    )

    for figure in ("alpha_digits.png", "curves_digits.png"):
        assert (tmp_path / "results" / "summary" / figure).stat().st_size > 10_000

    # a second run finds nothing to do
    again = snakemake(tmp_path, "-n", config=config)
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.slow
def test_a_pack_writes_what_one_job_per_student_writes(tmp_path):
    from test_resume import _assert_identical  # torch: only this test needs it

    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    config.update(seeds=[0], models=["resnet14", "resnet8"], alphas=[0.5, 0.9])
    config["pairs"] = [{"teacher": "resnet14", "student": "resnet8"}]
    config["methods"] = {"logit": {}, "fitnet": {}}
    config["train"].update(epochs=2, lr_milestones=[1])
    threads = ("--set-threads", "train_pure=1", "train_kd=1")
    students = [
        f"results/digits/{method}/resnet14-resnet8/alpha{alpha}/seed0"
        for method in ("logit", "fitnet")
        for alpha in ("0.5", "0.9")
    ]

    # packing: teacher; asking for one student's `completed` runs its whole pack
    packed = tmp_path / "packed"
    packed.mkdir()
    snakemake(packed, f"{students[-1]}/completed", "--cores", "2", *threads, config=config)
    for student in students:
        assert (packed / student / "completed").exists(), student
        log = (packed / "logs/train" / f"{student.removeprefix('results/')}.log").read_text()
        assert f"{student}" in log and "epoch 2/2" in log  # its own log, its own epochs
        assert all(other not in log for other in students if other != student)
    pack_log = (packed / "logs/train/digits/pack/resnet14-resnet8/seed0.log").read_text()
    assert all(f"{student}: epoch 2/2" in pack_log for student in students)

    # packing: none, from the same data and teacher: one job per student, the same files
    alone = tmp_path / "alone"
    for path in ("data", "results/digits/pure/resnet14"):
        shutil.copytree(packed / path, alone / path)
    targets = [f"{student}/completed" for student in students]
    snakemake(alone, *targets, "--cores", "2", *threads, config={**config, "packing": "none"})
    for student in students:
        _assert_identical(packed / student, alone / student, student)

    # A pack where one student fails: the others train on, and Snakemake deletes none of the
    # `completed` that existed before the pack (update()).
    done, fresh, broken = students[0], students[1], students[2]
    before = (packed / done / "best.pth").stat().st_mtime_ns
    for name in ("checkpoint.pth", "checkpoint.prev.pth", "best.pth", "history.csv", "completed"):
        (packed / fresh / name).unlink(missing_ok=True)
    (packed / broken / "completed").unlink()
    for name in ("checkpoint.pth", "checkpoint.prev.pth"):
        (packed / broken / name).write_bytes(b"not a checkpoint")
    failed = snakemake(packed, *targets, "--cores", "2", *threads, config=config, check=False)
    assert failed.returncode != 0
    assert (packed / done / "completed").exists(), "a finished student's sentinel must survive"
    assert (packed / done / "best.pth").stat().st_mtime_ns == before, "and it is not retrained"
    status = json.loads((packed / fresh / "status.json").read_text())
    assert status["status"] == "completed" and len(pd.read_csv(packed / fresh / "history.csv")) == 2
    status = json.loads((packed / broken / "status.json").read_text())
    assert status["status"] == "failed" and "no checkpoint could be loaded" in status["error"]
    # its damaged files moved away, the next pack trains it; the other only writes its end
    for name in ("checkpoint.pth", "checkpoint.prev.pth"):
        (packed / broken / name).unlink()
    snakemake(packed, *targets, "--cores", "2", *threads, config=config)
    for student in students:
        _assert_identical(packed / student, alone / student, student)


def test_a_profiles_threads_and_resources_for_train_pack_apply_to_packs(tmp_path):
    # profiles name train_pack as any rule: the rules read no profile themselves
    config = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    args = ["--cores", "8", "--set-threads", "train_pack=3", "train_kd=5", "--set-resources"]
    args += ["train_pack:gpu=1", "train_pack:runtime=7", "train_kd:gpu=2"]
    out = snakemake(tmp_path, "-n", *args, config=config).stdout
    packs = [block for block in out.split("rule ")[1:] if block.startswith("train_pack:")]
    assert len(packs) == 2
    for block in packs:
        resources = dict(re.findall(r"(\w+)=(\w+)", re.search(r"resources: (.*)", block)[1]))
        assert re.search(r"threads: 3\n", block), block
        assert (resources["gpu"], resources["runtime"], resources["mem_mb"]) == ("1", "7", "3000")


def test_the_repdistiller_preset_lists_exactly_the_published_runs():
    """`snakemake -n --configfile config/repdistiller.yaml --replace-workflow-config`: the
    four models alone and each pair's three methods at their published alpha, 3 seeds."""
    result = subprocess.run(
        [*SNAKEMAKE, "-n", "--configfile", "config/repdistiller.yaml", "--replace-workflow-config"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert (counts["train_pure"], counts["train_pack"], counts["prepare_dataset"]) == (12, 6, 1)
    students = {
        path.removesuffix(" (update)")
        for block in result.stdout.split("\nrule ")[1:]
        if block.startswith("train_pack:")
        for path in re.search(r"output: (.*)", block)[1].split(", ")
    }
    assert students == {
        f"results/cifar100/{method}/{pair}/alpha{alpha}/seed{seed}/completed"
        for pair in ("resnet32x4-resnet8x4", "wrn_40_2-wrn_16_2")
        for method, alpha in (("logit", "0.9"), ("dkd", "1.0"), ("fitnet", "1.0"))
        for seed in (0, 1, 2)
    }


@pytest.mark.slow
def test_the_repdistiller_preset_trains_an_epoch_on_cifar100_files(tmp_path):
    """The preset as it is but for one epoch, batches of 8 and the CPU, on tiny CIFAR-100 files
    in the real layout (prepare_dataset reads them as it reads the real ones): every experiment
    finishes with what the preset asks for, and the report puts the published figures beside
    them (saying the runs trained 1 epoch, not 240)."""
    from fakedata import write_cifar

    config = yaml.safe_load((ROOT / "config" / "repdistiller.yaml").read_text())
    config["train"].update(epochs=1, lr_milestones=[], batch_size=8, eval_batch_size=16)
    config["device"] = "cpu"
    write_cifar(tmp_path / "data/cifar100/raw", "cifar100", n_train=16, n_test=8)
    snakemake(tmp_path, "--cores", "2", config=config)

    sweep = Sweep(config)
    assert len(sweep.experiments()) == 30
    for experiment in sweep.experiments():
        d = tmp_path / experiment.directory
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics == {**metrics, **sweep.spec(experiment).identity}
        assert (metrics["precision"], metrics["precision_used"]) == ("fp32", "fp32")
        assert (d / "last.pth").exists() and (d / "completed").exists()
        if experiment.method == "dkd":
            beta = {"resnet8x4": 8, "wrn_16_2": 6}[experiment.model]
            assert metrics["method_settings"]["beta"] == beta
    md = (tmp_path / "results/summary/results.md").read_text()
    assert "## Published" in md and "| 73.33 | last |" in md and "| 76.23 | best |" in md
    assert "epochs 1 (published 240)" in md
