"""The results table equals a hand computation; a report covers exactly its config's
experiments and says what it left out and why; damaged metrics are skipped by path."""

import json
import logging
import statistics
from pathlib import Path

import pytest
import yaml

from kdflow.cli import main
from kdflow.config import Experiment, Sweep
from kdflow.summary import ReportFiles, read_metrics, summarize, write_report

HEADER = "epoch,train_loss,train_acc,test_loss,test_acc,lr,epoch_seconds,images_per_s\n"
# Two configs sharing a working directory: A, and B with another seed and another alpha
CONFIG_A = {
    "seeds": [0, 1],
    "datasets": {"cifar100": {}},
    "models": ["r32", "r8"],
    "pairs": [{"teacher": "r32", "student": "r8"}],
    "alphas": [0.5],
}
CONFIG_B = {**CONFIG_A, "seeds": [0, 2], "alphas": [0.5, 0.9]}


def _write(root, experiment: Experiment, final_acc: float, finished: bool = True):
    """An experiment's files as the trainer leaves them (`root` is the working directory)."""
    d = root / experiment.directory
    d.mkdir(parents=True, exist_ok=True)
    rows = "".join(f"{e},1.0,50,1.0,{final_acc - 2 + e},0.05,1.0,900\n" for e in range(3))
    (d / "history.csv").write_text(HEADER + rows)
    if finished:
        alpha = float(experiment.alpha) if experiment.alpha else 0.0  # as the trainer writes
        metrics = {
            "dataset": experiment.dataset,
            "method": experiment.method,
            "model": experiment.model,
            "teacher": experiment.teacher,
            "alpha": alpha,
            "seed": experiment.seed,
            "teacher_weights": None if experiment.is_pure else "last",  # as the trainer writes
            "final_acc": final_acc,
            "best_acc": final_acc + 1,
        }
        (d / "metrics.json").write_text(json.dumps(metrics))
        (d / "completed").write_text("")
    return d


def _sweep(root, config=CONFIG_A, name="a.yaml") -> Sweep:
    (root / name).write_text(yaml.safe_dump(config))
    return Sweep.from_file(root / name, check_names=False)


def _accuracy(experiment: Experiment) -> float:
    base = {"r8": 70.0, "r32": 79.0}[experiment.model] + experiment.seed
    return base + (2.0 if not experiment.is_pure else 0.0)


def test_mean_std_and_gain_equal_a_hand_computation(tmp_path):
    sweep = _sweep(tmp_path)
    for experiment in sweep.experiments():
        _write(tmp_path, experiment, _accuracy(experiment))
    runs, not_finished, unreadable, other = read_metrics(
        tmp_path / e.directory for e in sweep.experiments()
    )
    assert not_finished == [] and unreadable == [] and other == {}
    table = summarize(runs).set_index(["method", "model"])
    kd = table.loc[("logit", "r8")]
    assert kd["n"] == 2
    assert kd["final_acc_mean"] == pytest.approx(72.5)  # 72, 73
    assert kd["final_acc_std"] == pytest.approx(statistics.stdev([72.0, 73.0]))
    assert kd["best_acc_mean"] == pytest.approx(73.5)
    assert kd["gain_final"] == pytest.approx(72.5 - 70.5)
    assert table.loc[("pure", "r32")]["final_acc_mean"] == pytest.approx(79.5)


