"""The results of one sweep's config: the table (mean and std over seeds, with the KD gain),
the published figures beside kdflow's, and the figures, from exactly that config's experiments.

`write_report` is the one code path of the `plot_sweep` rule and of `kdflow report`: both give
it the config's experiment directories (with what each must have been trained as) and the
files to write (`ReportFiles`, which the rule also declares as its outputs), and it says what
it left out and why.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from kdflow.config import RECIPE, identity_changes
from kdflow.fileio import atomic_write_text, read_json

if TYPE_CHECKING:  # pandas is imported where a table is made: the workflow imports this module
    import pandas as pd  # for ReportFiles, and a dry run must not pay for pandas

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
    "precision",
]
# `recipe`: what a run was trained with (its method settings, recipe, teacher weights and
# precision setting) as JSON, which a published figure's recipe is compared with
RUN_COLUMNS = GROUP + ["seed", "final_acc", "best_acc", "precision", "recipe", "path"]
SHOWN = 3  # paths named in the one-line account of what was left out, per reason
PUBLISHED = Path(__file__).with_name("published.yaml")


@dataclass(frozen=True)
class ReportFiles:
    """Every file a report writes: the two tables, and per dataset its figures."""

    csv: Path
    md: Path
    alpha: dict[str, Path]  # dataset -> accuracy against alpha (datasets of a sweep with pairs)
    curves: dict[str, Path]  # dataset -> training curves (every dataset)

    @classmethod
    def of(cls, sweep, out_dir: str | Path = "results/summary") -> ReportFiles:
        """The files of `sweep`'s report: what the rule declares, and `kdflow report` writes."""
        out = Path(out_dir)
        datasets = sweep.datasets
        return cls(
            csv=out / "results.csv",
            md=out / "results.md",
            alpha={d: out / f"alpha_{d}.png" for d in datasets} if sweep.pairs else {},
            curves={d: out / f"curves_{d}.png" for d in datasets},
        )

    @property
    def figures(self) -> list[Path]:
        return [*self.alpha.values(), *self.curves.values()]


@dataclass
class Report:
    """What a report wrote, and what it left out of the table and why."""

    table: pd.DataFrame
    files: ReportFiles
    results_dir: Path
    experiments: int  # of the config
    in_table: int  # experiments whose metrics are in the table
    not_finished: list[Path] = field(default_factory=list)  # no `completed` yet
    unreadable: list[Path] = field(default_factory=list)  # finished, metrics.json unusable
    foreign: list[Path] = field(default_factory=list)  # results of no experiment of the config
    # finished as another experiment than the config's (an older recipe), and how
    other_recipe: dict[Path, str] = field(default_factory=dict)
    published: pd.DataFrame | None = None  # published figures beside kdflow's (`compare`)
    looked_in: list[Path] = field(default_factory=list)  # the experiments' directories

    def account(self) -> str:
        """One line: what the table covers, what it left out and why, e.g. `240 of 252
        experiments of this config in the table; 12 not finished yet; 3 results in results/
        belong to no experiment of this config (ignored): ...`."""
        parts = [f"{self.in_table} of {self.experiments} experiments of this config in the table"]
        if self.not_finished:
            parts.append(f"{len(self.not_finished)} not finished yet")
        if self.unreadable:
            parts.append(
                f"{len(self.unreadable)} finished but left out, metrics.json missing or "
                f"unreadable: {_some(self.unreadable)}"
            )
        if self.other_recipe:
            made = [f"{path} ({how})" for path, how in self.other_recipe.items()]
            parts.append(
                f"{len(made)} finished under another recipe than this config's and left out "
                f"(move them away to train them again): {_some(made)}"
            )
        if self.foreign:
            parts.append(
                f"{len(self.foreign)} result(s) in {self.results_dir}/ belong to no experiment "
                f"of this config (ignored): {_some(self.foreign)}"
            )
        if self.experiments and not self.in_table and not self.started:
            parts.append(
                f"no experiment of this config has started here: looked in "
                f"{_some(self.looked_in)} (another config, or another directory?)"
            )
        return "; ".join(parts)

    @property
    def started(self) -> bool:
        """Whether any experiment of the config has a directory here."""
        return any(path.is_dir() for path in self.looked_in)


