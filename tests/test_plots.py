"""Figures from generated results, with damaged and partial experiments among them; the
plot_sweep rule draws exactly its config's experiments into exactly its declared outputs."""

import json
import logging
import os
import time

import pytest
import yaml
from PIL import Image

from kdflow.config import Sweep
from kdflow.plots import read_histories
from kdflow.summary import ReportFiles, write_report

HEADER = "epoch,train_loss,train_acc,test_loss,test_acc,lr,epoch_seconds,images_per_s\n"
CONFIG = {
    "seeds": [0, 1, 2, 3],
    "datasets": {"cifar100": {}},
    "models": ["r32", "r8"],
    "pairs": [{"teacher": "r32", "student": "r8"}],
    "alphas": [0.5, 0.9],
}


def _experiment(root, rel, metrics, epochs=3):
    d = root / rel
    d.mkdir(parents=True)
    rows = "".join(
        f"{e},{2 - e * 0.5},{50 + e},{1.5},{metrics['final_acc'] - (epochs - 1 - e)},0.05,1.0,900\n"
        for e in range(epochs)
    )
    (d / "history.csv").write_text(HEADER + rows)
    (d / "metrics.json").write_text(json.dumps({**metrics, "best_acc": metrics["final_acc"]}))
    (d / "completed").write_text("")
    return d


@pytest.fixture
def workdir(tmp_path):
    """Seeds 0-2 finished; of seed 3 one run is in progress, its history cut mid-line."""
    for seed in (0, 1, 2):
        common = {"dataset": "cifar100", "seed": seed, "teacher": None, "alpha": 0.0}
        _experiment(
            tmp_path,
            f"results/cifar100/pure/r8/seed{seed}",
            {**common, "method": "pure", "model": "r8", "final_acc": 70.0 + seed},
        )
        _experiment(
            tmp_path,
            f"results/cifar100/pure/r32/seed{seed}",
            {**common, "method": "pure", "model": "r32", "final_acc": 79.0},
        )
        for alpha in (0.5, 0.9):
            _experiment(tmp_path, f"results/cifar100/logit/r32-r8/alpha{alpha}/seed{seed}",
                        {**common, "method": "logit", "model": "r8", "teacher": "r32",
                         "alpha": alpha, "final_acc": 72.0 + alpha + seed})  # fmt: skip
    running = tmp_path / "results/cifar100/logit/r32-r8/alpha0.5/seed3"
    running.mkdir(parents=True)
    (running / "history.csv").write_text(HEADER + "0,2.0,50,1.5,40,0.05,1.0,900\n1,1.8,5")
    return tmp_path


def _report(workdir, config=CONFIG):
    sweep = Sweep(config, check_names=False)
    files = ReportFiles.of(sweep, workdir / "results/summary")
    experiments = [workdir / e.directory for e in sweep.experiments()]
    return write_report(experiments, files, workdir / "results")


def test_report_draws_every_figure_and_names_what_it_skipped(workdir, caplog):
    with caplog.at_level(logging.WARNING):
        report = _report(workdir)
    assert [f.name for f in report.files.figures] == ["alpha_cifar100.png", "curves_cifar100.png"]
    for figure in report.files.figures:
        with Image.open(figure) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 200
    truncated = workdir / "results/cifar100/logit/r32-r8/alpha0.5/seed3/history.csv"
    assert str(truncated) in caplog.text
    table = report.table
    kd = table[(table["method"] == "logit") & (table["alpha"] == "0.9")].iloc[0]
    assert kd["n"] == 3
    assert kd["final_acc_mean"] == pytest.approx(72.9 + 1.0)  # seeds 0, 1, 2 add 0, 1, 2
    assert kd["final_acc_std"] == pytest.approx(1.0)
    assert kd["gain_final"] == pytest.approx(73.9 - 71.0)
    assert (
        report.account() == "12 of 16 experiments of this config in the table; 4 not finished yet"
    )