def test_a_report_covers_exactly_its_configs_experiments_and_says_what_it_left_out(tmp_path):
    a, b = _sweep(tmp_path), _sweep(tmp_path, CONFIG_B, "b.yaml")
    for experiment in b.experiments():  # B's sweep ran first, all of it
        _write(tmp_path, experiment, _accuracy(experiment) + 5)  # B's numbers are A's + 5
    unfinished = Experiment("cifar100", 1, "logit", "r8", "r32", "0.5")
    for experiment in a.experiments():  # then A's: seed 0 shared, seed 1 all but one
        _write(tmp_path, experiment, _accuracy(experiment), finished=experiment != unfinished)
    files = ReportFiles.of(a, tmp_path / "results/summary")
    report = write_report(
        [tmp_path / e.directory for e in a.experiments()], files, tmp_path / "results"
    )
    table = report.table.set_index(["method", "model", "alpha"])
    assert sorted(table.index) == [("logit", "r8", "0.5"), ("pure", "r32", ""), ("pure", "r8", "")]
    assert table.loc[("logit", "r8", "0.5")]["n"] == 1  # seed 1's is not finished
    assert table.loc[("pure", "r8", "")]["final_acc_mean"] == pytest.approx(70.5)  # not B's
    assert report.not_finished == [tmp_path / unfinished.directory]
    theirs = sorted({e.directory for e in b.experiments()} - {e.directory for e in a.experiments()})
    assert report.foreign == [tmp_path / d for d in theirs]
    account = report.account()
    assert account.startswith(
        "5 of 6 experiments of this config in the table; 1 not finished yet; "
        f"{len(theirs)} result(s) in {tmp_path / 'results'}/ belong to no experiment of this "
        "config (ignored): "
    )
    assert f"and {len(theirs) - 3} more" in account
    assert account in files.md.read_text()
    assert sorted((tmp_path / "results/summary").iterdir()) == sorted([files.csv, files.md,
                                                                      *files.figures])  # fmt: skip


def test_damaged_metrics_are_skipped_with_their_path(tmp_path, caplog):
    sweep = _sweep(tmp_path)
    for experiment in sweep.experiments():
        _write(tmp_path, experiment, _accuracy(experiment))
    kd = Experiment("cifar100", 1, "logit", "r8", "r32", "0.5")
    cut = tmp_path / kd.directory / "metrics.json"
    cut.write_text('{"dataset": "cifar100", "final_')  # cut by a full disk or a copy
    wrong = tmp_path / "results/cifar100/pure/r8/seed1/metrics.json"
    wrong.write_text(json.dumps({"dataset": "cifar100", "method": "pure"}))  # keys missing
    gone = tmp_path / "results/cifar100/pure/r32/seed1/metrics.json"
    gone.unlink()
    files = ReportFiles.of(sweep, tmp_path / "s")
    with caplog.at_level(logging.WARNING):
        report = write_report([tmp_path / e.directory for e in sweep.experiments()], files,
                              tmp_path / "results")  # fmt: skip
    for path in (cut, wrong, gone):
        assert str(path) in caplog.text
    assert report.unreadable == [gone, wrong, cut]  # in the config's order
    assert "3 finished but left out, metrics.json missing or unreadable: " in report.account()
    kd_row = report.table.set_index(["method", "model"]).loc[("logit", "r8")]
    assert kd_row["n"] == 1 and kd_row["final_acc_mean"] == pytest.approx(72.0)
    assert "| cifar100 | logit | r32 | r8 | 0.5 | 1 | 72.00 |" in files.md.read_text()


def test_nothing_finished_gives_an_empty_table_and_figures_that_say_so(tmp_path):
    sweep = _sweep(tmp_path)
    files = ReportFiles.of(sweep, tmp_path / "s")
    report = write_report([tmp_path / e.directory for e in sweep.experiments()], files,
                          tmp_path / "results")  # fmt: skip
    assert report.table.empty and files.csv.exists()
    assert report.account().startswith(
        "0 of 6 experiments of this config in the table; 6 not finished yet; no experiment of "
        f"this config has started here: looked in {tmp_path}/results/cifar100/pure/r32/seed0, "
    )


def test_a_report_with_no_rows_never_blanks_a_table_with_rows_unless_asked(tmp_path, capsys):
    sweep = _sweep(tmp_path)  # config A: finished here
    for experiment in sweep.experiments():
        _write(tmp_path, experiment, _accuracy(experiment))
    files = ReportFiles.of(sweep, tmp_path / "results/summary")
    write_report([tmp_path / e.directory for e in sweep.experiments()], files, tmp_path / "results")
    before = {path: path.read_bytes() for path in (files.csv, files.md, *files.figures)}
    assert len(before[files.csv].splitlines()) > 1

    # a config of which nothing ran here (another sweep, the default instead of the demo's)
    other = {**CONFIG_A, "datasets": {"svhn": {"mem_mb": 1000, "runtime": 10}}}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump(other))
    out = str(tmp_path / "results/summary")
    args = ["report", "--configfile", str(tmp_path / "other.yaml"),
            "--results", str(tmp_path / "results"), "--out", out]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no experiment of this config has started here: looked in" in err
    assert f"{files.csv} holds 3 row(s) of an earlier report: kept" in err
    assert {path: path.read_bytes() for path in before} == before  # not a byte changed

    assert main([*args, "--replace"]) == 0  # asked for: written
    assert len(files.csv.read_text().splitlines()) == 1
    assert [f.name for f in files.figures] == ["alpha_cifar100.png", "curves_cifar100.png"]
    assert all(f.stat().st_size > 1000 for f in files.figures)  # drawn, saying nothing is there


