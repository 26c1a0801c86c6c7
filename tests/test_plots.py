"""Figures from generated results, with a corrupt checkpoint and a truncated history among them."""

import json
import logging

import pytest
from PIL import Image

from kdflow.plots import read_histories
from kdflow.summary import write_report

HEADER = "epoch,train_loss,train_acc,test_loss,test_acc,lr,epoch_seconds,images_per_s\n"


def _experiment(root, rel, metrics, epochs=3):
    d = root / rel
    d.mkdir(parents=True)
    rows = "".join(
        f"{e},{2 - e * 0.5},{50 + e},{1.5},{metrics['final_acc'] - (epochs - 1 - e)},0.05,1.0,900\n"
        for e in range(epochs)
    )
    (d / "history.csv").write_text(HEADER + rows)
    (d / "metrics.json").write_text(json.dumps({**metrics, "best_acc": metrics["final_acc"]}))
    (d / "checkpoint.pth").write_bytes(b"PK\x03\x04 truncated zip")  # never read by plots
    return d


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    for seed in (0, 1, 2):
        common = {"dataset": "cifar100", "seed": seed, "teacher": None, "alpha": 0.0}
        _experiment(
            root,
            f"cifar100/pure/r8/seed{seed}",
            {**common, "method": "pure", "model": "r8", "final_acc": 70.0 + seed},
        )
        _experiment(
            root,
            f"cifar100/pure/r32/seed{seed}",
            {**common, "method": "pure", "model": "r32", "final_acc": 79.0},
        )
        for alpha in (0.5, 0.9):
            _experiment(root, f"cifar100/logit/r32-r8/alpha{alpha}/seed{seed}",
                        {**common, "method": "logit", "model": "r8", "teacher": "r32",
                         "alpha": alpha, "final_acc": 72.0 + alpha + seed})  # fmt: skip
    # a run still in progress whose history was cut mid-line by a copy
    running = root / "cifar100/logit/r32-r8/alpha0.5/seed3"
    running.mkdir(parents=True)
    (running / "history.csv").write_text(HEADER + "0,2.0,50,1.5,40,0.05,1.0,900\n1,1.8,5")
    return root


def test_report_draws_every_figure_and_names_what_it_skipped(results, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        table, figures = write_report(results, tmp_path / "summary")
    assert sorted(f.name for f in figures) == ["alpha_cifar100.png", "curves_cifar100.png"]
    for figure in figures:
        with Image.open(figure) as image:
            assert image.format == "PNG" and image.width > 400 and image.height > 200
    truncated = results / "cifar100/logit/r32-r8/alpha0.5/seed3/history.csv"
    assert str(truncated) in caplog.text
    kd = table[(table["method"] == "logit") & (table["alpha"] == "0.9")].iloc[0]
    assert kd["n"] == 3
    assert kd["final_acc_mean"] == pytest.approx(72.9 + 1.0)  # seeds 0, 1, 2 add 0, 1, 2
    assert kd["final_acc_std"] == pytest.approx(1.0)
    assert kd["gain_final"] == pytest.approx(73.9 - 71.0)


def test_report_of_an_empty_sweep_draws_nothing(tmp_path):
    (tmp_path / "results").mkdir()
    table, figures = write_report(tmp_path / "results", tmp_path / "summary")
    assert table.empty and figures == []


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
        history = read_histories(tmp_path / "results")[d]
    assert list(history["epoch"]) == [0, 1] and list(history["test_acc"]) == [40, 41]
    assert f"{d / 'history.csv'}: ignoring 1 incomplete row(s)" in caplog.text


def test_a_whole_history_is_kept(tmp_path, caplog):
    d = tmp_path / "results/cifar100/pure/r8/seed0"
    d.mkdir(parents=True)
    (d / "history.csv").write_text(
        HEADER + "0,2.0,50,1.5,40,0.05,1.0,900\n1,1.8,51,1.5,41,0.05,1.0,900\n"
    )
    with caplog.at_level(logging.WARNING):
        history = read_histories(tmp_path / "results")[d]
    assert list(history["test_acc"]) == [40, 41] and caplog.text == ""


def test_a_diverged_run_keeps_its_nan_losses_and_its_curve(tmp_path, caplog):
    """`nan` is what the trainer writes for a loss that diverged: a result, not damage."""
    d = tmp_path / "results/cifar100/pure/r8/seed0"
    d.mkdir(parents=True)
    rows = "0,2.0,50,1.5,40,0.05,1.0,900\n1,nan,10,nan,1.0,0.05,1.0,900\n"
    (d / "history.csv").write_text(HEADER + rows)
    with caplog.at_level(logging.WARNING):
        history = read_histories(tmp_path / "results")[d]
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
        assert read_histories(tmp_path / "results") == {}
    assert f"skipping {d / 'history.csv'}" in caplog.text
