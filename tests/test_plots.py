"""Figures from generated results, with damaged and partial experiments among them; figures a
reader takes in at a glance (one colour per alpha or method across panels and datasets, seeds
as a mean with a band, the references in the axes of the curves they frame, legends off the
data); the plot_sweep rule draws exactly its config's experiments into exactly its declared
outputs."""

import json
import logging
import os
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from matplotlib.colors import to_hex
from PIL import Image

from kdflow.config import Sweep
from kdflow.plots import alpha_figure, curves_figure, read_histories
from kdflow.summary import ReportFiles, summarize, write_report

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


# -- figures a reader takes in at a glance -----------------------------------------------------

RESULTS = Path("/sweep/results")  # the figures read paths only: nothing is written here


def _pure(dataset, model, seed):
    return RESULTS / dataset / "pure" / model / f"seed{seed}"


def _kd(dataset, method, teacher, student, alpha, seed):
    return RESULTS / dataset / method / f"{teacher}-{student}" / f"alpha{alpha}" / f"seed{seed}"


def _curve(start, epochs=4):
    """A history whose test accuracy climbs one point an epoch from `start`."""
    return pd.DataFrame({"epoch": range(epochs), "train_loss": 1.0,
                         "test_acc": [start + e for e in range(epochs)]})  # fmt: skip


def _histories(datasets=("cifar100",), pairs=(("r32", "r8"), ("w40", "w16")),
               methods=("dkd", "logit"), alphas=("0.5", "0.9"), seeds=(0, 1, 2)):  # fmt: skip
    """Finished runs of a sweep: seed s of an experiment starts at its base + s (the mean
    over seeds 0-2 is base + 1, the band base .. base + 2)."""
    out = {}
    for dataset in datasets:
        for seed in seeds:
            for pair in pairs:
                for model, base in zip(pair, (80, 70), strict=True):
                    out[_pure(dataset, model, seed)] = _curve(base + seed)
                for m, method in enumerate(methods):
                    for a, alpha in enumerate(alphas):
                        d = _kd(dataset, method, *pair, alpha, seed)
                        out[d] = _curve(71 + m + 2 * a + seed)
    return out


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def _lines(ax):
    """gid -> the line of each curve of a panel (a mean over seeds), thin tails apart."""
    return {line.get_gid(): line for line in ax.get_lines() if line.get_gid()}


def test_an_alpha_has_one_colour_in_every_panel_and_in_every_datasets_figure():
    # svhn has only alpha 0.9 so far: a colour per figure would give 0.9 cifar100's 0.5 colour
    histories = _histories()
    histories.update(_histories(datasets=("svhn",), alphas=("0.9",)))
    colours = {}
    for dataset in ("cifar100", "svhn"):
        fig = curves_figure(histories, dataset)
        panels = _panels(fig)
        assert len(panels) == 4  # a row per pair, a column per method
        for ax in panels:
            for gid, line in _lines(ax).items():
                colours.setdefault(gid, set()).add(to_hex(line.get_color()))
    assert colours["student alone"] != colours["teacher"]
    assert len(colours["alpha=0.5"]) == len(colours["alpha=0.9"]) == 1
    assert colours["alpha=0.5"] != colours["alpha=0.9"]
    alphas = colours["alpha=0.5"] | colours["alpha=0.9"]
    assert not alphas & (colours["student alone"] | colours["teacher"])


def test_the_student_alone_and_the_teacher_are_curves_in_the_axes_of_their_pairs_kd_curves():
    fig = curves_figure(_histories(), "cifar100")
    titles = {ax.get_title().split("\n")[0]: ax for ax in _panels(fig)}
    assert sorted(titles) == ["r32 → r8 · dkd", "r32 → r8 · logit", "w40 → w16 · dkd",
                              "w40 → w16 · logit"]  # fmt: skip
    for ax in titles.values():
        lines = _lines(ax)
        # seeds 0-2 of the teacher start at 80-82 and of the student alone at 70-72
        assert list(lines["teacher"].get_ydata()) == [81, 82, 83, 84]
        assert list(lines["student alone"].get_ydata()) == [71, 72, 73, 74]
        assert {"alpha=0.5", "alpha=0.9"} < set(lines)
        assert lines["student alone"].get_linestyle() != lines["alpha=0.5"].get_linestyle()


def test_the_seeds_of_an_experiment_are_one_mean_line_over_a_min_max_band():
    fig = curves_figure(_histories(), "cifar100")
    for ax in _panels(fig):
        assert len(ax.get_lines()) == 2 + 2  # two alphas and two references, not 3 seeds each
        assert "n = 3 seeds" in ax.get_title()
    ax = next(ax for ax in _panels(fig) if ax.get_title().startswith("r32 → r8 · logit"))
    line = _lines(ax)["alpha=0.9"]  # seed s starts at 71 + 1 + 2 + s
    assert list(line.get_xdata()) == [1, 2, 3, 4] and list(line.get_ydata()) == [75, 76, 77, 78]
    band = next(c for c in ax.collections if c.get_gid() == "alpha=0.9")
    ys = band.get_paths()[0].vertices[:, 1]
    assert (ys.min(), ys.max()) == (74, 76 + 3)  # seed 0's first epoch, seed 2's last
    assert any("min–max over seeds" in t.get_text() for t in fig.legends[0].get_texts())