def test_kdflow_report_covers_the_configs_experiments(tmp_path, monkeypatch, capsys):
    _sweep(tmp_path)
    for experiment in _sweep(tmp_path, CONFIG_B, "b.yaml").experiments():
        _write(tmp_path, experiment, _accuracy(experiment))
    monkeypatch.chdir(tmp_path)
    assert main(["report", "--configfile", "a.yaml"]) == 0
    out = capsys.readouterr().out
    assert "| cifar100 | logit | r32 | r8 | 0.5 | 1 |" in out  # seed 0: the one A shares with B
    assert "| cifar100 | logit | r32 | r8 | 0.9 |" not in out
    assert ("a.yaml: 3 of 6 experiments of this config in the table; 3 not finished yet; "
            "5 result(s) in results/ belong to no experiment of this config (ignored): "
            "results/cifar100/logit/r32-r8/alpha0.5/seed2, ") in out  # fmt: skip
    assert "wrote results/summary/alpha_cifar100.png" in out
    written = sorted(p.name for p in (tmp_path / "results/summary").iterdir())
    assert written == ["alpha_cifar100.png", "curves_cifar100.png", "results.csv", "results.md"]

    # the default is the Snakefile's config, as for `kdflow status`
    (tmp_path / "config").mkdir()
    (tmp_path / "config/experiments.yaml").write_text(yaml.safe_dump(CONFIG_B))
    assert main(["report", "--out", "b"]) == 0
    assert "8 of 8 experiments of this config in the table\n" in capsys.readouterr().out

    # ... unless KDFLOW_CONFIGFILE names the sweep's config, as it does for scripts/cron.sh
    monkeypatch.setenv("KDFLOW_CONFIGFILE", "a.yaml")
    assert main(["report", "--out", "a"]) == 0
    assert "a.yaml: 3 of 6 experiments of this config in the table" in capsys.readouterr().out


