"""The results table: mean and std over seeds of every finished experiment, with the KD gain."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from kdflow.fileio import atomic_write_text

log = logging.getLogger(__name__)

GROUP = ["dataset", "method", "teacher", "model", "alpha"]
COLUMNS = GROUP + [
    "n",
    "final_acc_mean",
    "final_acc_std",
    "best_acc_mean",
    "best_acc_std",
    "gain_final",
    "gain_best",
]


def read_metrics(results_dir: str | Path) -> pd.DataFrame:
    """One row per finished experiment (its metrics.json); unreadable files are skipped by path."""
    rows = []
    for path in sorted(Path(results_dir).glob("*/*/**/seed*/metrics.json")):
        try:
            record = json.loads(path.read_text())
            row = {
                "dataset": str(record["dataset"]),
                "method": str(record["method"]),
                "teacher": record.get("teacher") or "",
                "model": str(record["model"]),
                "alpha": "" if record["method"] == "pure" else f"{float(record['alpha']):g}",
                "seed": int(record["seed"]),
                "final_acc": float(record["final_acc"]),
                "best_acc": float(record["best_acc"]),
                "path": str(path.parent),
            }
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("skipping %s: %s", path, exc)
            continue
        rows.append(row)
    columns = GROUP + ["seed", "final_acc", "best_acc", "path"]
    return pd.DataFrame(rows, columns=columns)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds per (dataset, method, teacher, model, alpha).

    The gain is a KD student's mean accuracy minus the same model's mean trained alone on the
    same dataset (NaN if that baseline has not finished).
    """
    if runs.empty:
        return pd.DataFrame(columns=COLUMNS)
    table = (
        runs.groupby(GROUP, sort=True)
        .agg(
            n=("seed", "nunique"),
            final_acc_mean=("final_acc", "mean"),
            final_acc_std=("final_acc", "std"),
            best_acc_mean=("best_acc", "mean"),
            best_acc_std=("best_acc", "std"),
        )
        .reset_index()
    )
    alone = table[table["method"] == "pure"].set_index(["dataset", "model"])
    key = pd.MultiIndex.from_frame(table[["dataset", "model"]])
    for acc in ("final", "best"):
        baseline = alone[f"{acc}_acc_mean"].reindex(key).to_numpy()
        table[f"gain_{acc}"] = table[f"{acc}_acc_mean"] - baseline
    table.loc[table["method"] == "pure", ["gain_final", "gain_best"]] = float("nan")
    return table[COLUMNS]


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown table; accuracies in %, `final` is the last epoch, `best` the best epoch."""
    header = [
        "dataset",
        "method",
        "teacher",
        "student",
        "alpha",
        "n",
        "final acc",
        "best acc",
        "gain (final)",
        "gain (best)",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def pm(mean, std):
        return f"{mean:.2f} ± {std:.2f}" if pd.notna(std) else f"{mean:.2f}"

    def signed(x):
        return f"{x:+.2f}" if pd.notna(x) else ""

    for row in table.itertuples(index=False):
        cells = [
            row.dataset,
            row.method,
            row.teacher,
            row.model,
            row.alpha,
            str(row.n),
            pm(row.final_acc_mean, row.final_acc_std),
            pm(row.best_acc_mean, row.best_acc_std),
            signed(row.gain_final),
            signed(row.gain_best),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    note = (
        "\nTop-1 test accuracy (%), mean ± sample std over n seeds. `final` is the last epoch "
        "(RepDistiller's convention), `best` the best epoch (DKD's). The gain is over the same "
        "student trained alone.\n"
    )
    return "\n".join(lines) + "\n" + note


def write_summary(
    results_dir: str | Path, csv_path: str | Path, md_path: str | Path
) -> pd.DataFrame:
    table = summarize(read_metrics(results_dir))
    Path(csv_path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(csv_path, table.to_csv(index=False, float_format="%.4f"))
    atomic_write_text(md_path, to_markdown(table))
    return table


def write_report(results_dir: str | Path, out_dir: str | Path) -> tuple[pd.DataFrame, list[Path]]:
    """Tables and figures of whatever has finished (curves also of what is still running)."""
    from kdflow.plots import plot_alpha, plot_curves

    out_dir = Path(out_dir)
    table = write_summary(results_dir, out_dir / "results.csv", out_dir / "results.md")
    return table, plot_alpha(table, out_dir) + plot_curves(results_dir, out_dir)
