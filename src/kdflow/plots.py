"""Figures of a sweep: training curves, and student accuracy against alpha with error bars."""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from kdflow.fileio import atomic_file

log = logging.getLogger(__name__)

HISTORY_COLUMNS = {"epoch", "test_acc", "train_loss"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: cron and compute nodes have no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:  # a live plot is read while the next tick rewrites it
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def experiment_label(directory: Path, results_dir: Path) -> tuple[str, str, str]:
    """(dataset, group, run) from an experiment path: group is the model or the pair."""
    parts = directory.relative_to(results_dir).parts
    if parts[1] == "pure":  # {dataset}/pure/{model}/seed{seed}
        return parts[0], parts[2], f"pure {parts[3]}"
    # {dataset}/{method}/{teacher}-{student}/alpha{alpha}/seed{seed}
    return parts[0], parts[2], f"{parts[1]} a={parts[3][5:]} {parts[4]}"


def _nothing_yet(path: Path, title: str, text: str) -> Path:
    """A figure that says there is nothing to draw yet (each declared figure is written)."""
    fig, ax = _pyplot().subplots(figsize=(4.8, 2.4))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
    ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def read_histories(directories: Iterable[str | Path]) -> dict[Path, pd.DataFrame]:
    """The history.csv of each experiment directory that has one, finished or not (one that has
    not started has none); damaged ones are skipped by path.

    A row cut short (by a copy or a full disk) is left out with a warning: one with fewer
    fields than the header, and a last line without its newline, since the trainer writes whole
    lines and a cut can leave every field parsing: "25.0" cut to "2" is a number, a wrong one.
    Complete rows are kept as written, a diverged run's `nan` losses included.
    """
    out = {}
    for directory in map(Path, directories):
        path = directory / "history.csv"
        try:
            text = path.read_text()
            parsed = [row for row in csv.reader(io.StringIO(text)) if row]
            if not parsed:
                raise ValueError("empty file")
            header, *rows = parsed
            missing = HISTORY_COLUMNS - set(header)
            if missing:
                raise ValueError(f"missing columns {sorted(missing)}")
            complete = [row for row in rows if len(row) == len(header)]
            if complete and complete[-1] is rows[-1] and not text.endswith("\n"):
                complete.pop()
            history = pd.DataFrame(complete, columns=header)
            history = history.astype(float)  # "nan" included: a diverged loss
        except FileNotFoundError:
            continue  # not started yet
        except (OSError, ValueError, csv.Error) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        if len(complete) < len(rows):
            log.warning("%s: ignoring %d incomplete row(s)", path, len(rows) - len(complete))
        if not history.empty:
            out[path.parent] = history
    return out


def plot_curves(
    histories: dict[Path, pd.DataFrame], files: dict[str, Path], results_dir: str | Path
) -> list[Path]:
    """For each dataset of `files`, its figure: test accuracy per epoch of `histories`
    (experiment directory -> history, as read_histories gives them), a panel per model or
    pair."""
    plt = _pyplot()
    results_dir = Path(results_dir)
    by_dataset: dict[str, dict[str, list[tuple[str, pd.DataFrame]]]] = {}
    for directory, history in histories.items():
        dataset, group, run = experiment_label(directory, results_dir)
        by_dataset.setdefault(dataset, {}).setdefault(group, []).append((run, history))

    written = []
    for dataset, path in files.items():
        groups = by_dataset.get(dataset)
        if not groups:
            text = "no experiment has finished an epoch yet"
            written.append(_nothing_yet(Path(path), f"{dataset}: training curves", text))
            continue
        fig, axes = plt.subplots(
            1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False, sharey=True
        )
        for ax, (group, runs) in zip(axes[0], sorted(groups.items()), strict=True):
            for run, history in sorted(runs, key=lambda r: r[0]):
                ax.plot(history["epoch"] + 1, history["test_acc"], lw=1.2, label=run)
            ax.set_title(group, fontsize=10)
            ax.set_xlabel("epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, ncol=1 + len(runs) // 8)
        axes[0][0].set_ylabel("test accuracy (%)")
        fig.suptitle(f"{dataset}: training curves", fontsize=11)
        written.append(_save(fig, Path(path)))
    return written


def plot_alpha(table: pd.DataFrame, files: dict[str, Path]) -> list[Path]:
    """For each dataset of `files`, a panel per teacher -> student pair of the results table:
    student accuracy against alpha for each method, mean with sample-std error bars over seeds
    (n beside each point), and the student-alone and teacher accuracies as reference lines."""
    plt = _pyplot()
    written = []
    for dataset, path in files.items():
        rows = table[table["dataset"] == dataset]
        kd = rows[rows["method"] != "pure"]
        alone = rows[rows["method"] == "pure"].set_index("model")
        pairs = sorted(set(zip(kd["teacher"], kd["model"], strict=True)))
        if not pairs:
            title = f"{dataset}: student accuracy against alpha"
            written.append(_nothing_yet(Path(path), title, "no distilled student has finished yet"))
            continue
        fig, axes = plt.subplots(1, len(pairs), figsize=(4.8 * len(pairs), 3.8), squeeze=False)
        for ax, (teacher, student) in zip(axes[0], pairs, strict=True):
            pair = kd[(kd["teacher"] == teacher) & (kd["model"] == student)]
            for method, points in pair.groupby("method", sort=True):
                points = points.assign(a=points["alpha"].astype(float)).sort_values("a")
                ax.errorbar(
                    points["a"],
                    points["final_acc_mean"],
                    yerr=points["final_acc_std"].fillna(0),
                    marker="o",
                    capsize=3,
                    label=method,
                )
                means = zip(points["a"], points["final_acc_mean"], points["n"], strict=True)
                for a, y, n in means:
                    ax.annotate(f"n={n}", (a, y), textcoords="offset points", xytext=(4, -10),
                                fontsize=7)  # fmt: skip
            for model, style, who in ((student, "--", "student alone"), (teacher, ":", "teacher")):
                if model in alone.index:
                    ref = alone.loc[model]
                    label = f"{who} ({ref['final_acc_mean']:.2f}, n={ref['n']})"
                    ax.axhline(ref["final_acc_mean"], ls=style, color="grey", label=label)
            ax.set_title(f"{teacher} -> {student}", fontsize=10)
            ax.set_xlabel("alpha (weight of the KD term)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0][0].set_ylabel("test accuracy, last epoch (%)")
        fig.suptitle(f"{dataset}: student accuracy against alpha (mean ± std over seeds)",
                     fontsize=11)  # fmt: skip
        written.append(_save(fig, Path(path)))
    return written