def test_kdflow_report_refuses_a_missing_results_directory_or_a_bad_config(tmp_path, capsys):
    _sweep(tmp_path)
    assert main(["report", "--configfile", str(tmp_path / "a.yaml"),
                 "--results", str(tmp_path / "missing")]) == 2  # fmt: skip
    assert "no results directory" in capsys.readouterr().err
    (tmp_path / "results").mkdir()
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**CONFIG_A, "alphas": [1.5]}))
    assert main(["report", "--configfile", str(tmp_path / "bad.yaml"),
                 "--results", str(tmp_path / "results")]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert err.startswith("kdflow report: ") and "alphas[0] = 1.5" in err
    assert "1 problem(s); nothing to show:" in err and "submitted" not in err


# -- runs of another recipe; the published figures beside kdflow's -----------------------------

ROOT = Path(__file__).resolve().parents[1]


def _trained(root, sweep: Sweep, experiment: Experiment, final_acc: float, **changed) -> None:
    """metrics.json as the trainer writes it for `experiment` of `sweep` (and `completed`)."""
    d = root / experiment.directory
    d.mkdir(parents=True, exist_ok=True)
    identity = {**sweep.spec(experiment).identity, **changed}
    metrics = {**identity, "epochs": sweep.recipe(experiment.dataset).epochs, "best_epoch": 9}
    metrics.update(final_acc=final_acc, best_acc=final_acc + 1, precision_used="fp32")
    (d / "metrics.json").write_text(json.dumps(metrics))
    (d / "completed").write_text("")


def test_a_run_finished_under_an_older_recipe_is_left_out_saying_what_changed(tmp_path):
    """A FitNet run made by kdflow 0.1 (the last stage, a 1x1 conv + BN, the best teacher) is
    no result of today's FitNet: the report leaves it out and says why."""
    sweep = Sweep.from_file(ROOT / "config" / "repdistiller.yaml")
    for experiment in sweep.experiments():
        _trained(tmp_path, sweep, experiment, 70.0)
    old = next(e for e in sweep.experiments() if e.method == "fitnet")
    metrics_path = tmp_path / old.directory / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    del metrics["teacher_weights"], metrics["precision"], metrics["precision_used"]
    metrics["method_settings"] = {"hint_layer": -1, "hint_weight": 100, "ce_weight": 1}
    metrics_path.write_text(json.dumps(metrics))  # what kdflow 0.1 wrote
    expected = {tmp_path / e.directory: sweep.spec(e).identity for e in sweep.experiments()}
    files = ReportFiles.of(sweep, tmp_path / "s")
    report = write_report(list(expected), files, tmp_path / "results", expected)
    changes = (
        "method_settings.hint_layer: -1 -> 2, teacher_weights: 'best' -> 'last', precision: "
        "'auto' -> 'fp32', method_settings.regressor: 'conv1x1_bn' -> 'convreg'"
    )
    assert report.other_recipe == {tmp_path / old.directory: changes}
    assert report.in_table == len(sweep.experiments()) - 1
    assert "1 finished under another recipe than this config's and left out" in report.account()
    assert f"{tmp_path / old.directory} ({changes})" in files.md.read_text()


def test_the_published_figures_stand_beside_kdflows_of_the_same_epoch(tmp_path):
    """config/repdistiller.yaml's runs: each beside its published accuracy, the last epoch's
    for RepDistiller's figures and the best epoch's for DKD's, with the difference; a run of
    another alpha or beta has none; one trained otherwise says how."""
    sweep = Sweep.from_file(ROOT / "config" / "repdistiller.yaml")
    for experiment in sweep.experiments():
        _trained(tmp_path, sweep, experiment, 70.0 + experiment.seed)  # 70, 71, 72
    files = ReportFiles.of(sweep, tmp_path / "s")
    dirs = [tmp_path / e.directory for e in sweep.experiments()]
    published = write_report(dirs, files, tmp_path / "results").published
    rows = published.set_index(["method", "teacher", "model"])
    assert len(rows) == 4 + 2 * 3  # 4 models alone, 2 pairs x 3 methods: all published
    kd = rows.loc[("logit", "resnet32x4", "resnet8x4")]
    assert (kd["published"], kd["epoch"], kd["source"], kd["n"]) == (
        73.33,
        "last",
        "repdistiller",
        3,
    )
    assert kd["kdflow_mean"] == pytest.approx(71.0) and kd["kdflow_std"] == pytest.approx(1.0)
    assert kd["difference"] == pytest.approx(71.0 - 73.33) and kd["note"] == "as published"
    dkd = rows.loc[("dkd", "wrn_40_2", "wrn_16_2")]  # beta 6: mdistiller's, best epoch
    assert (dkd["published"], dkd["epoch"], dkd["kdflow_mean"]) == (76.23, "best", 72.0)
    assert rows.loc[("fitnet", "wrn_40_2", "wrn_16_2")]["published"] == 73.58
    assert rows.loc[("pure", "", "resnet32x4")]["published"] == 79.42
    md = files.md.read_text()
    assert "## Published" in md
    assert "| cifar100 | logit | resnet32x4 | resnet8x4 | 0.9 | 73.33 | last | 71.00 ± 1.00 (3) " \
        "| -2.33 | repdistiller | as published |" in md  # fmt: skip

    # another alpha or beta is no published run; fewer epochs and bf16 are said
    train = {**sweep.config["train"], "epochs": 30, "lr_milestones": [10, 20]}
    methods = {"logit": {}, "dkd": {"beta": 2}}
    sweep = Sweep({**sweep.config, "alphas": [0.5], "train": train, "methods": methods})
    for experiment in sweep.experiments():
        _trained(tmp_path / "b", sweep, experiment, 70.0)
    dirs = [tmp_path / "b" / e.directory for e in sweep.experiments()]
    published = write_report(dirs, ReportFiles.of(sweep, tmp_path / "t"), tmp_path / "b").published
    assert set(published["method"]) == {"pure"}
    assert set(published["note"]) == {
        "epochs 30 (published 240); lr_milestones [10, 20] (published [150, 180, 210])"
    }