class TableKept(RuntimeError):
    """A report with no rows that would replace a table with rows: refused unless asked."""


def _some(paths: list[Path]) -> str:
    shown = ", ".join(map(str, paths[:SHOWN]))
    return shown + (f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else "")


def _key(path: Path) -> str:
    return os.path.abspath(path)


def read_metrics(
    directories: Iterable[str | Path], expected: Mapping[Path, Mapping[str, Any]] | None = None
) -> tuple[pd.DataFrame, list[Path], list[Path], dict[Path, str]]:
    """One row per finished experiment among `directories` (those with `completed`), from its
    metrics.json; and what is left out: the directories not finished, the metrics.json of
    finished ones that is missing or unreadable (each logged by path), and those finished as
    another experiment than `expected` says (directory -> its identity) and how."""
    import pandas as pd

    rows, not_finished, unreadable, other = [], [], [], {}
    for directory in map(Path, directories):
        if not (directory / "completed").exists():
            not_finished.append(directory)
            continue
        path = directory / "metrics.json"
        record = read_json(path)  # logs a damaged file by path
        if record is None:
            if not path.exists():
                log.warning("skipping %s: missing, although `completed` is there", path)
            unreadable.append(path)
            continue
        try:
            row = {
                "dataset": str(record["dataset"]),
                "method": str(record["method"]),
                "teacher": record.get("teacher") or "",
                "model": str(record["model"]),
                "alpha": "" if record["method"] == "pure" else f"{float(record['alpha']):g}",
                "seed": int(record["seed"]),
                "final_acc": float(record["final_acc"]),
                "best_acc": float(record["best_acc"]),
                "precision": str(record.get("precision_used", "")),  # kdflow 0.1 had none
                "recipe": _recipe(record),
                "path": str(directory),
            }
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("skipping %s: %s: %s", path, type(exc).__name__, exc)
            unreadable.append(path)
            continue
        changed = identity_changes(record, expected[directory]) if expected else ""
        if changed:
            log.warning("leaving out %s: finished under another recipe (%s)", directory, changed)
            other[directory] = changed
            continue
        rows.append(row)
    return pd.DataFrame(rows, columns=RUN_COLUMNS), not_finished, unreadable, other


def _recipe(record: Mapping[str, Any]) -> str:
    keys = ["method_settings", "epochs", *RECIPE, "teacher_weights", "precision"]
    return json.dumps({k: record[k] for k in keys if k in record}, sort_keys=True)