@pytest.mark.parametrize("damaged", ["metrics.json", "history.csv"])
def test_a_damaged_finished_experiment_is_named_by_path_and_skipped(workdir, caplog, damaged):
    # a finished experiment whose file a full disk or a copy cut: the report names it and
    # draws the rest; a cut metrics.json leaves its seed out of the table, a cut history.csv
    # only its curve
    experiment = workdir / "results/cifar100/logit/r32-r8/alpha0.9/seed2"
    path = experiment / damaged
    path.write_bytes(path.read_bytes()[:25])
    with caplog.at_level(logging.WARNING):
        report = _report(workdir)
    assert str(path) in caplog.text
    kd = report.table.set_index(["method", "alpha"]).loc[("logit", "0.9")]
    if damaged == "metrics.json":
        assert kd["n"] == 2 and kd["final_acc_mean"] == pytest.approx(72.9 + 0.5)
        assert report.unreadable == [path]
        assert f"1 finished but left out, metrics.json missing or unreadable: {path}" in (
            report.account()
        )
    else:
        assert kd["n"] == 3 and report.unreadable == []
        assert experiment not in read_histories([experiment])
    for figure in report.files.figures:
        with Image.open(figure) as image:
            assert image.format == "PNG" and image.width > 400


def test_report_of_a_sweep_that_has_not_started_draws_figures_that_say_so(tmp_path):
    (tmp_path / "results").mkdir()
    report = _report(tmp_path)
    assert report.table.empty
    for figure in report.files.figures:
        with Image.open(figure) as image:
            assert image.format == "PNG"


@pytest.mark.parametrize(
    "last_line",
    [
        "2,1.5,52,1.4,4",  # cut inside test_acc: "4" parses, a wrong accuracy
        "2,1.5,52,1.4,42,0.05,1.0,9",  # cut inside the last field: every column present
        "2,1.5,52,1.4,42,0.0",  # cut after test_acc: only the unread columns are missing
    ],
)
def test_a_history_row_cut_short_is_left_out_by_path(tmp_path, caplog, last_line):
    d = tmp_path / "results/cifar100/pure/r8/seed0"
    d.mkdir(parents=True)
    (d / "history.csv").write_text(
        HEADER + "0,2.0,50,1.5,40,0.05,1.0,900\n1,1.8,51,1.5,41,0.05,1.0,900\n" + last_line
    )
    with caplog.at_level(logging.WARNING):
        history = read_histories([d])[d]
    assert list(history["epoch"]) == [0, 1] and list(history["test_acc"]) == [40, 41]
    assert f"{d / 'history.csv'}: ignoring 1 incomplete row(s)" in caplog.text


def test_a_whole_history_is_kept_and_one_not_started_is_silent(tmp_path, caplog):
    d, not_started = tmp_path / "seed0", tmp_path / "seed1"
    d.mkdir()
    (d / "history.csv").write_text(
        HEADER + "0,2.0,50,1.5,40,0.05,1.0,900\n1,1.8,51,1.5,41,0.05,1.0,900\n"
    )
    with caplog.at_level(logging.WARNING):
        histories = read_histories([d, not_started])
    assert list(histories) == [d] and list(histories[d]["test_acc"]) == [40, 41]
    assert caplog.text == ""


def test_a_diverged_run_keeps_its_nan_losses_and_its_curve(tmp_path, caplog):
    """`nan` is what the trainer writes for a loss that diverged: a result, not damage."""
    d = tmp_path / "results/cifar100/pure/r8/seed0"
    d.mkdir(parents=True)
    rows = "0,2.0,50,1.5,40,0.05,1.0,900\n1,nan,10,nan,1.0,0.05,1.0,900\n"
    (d / "history.csv").write_text(HEADER + rows)
    with caplog.at_level(logging.WARNING):
        history = read_histories([d])[d]
    assert list(history["test_acc"]) == [40, 1.0] and history["train_loss"].isna().tolist() == [
        False,
        True,
    ]
    assert caplog.text == ""