def test_mid_run_a_seed_ahead_goes_on_thin_and_a_pair_not_started_says_so():
    histories = _histories(pairs=(("r32", "r8"),), methods=("logit",), alphas=("0.5",))
    ahead = _kd("cifar100", "logit", "r32", "r8", "0.5", 2)
    histories[ahead] = _curve(73, epochs=6)  # seeds 0 and 1 are at epoch 4
    histories[_kd("cifar100", "logit", "r32", "r8", "0.5", 1)].loc[2, "test_acc"] = float("nan")
    experiments = [*histories, _kd("cifar100", "logit", "w40", "w16", "0.5", 0)]
    fig = curves_figure(histories, "cifar100", experiments)
    started, waiting = _panels(fig)
    line, tail = _lines(started)["alpha=0.5"], _lines(started)["alpha=0.5 tail"]
    assert list(line.get_xdata()) == [1, 2, 3, 4]
    assert list(line.get_ydata()) == [72, 73, (73 + 75) / 2, 75]  # the nan is no number
    assert list(tail.get_xdata()) == [4, 5, 6] and list(tail.get_ydata()) == [75, 77, 78]
    assert tail.get_linewidth() < line.get_linewidth()
    assert waiting.get_title().startswith("w40 → w16 · logit")
    assert [t.get_text() for t in waiting.texts] == ["not started yet"]


def test_a_sweep_without_pairs_draws_its_models_in_one_panel():
    histories = _histories(pairs=(("r32", "r8"),), methods=())
    fig = curves_figure(histories, "cifar100")
    (ax,) = _panels(fig)
    assert ax.get_title().startswith("trained alone")
    lines = _lines(ax)
    assert sorted(lines) == ["r32", "r8"] and list(lines["r8"].get_ydata()) == [71, 72, 73, 74]
    assert lines["r32"].get_color() != lines["r8"].get_color()


def test_a_directory_of_no_experiments_shape_is_named_and_the_rest_drawn(caplog):
    histories = _histories(pairs=(("r32", "r8"),), methods=("logit",))
    histories[Path("/elsewhere/seed0")] = _curve(10)
    with caplog.at_level(logging.WARNING):
        fig = curves_figure(histories, "cifar100")
    assert "not drawn: /elsewhere/seed0: not an experiment's directory" in caplog.text
    assert len(_lines(_panels(fig)[0])) == 2 + 2


def _table(pairs_methods):
    rows = []
    for (teacher, student), methods in pairs_methods.items():
        for seed in (0, 1, 2):
            for model, acc in ((teacher, 79.0), (student, 70.0 + seed)):
                rows.append({"dataset": "cifar100", "method": "pure", "teacher": "",
                             "model": model, "alpha": "", "seed": seed, "final_acc": acc,
                             "best_acc": acc, "precision": "", "recipe": "{}",
                             "path": ""})  # fmt: skip
            for method in methods:
                for alpha in ("0.5", "0.9"):
                    if (seed, alpha, method) == (2, "0.9", "logit"):
                        continue  # not finished yet
                    rows.append({"dataset": "cifar100", "method": method, "teacher": teacher,
                                 "model": student, "alpha": alpha, "seed": seed,
                                 "final_acc": 72.0 + seed, "best_acc": 72.0 + seed,
                                 "precision": "", "recipe": "{}", "path": ""})  # fmt: skip
    return summarize(pd.DataFrame(rows))


def test_the_alpha_figure_gives_a_method_one_colour_and_its_panels_their_references():
    # the second pair has logit alone: a colour cycle per panel would give it dkd's colour
    table = _table({("r32", "r8"): ("dkd", "logit"), ("w40", "w16"): ("logit",)})
    fig = alpha_figure(table, "cifar100")
    colours = {}
    panels = _panels(fig)
    assert len(panels) == 2
    for ax in panels:
        for bars in ax.containers:
            method = bars.lines[0].get_gid()
            colours.setdefault(method, set()).add(to_hex(bars.lines[0].get_color()))
        assert {line.get_gid() for line in ax.get_lines()} >= {"student alone", "teacher"}
        assert "student alone 71.00 (n=3), teacher 79.00 (n=3)" in ax.get_title()
        # n is said once for the figure, and beside the one point with fewer seeds (logit 0.9)
        assert [t.get_text() for t in ax.texts] == ["n=2"]
    assert len(colours["logit"]) == len(colours["dkd"]) == 1 and colours["logit"] != colours["dkd"]
    assert "n = 3 per point unless marked" in fig.get_suptitle()
    alone = alpha_figure(_table({("r32", "r8"): ("logit",)}), "cifar100")
    (bars,) = _panels(alone)[0].containers
    assert {to_hex(bars.lines[0].get_color())} == colours["logit"]  # whichever others ran


def _overlap(fig):
    """(legend, axes) pairs whose boxes overlap once drawn: a legend on the data."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend())]
    assert legends
    boxes = [(legend, legend.get_window_extent(renderer)) for legend in legends]
    panels = [(ax, ax.get_window_extent(renderer)) for ax in _panels(fig)]
    return [(legend, ax) for legend, box in boxes for ax, area in panels if box.overlaps(area)]


@pytest.mark.parametrize("shape", ["demo", "sweep"])
def test_every_legend_lies_outside_every_panel(shape):
    if shape == "demo":  # one pair, one method, two alphas: one panel
        histories = _histories(pairs=(("r32", "r8"),), methods=("logit",), seeds=(0, 1))
        table = _table({("r32", "r8"): ("logit",)})
    else:
        histories = _histories(methods=("dkd", "fitnet", "logit"), alphas=("0.25", "0.5", "0.95"))
        table = _table({("r32", "r8"): ("dkd", "logit"), ("w40", "w16"): ("logit",)})
    assert _overlap(curves_figure(histories, "cifar100")) == []
    assert _overlap(alpha_figure(table, "cifar100")) == []


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