def results_of_others(results_dir: str | Path, directories: Iterable[str | Path]) -> list[Path]:
    """Experiment directories under `results_dir` with a metrics.json that are none of
    `directories`: a demo's, an older config's (a report of this config ignores them)."""
    ours = {_key(d) for d in directories}
    found = Path(results_dir).glob("*/*/**/seed*/metrics.json")
    return sorted(path.parent for path in found if _key(path.parent) not in ours)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std over seeds per (dataset, method, teacher, model, alpha).

    The gain is a KD student's mean accuracy minus the same model's mean trained alone on the
    same dataset (NaN if that baseline has not finished).
    """
    import pandas as pd

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
            precision=("precision", lambda p: ", ".join(sorted(set(p) - {""})) or "?"),
            recipe=("recipe", "first"),  # one config's: the same for every seed
        )
        .reset_index()
    )
    alone = table[table["method"] == "pure"].set_index(["dataset", "model"])
    key = pd.MultiIndex.from_frame(table[["dataset", "model"]])
    for acc in ("final", "best"):
        baseline = alone[f"{acc}_acc_mean"].reindex(key).to_numpy()
        table[f"gain_{acc}"] = table[f"{acc}_acc_mean"] - baseline
    table.loc[table["method"] == "pure", ["gain_final", "gain_best"]] = float("nan")
    return table[[*COLUMNS, "recipe"]]


@functools.cache
def _published() -> dict[str, Any]:
    return yaml.safe_load(PUBLISHED.read_text())


def compare(table: pd.DataFrame) -> pd.DataFrame:
    """The published accuracy beside kdflow's mean and std over seeds, of the epoch the source
    reports (RepDistiller the last, DKD the best), and the difference: a row for each row of
    `table` (summarize's) whose experiment has a published figure (src/kdflow/published.yaml);
    `note` says where it was trained otherwise than the source."""
    import pandas as pd

    published, out = _published(), []
    for row in table.itertuples(index=False):
        recipe = json.loads(row.recipe)
        entry = _entry(published, row, recipe.get("method_settings", {}))
        if entry is None:
            continue
        source = published["sources"][entry["source"]]
        acc = "final" if source["epoch"] == "last" else "best"
        mean, std = getattr(row, f"{acc}_acc_mean"), getattr(row, f"{acc}_acc_std")
        wanted = {**published["recipe"], "teacher_weights": source["teacher_weights"]}
        differ = [
            f"{k} {recipe[k]!r} (published {v!r})"
            for k, v in wanted.items()
            if recipe.get(k) not in (None, v)  # what a run's metrics say (no teacher: None)
        ]
        if row.precision not in (source["precision"], "?"):
            differ.append(f"precision {row.precision} (published {source['precision']})")
        out.append(
            {
                **{k: getattr(row, k) for k in GROUP},
                "published": entry["acc"],
                "source": entry["source"],
                "epoch": source["epoch"],
                "n": row.n,
                "kdflow_mean": mean,
                "kdflow_std": std,
                "difference": mean - entry["acc"],
                "note": "; ".join(differ) or "as published",
            }
        )
    columns = [*GROUP, "published", "source", "epoch", "n", "kdflow_mean", "kdflow_std"]
    return pd.DataFrame(out, columns=[*columns, "difference", "note"])


def _entry(published: dict[str, Any], row, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The published figure of `row`'s experiment: the same models, and for a student the
    same alpha and the published method settings."""
    for entry in published["results"]:
        same = (entry["dataset"], entry["method"], entry.get("teacher", ""), entry["model"])
        if same != (row.dataset, row.method, row.teacher, row.model):
            continue
        if row.method == "pure":
            return entry
        wanted = {**published["settings"][row.method], **{"beta": entry.get("beta")}}
        wanted = {k: v for k, v in wanted.items() if v is not None}
        if f"{entry['alpha']:g}" == row.alpha and all(
            settings.get(k) == v for k, v in wanted.items()
        ):
            return entry
    return None


def to_markdown(
    table: pd.DataFrame, account: str | None = None, published: pd.DataFrame | None = None
) -> str:
    """A Markdown table; accuracies in %, `final` is the last epoch, `best` the best epoch;
    `account` (Report.account) says what it covers and what it left out; `published`
    (`compare`) adds the published figures beside kdflow's."""
    import pandas as pd

    def pm(mean, std):
        return f"{mean:.2f} ± {std:.2f}" if pd.notna(std) else f"{mean:.2f}"

    def signed(x):
        return f"{x:+.2f}" if pd.notna(x) else ""

    header = ["dataset", "method", "teacher", "student", "alpha", "n", "final acc", "best acc"]
    header += ["gain (final)", "gain (best)", "precision"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in table.itertuples(index=False):
        cells = [row.dataset, row.method, row.teacher, row.model, row.alpha, str(row.n)]
        cells += [
            pm(row.final_acc_mean, row.final_acc_std),
            pm(row.best_acc_mean, row.best_acc_std),
        ]
        cells += [signed(row.gain_final), signed(row.gain_best), row.precision]
        lines.append("| " + " | ".join(cells) + " |")
    text = "\n".join(lines) + (
        "\n\nTop-1 test accuracy (%), mean ± sample std over n seeds. `final` is the last epoch "
        "(RepDistiller's convention), `best` the best epoch (DKD's). The gain is over the same "
        "student trained alone. `precision`: the arithmetic the runs used.\n"
    )
    if published is not None and not published.empty:
        header = ["dataset", "method", "teacher", "student", "alpha", "published", "epoch"]
        header += ["kdflow (n)", "difference", "source", "trained"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in published.itertuples(index=False):
            cells = [row.dataset, row.method, row.teacher, row.model, row.alpha]
            cells += [f"{row.published:.2f}", row.epoch]
            cells += [f"{pm(row.kdflow_mean, row.kdflow_std)} ({row.n})", signed(row.difference)]
            cells += [row.source, row.note]
            lines.append("| " + " | ".join(cells) + " |")
        sources = "; ".join(f"{k}: {v['name']}" for k, v in _published()["sources"].items())
        text += (
            "\n## Published\n\n" + "\n".join(lines) + "\n\nThe published top-1 accuracy (%) "
            "beside kdflow's mean ± sample std over n seeds, both of the `epoch` the source "
            "reports (last: the last epoch's accuracy, best: the best epoch's), and kdflow's "
            f"minus the published. Sources: {sources}. `trained`: where kdflow's runs differ "
            "from the published recipe.\n"
        )
    if account:
        text += f"\n{account}.\n"
    return text


def _rows_in(csv: Path) -> int:
    """Data rows of a results.csv (0 if it is missing or unreadable)."""
    import csv as csv_format

    try:
        with open(csv, newline="") as f:
            return max(0, sum(1 for row in csv_format.reader(f) if row) - 1)
    except (OSError, UnicodeDecodeError, csv_format.Error):
        return 0


def write_report(
    experiments: Iterable[str | Path],
    files: ReportFiles,
    results_dir: str | Path = "results",
    expected: Mapping[Path, Mapping[str, Any]] | None = None,
    replace_rows: bool = False,
) -> Report:
    """The tables and figures of exactly `experiments` (directories under `results_dir`):
    the table of those finished, curves also of those still running. Writes every file of
    `files`, a figure with nothing to draw yet saying so; logs what it left out. With
    `expected` (directory -> the identity its config gives it, `TrainSpec.identity`), a run
    that finished as another experiment is left out of the table and said to be. A table
    with no rows never replaces one with rows (TableKept, nothing written) unless
    `replace_rows`: a report run with the wrong config must not blank a sweep's results."""
    from kdflow.plots import plot_alpha, plot_curves, read_histories

    directories = [Path(d) for d in experiments]
    runs, not_finished, unreadable, other = read_metrics(directories, expected)
    table = summarize(runs)
    report = Report(
        table=table,
        files=files,
        results_dir=Path(results_dir),
        experiments=len(directories),
        in_table=len(runs),
        not_finished=not_finished,
        unreadable=unreadable,
        foreign=results_of_others(results_dir, directories),
        other_recipe=other,
        published=compare(table),
        looked_in=directories,
    )
    kept = _rows_in(files.csv)
    if table.empty and kept and not replace_rows:
        raise TableKept(
            f"{report.account()}. {files.csv} holds {kept} row(s) of an earlier report: kept, "
            "with its figures (an empty table would replace them). Name the config those "
            "results belong to (--configfile), or replace it anyway (--replace)."
        )
    files.csv.parent.mkdir(parents=True, exist_ok=True)
    csv = table[COLUMNS].to_csv(index=False, float_format="%.4f")
    atomic_write_text(files.csv, csv)
    atomic_write_text(files.md, to_markdown(table, report.account(), report.published))
    plot_alpha(table, files.alpha)
    plot_curves(read_histories(directories), files.curves, results_dir, directories)
    log.info("%s", report.account())
    return report
