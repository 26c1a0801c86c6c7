"""The results table equals a hand computation; damaged metrics are skipped by path."""

import json
import logging
import statistics

import pytest

from kdflow.summary import read_metrics, summarize, write_summary


def _write(root, rel, **metrics):
    d = root / rel
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(metrics))
    return d


def _sweep(root):
    for seed, (alone, kd, teacher) in enumerate([(70.0, 72.0, 80.0), (71.0, 73.5, 79.0)]):
        common = {"dataset": "cifar100", "seed": seed, "best_acc": 0.0}
        _write(
            root,
            f"cifar100/pure/r8/seed{seed}",
            **common,
            method="pure",
            model="r8",
            final_acc=alone,
            teacher=None,
            alpha=0.0,
        )
        _write(
            root,
            f"cifar100/pure/r32/seed{seed}",
            **common,
            method="pure",
            model="r32",
            final_acc=teacher,
            teacher=None,
            alpha=0.0,
        )
        _write(
            root,
            f"cifar100/logit/r32-r8/alpha0.5/seed{seed}",
            **common,
            method="logit",
            model="r8",
            teacher="r32",
            alpha=0.5,
            final_acc=kd,
        )


def test_mean_std_and_gain_equal_a_hand_computation(tmp_path):
    _sweep(tmp_path)
    table = summarize(read_metrics(tmp_path)).set_index(["method", "model"])
    kd = table.loc[("logit", "r8")]
    assert kd["n"] == 2
    assert kd["final_acc_mean"] == pytest.approx(72.75)
    assert kd["final_acc_std"] == pytest.approx(statistics.stdev([72.0, 73.5]))
    assert kd["gain_final"] == pytest.approx(72.75 - 70.5)
    assert table.loc[("pure", "r32")]["final_acc_mean"] == pytest.approx(79.5)


def test_damaged_metrics_are_skipped_with_their_path(tmp_path, caplog):
    _sweep(tmp_path)
    bad = tmp_path / "cifar100/logit/r32-r8/alpha0.5/seed1/metrics.json"
    bad.write_text('{"dataset": "cifar100", "final_')
    with caplog.at_level(logging.WARNING):
        table = write_summary(tmp_path, tmp_path / "s/results.csv", tmp_path / "s/results.md")
    assert str(bad) in caplog.text
    kd = table.set_index(["method", "model"]).loc[("logit", "r8")]
    assert kd["n"] == 1 and kd["final_acc_mean"] == pytest.approx(72.0)
    assert (
        "| cifar100 | logit | r32 | r8 | 0.5 | 1 | 72.00 |"
        in (tmp_path / "s/results.md").read_text()
    )


def test_nothing_finished_gives_an_empty_table(tmp_path):
    table = write_summary(tmp_path, tmp_path / "results.csv", tmp_path / "results.md")
    assert table.empty and (tmp_path / "results.csv").exists()


def test_kdflow_report_writes_the_tables(tmp_path, capsys):
    from kdflow.cli import main

    _sweep(tmp_path / "results")
    assert (
        main(["report", "--results", str(tmp_path / "results"), "--out", str(tmp_path / "s")]) == 0
    )
    assert "| cifar100 | logit | r32 | r8 | 0.5 | 2 |" in capsys.readouterr().out
    assert (tmp_path / "s" / "results.csv").exists()
    assert main(["report", "--results", str(tmp_path / "missing")]) == 2
    assert "no results directory" in capsys.readouterr().err
