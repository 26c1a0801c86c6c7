"""Figures from generated results, with a corrupt checkpoint and a truncated history among them."""

import json
import logging

import pytest
from PIL import Image

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