@pytest.mark.parametrize("text", ["", "\x00\xff garbage", "epoch;loss\n1;2\n"])
def test_an_unreadable_history_is_skipped_by_path(tmp_path, caplog, text):
    d = tmp_path / "results/cifar100/pure/r8/seed0"
    d.mkdir(parents=True)
    (d / "history.csv").write_text(text)
    with caplog.at_level(logging.WARNING):
        assert read_histories([d]) == {}
    assert f"skipping {d / 'history.csv'}" in caplog.text


# -- the plot_sweep rule ----------------------------------------------------------------------


def _finished(workdir, experiment, final_acc):
    d = workdir / experiment.directory
    d.mkdir(parents=True, exist_ok=True)
    metrics = {"dataset": experiment.dataset, "method": experiment.method,
               "model": experiment.model, "teacher": experiment.teacher,
               "alpha": float(experiment.alpha or 0), "seed": experiment.seed,
               "teacher_weights": None if experiment.is_pure else "last",
               "final_acc": final_acc, "best_acc": final_acc}  # fmt: skip
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "history.csv").write_text(HEADER + f"0,2.0,50,1.5,{final_acc},0.05,1.0,900\n")
    (d / "completed").write_text("")


@pytest.mark.slow
def test_the_plot_rule_reads_its_configs_experiments_into_its_declared_outputs(tmp_path):
    """In a working directory where another config's sweep ran too, the rule's input is this
    config's experiments, its outputs every file it writes, and it draws only those."""
    from test_workflow import ROOT, snakemake

    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    ours = {**demo, "seeds": [0], "alphas": [0.5]}
    theirs = {**demo, "seeds": [0, 1], "alphas": [0.5, 0.9]}
    # the training jobs are done: their inputs are older than their outputs
    (tmp_path / "data/digits").mkdir(parents=True)
    (tmp_path / "data/digits/prepared.npz").write_text("")
    a_second_ago = time.time() - 1  # older than anything written below, however fast
    os.utime(tmp_path / "data/digits/prepared.npz", (a_second_ago, a_second_ago))
    for experiment in Sweep(theirs).experiments():
        _finished(tmp_path, experiment, 30.0)  # theirs, overwritten below where shared
    for experiment in Sweep(ours).experiments():
        _finished(tmp_path, experiment, 60.0)

    plan = snakemake(tmp_path, "-n", "plot_sweep", config=ours).stdout
    job = plan.split("rule plot_sweep:")[1]
    inputs = job.split("input: ")[1].split("\n")[0].split(", ")
    outputs = job.split("output: ")[1].split("\n")[0].split(", ")
    assert sorted(inputs) == sorted(e.target for e in Sweep(ours).experiments())
    summary = "results/summary/"
    assert sorted(outputs) == [summary + name for name in ("alpha_digits.png",
                               "curves_digits.png", "results.csv", "results.md")]  # fmt: skip

    snakemake(tmp_path, "--cores", "1", "plot_sweep", config=ours)
    assert sorted(p.name for p in (tmp_path / summary).iterdir()) == sorted(
        o.removeprefix(summary) for o in outputs
    )  # nothing undeclared
    table = (tmp_path / summary / "results.csv").read_text().splitlines()
    assert len(table) == 1 + 3 and all(",60.0000," in row for row in table[1:])
    assert table[0].endswith(",precision")
    log = (tmp_path / "logs/report/plot_sweep.log").read_text()
    assert "3 of 3 experiments of this config in the table; 5 result(s) in results/ belong to " \
        "no experiment of this config (ignored): " in log  # fmt: skip

    # a sweep without pairs declares no alpha figures
    alone = {**ours, "pairs": []}
    plan = snakemake(tmp_path, "-n", "-f", "plot_sweep", config=alone).stdout
    outputs = plan.split("rule plot_sweep:")[1].split("output: ")[1].split("\n")[0].split(", ")
    assert sorted(outputs) == [summary + n for n in ("curves_digits.png", "results.csv",
                                                     "results.md")]  # fmt: skip
