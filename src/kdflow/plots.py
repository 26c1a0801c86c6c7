"""Figures of a sweep: training curves, and student accuracy against alpha with error bars.

Both are drawn for a reader who takes them in at a glance: a colour means one thing in every
panel of a figure and in every dataset's figure of a report (an alpha in the curves, a method
in the alpha figure); the seeds of an experiment are one mean line with a band, not a line
each; the student alone and the teacher are reference curves in the same axes as the
distilled students they frame; legends stand beside the panels, never on the data.
`curves_figure` and `alpha_figure` build the figures (tests inspect them), `plot_curves` and
`plot_alpha` write them. matplotlib is imported where a figure is made: the dashboard imports
this module for read_histories, and `kdflow status` must not pay for matplotlib.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import pandas as pd

from kdflow.config import method_names
from kdflow.fileio import atomic_file

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

HISTORY_COLUMNS = {"epoch", "test_acc", "train_loss"}

# The references, alike in both figures: neutral, so that they never read as an alpha or a method
STUDENT_ALONE = {"color": "black", "ls": "--", "lw": 1.5}
TEACHER = {"color": "0.45", "ls": ":", "lw": 1.8}
BAND = 0.18  # opacity of a min-max band over seeds
FONT = 9  # legends and panel titles: readable at the size the PNG is viewed


def _figure(rows: int, cols: int, width: float, height: float, **kw) -> tuple[Figure, list]:
    """A figure of rows x cols panels with room for a legend beside them. A bare Figure with an
    Agg canvas: no pyplot state to close, nothing a display could be asked for (cron and
    compute nodes have none)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False, **kw)
    return fig, axes


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as f:  # a live plot is read while the next tick rewrites it
        fig.savefig(f, format="png", dpi=110, bbox_inches="tight")
    return path


class Run(NamedTuple):
    """What an experiment's directory says it is; `teacher` and `alpha` are "" for a model
    trained alone, `alpha` is spelt as in the directory (as the config writes it)."""

    dataset: str
    method: str
    teacher: str
    model: str
    alpha: str
    seed: str


def experiment_of(directory: str | Path) -> Run:
    """The experiment of a directory, from the last parts of its path (docs/DESIGN.md, "Paths"):
    .../{dataset}/pure/{model}/seed{seed} or
    .../{dataset}/{method}/{teacher}-{student}/alpha{alpha}/seed{seed} (a pair's directory
    always has a '-', which no model name has), wherever the results directory lies.
    ValueError for a path of neither shape."""
    parts = Path(directory).parts
    if len(parts) >= 4 and parts[-3] == "pure" and parts[-1].startswith("seed"):
        return Run(parts[-4], "pure", "", parts[-2], "", parts[-1].removeprefix("seed"))
    if len(parts) >= 5 and "-" in parts[-3] and parts[-2].startswith("alpha"):
        teacher, student = parts[-3].split("-", 1)
        alpha = parts[-2].removeprefix("alpha")
        return Run(parts[-5], parts[-4], teacher, student, alpha, parts[-1].removeprefix("seed"))
    raise ValueError(f"{directory}: not an experiment's directory (docs/DESIGN.md, Paths)")


def _experiments(directories: Iterable[str | Path]) -> dict[str | Path, Run]:
    """The experiment of each directory (keyed as given); one of no experiment's shape is named
    and left out (a figure is drawn of the rest)."""
    out = {}
    for directory in directories:
        try:
            out[directory] = experiment_of(directory)
        except ValueError as exc:
            log.warning("not drawn: %s", exc)
    return out


def _nothing_yet(path: Path, title: str, text: str) -> Path:
    """A figure that says there is nothing to draw yet (each declared figure is written)."""
    fig, axes = _figure(1, 1, 4.8, 2.4)
    ax = axes[0][0]
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, wrap=True)
    ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def alpha_colours(alphas: Iterable[str]) -> dict[str, tuple]:
    """A colour per alpha, from light to dark as alpha grows (an order the eye reads without the
    legend), spread by rank so that close alphas (0.9, 0.95) stay apart. Given every alpha of a
    report, each alpha has the same colour in each panel and each dataset's figure."""
    from matplotlib import colormaps

    ranked = sorted(set(alphas), key=float)
    ramp = colormaps["viridis_r"]  # yellow-green to dark blue; its ends kept off white and black
    if len(ranked) == 1:
        return {ranked[0]: ramp(0.6)}
    return {a: ramp(0.12 + 0.76 * i / (len(ranked) - 1)) for i, a in enumerate(ranked)}


def method_colours(methods: Iterable[str]) -> dict[str, tuple]:
    """A colour per distillation method, fixed by the methods kdflow knows (a method keeps its
    colour in every figure and every report, whichever others a sweep has); names it does not
    know follow, sorted."""
    from matplotlib import colormaps

    known = method_names()
    order = known + sorted(set(methods) - set(known) - {"pure"})
    palette = colormaps["tab10"]
    return {m: palette(i % 10) for i, m in enumerate(order)}


def _model_colours(models: Iterable[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return {m: palette(i % 10) for i, m in enumerate(dict.fromkeys(models))}


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


def _seed_band(histories: list[pd.DataFrame]) -> pd.DataFrame:
    """Test accuracy per epoch (from 1) over the seeds of one experiment: the mean, min and max
    over the seeds with a number there (a diverged run's nan is no number), and how many seeds
    have reached the epoch (mid-run, some are ahead of others)."""
    rows = pd.concat(
        [h[["epoch", "test_acc"]].drop_duplicates("epoch", keep="last") for h in histories]
    )
    acc = rows.groupby("epoch")["test_acc"]
    band = pd.DataFrame({"mean": acc.mean(), "lo": acc.min(), "hi": acc.max(), "seeds": acc.size()})
    band.index = band.index + 1
    return band


def _draw_seeds(
    ax: Axes, histories: list[pd.DataFrame], gid: str, style: Mapping, zorder: float
) -> tuple[pd.DataFrame, bool]:
    """One line for the seeds of an experiment: their mean, over a min-max band, as far as
    every seed has come; thin on, over the epochs only some seeds have reached yet. The
    artists carry `gid` (the tail `gid` + " tail"). Returns the band (`_seed_band`), and
    whether a thin tail was drawn."""
    band = _seed_band(histories)
    n = len(histories)
    colour = style["color"]
    if n > 1:
        ax.fill_between(band.index, band["lo"], band["hi"], color=colour, alpha=BAND, lw=0,
                        gid=gid, zorder=zorder - 0.5)  # fmt: skip
    every = band[band["seeds"] >= n]
    ax.plot(every.index, every["mean"], gid=gid, zorder=zorder, **style)
    ahead = band[band["seeds"] < n]
    if ahead.empty:
        return band, False
    tail = pd.concat([every.tail(1), ahead])  # joined to the line it continues
    thin = {**style, "lw": 0.7, "alpha": 0.7}
    ax.plot(tail.index, tail["mean"], gid=f"{gid} tail", zorder=zorder, **thin)
    return band, True


def _zoom(ax: Axes, bands: list[pd.DataFrame]) -> None:
    """The y range of a row of panels from the epochs after the first tenth: the fast climb of
    the first epochs would otherwise squeeze the differences a sweep is run for into a few
    pixels at the top. A seed that fell low after that (a diverged run) keeps its whole range."""
    last = max(band.index.max() for band in bands)
    later = [band[band.index > last / 10] for band in bands]
    later = [band for band in later if not band.empty]
    if not later:
        return
    low = min(band["lo"].min() for band in later)
    high = max(band["hi"].max() for band in bands)
    if pd.notna(low) and pd.notna(high) and high > low:
        margin = 0.06 * (high - low)
        ax.set_ylim(low - margin, high + margin)


def _seeds(counts: Iterable[int]) -> str:
    counts = sorted(set(counts))
    if not counts:
        return ""
    span = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    return f"n = {span} seed{'s' if counts[-1] > 1 else ''}"


def curves_figure(
    histories: Mapping[Path, pd.DataFrame],
    dataset: str,
    experiments: Iterable[str | Path] = (),
) -> Figure | None:
    """Test accuracy per epoch of `dataset`'s experiments (`histories`: experiment directory ->
    history, as read_histories gives them), or None if none has a history yet.

    A row per teacher -> student pair, a column per method; in each panel a line per alpha
    (mean over seeds, min-max band) and, as references in the same axes, the student alone and
    the teacher (each its runs' mean). Models trained alone that are in no pair (every model,
    in a sweep without pairs) share one more panel, a line each. The layout and the colours
    come from every experiment of `histories` and `experiments` (the config's directories, of
    every dataset): the panels stay put while a sweep runs, and an alpha has one colour in
    every panel and in every dataset's figure of a report."""
    started = _experiments(histories)
    known = [*_experiments(experiments).values(), *started.values()]
    colours = alpha_colours(r.alpha for r in known if r.method != "pure")
    ours = [r for r in known if r.dataset == dataset]
    pairs = list(dict.fromkeys((r.teacher, r.model) for r in ours if r.method != "pure"))
    methods = list(dict.fromkeys(r.method for r in ours if r.method != "pure"))
    in_pairs = {m for pair in pairs for m in pair}
    lonely = list(dict.fromkeys(r.model for r in ours if r.method == "pure"))
    lonely = [m for m in lonely if m not in in_pairs]

    curves: dict[tuple[str, str, str, str], list[pd.DataFrame]] = {}
    for directory, run in started.items():
        if run.dataset == dataset:
            curves.setdefault(run[1:5], []).append(histories[directory])
    if not curves:
        return None

    rows = len(pairs) + (1 if lonely else 0)
    cols = max(1, len(methods))
    fig, axes = _figure(rows, cols, 1.8 + 4.2 * cols, 0.9 + 3.1 * rows, sharex=True,
                        sharey="row")  # fmt: skip
    drawn_alphas: set[str] = set()
    thin = references = False
    for row, (teacher, student) in enumerate(pairs):
        bands = []
        for col, method in enumerate(methods):
            ax = axes[row][col]
            counts = []
            for model, style, who in ((student, STUDENT_ALONE, "student alone"),
                                      (teacher, TEACHER, "teacher")):  # fmt: skip
                runs = curves.get(("pure", "", model, ""))
                if runs:
                    band, tail = _draw_seeds(ax, runs, who, style, zorder=2)
                    bands.append(band)
                    thin |= tail
                    counts.append(len(runs))
                    references = True
            for alpha in sorted(colours, key=float):
                runs = curves.get((method, teacher, student, alpha))
                if runs:
                    style = {"color": colours[alpha], "lw": 1.6}
                    band, tail = _draw_seeds(ax, runs, f"alpha={alpha}", style, zorder=3)
                    bands.append(band)
                    thin |= tail
                    counts.append(len(runs))
                    drawn_alphas.add(alpha)
            if not counts:
                ax.text(0.5, 0.5, "not started yet", transform=ax.transAxes, ha="center",
                        va="center", fontsize=FONT, color="0.4")  # fmt: skip
            ax.set_title(f"{teacher} → {student} · {method}\n{_seeds(counts)}", fontsize=FONT)
        if bands:
            _zoom(axes[row][0], bands)  # the row shares its y axis
    model_colours = _model_colours(lonely)
    if lonely:
        ax = axes[-1][0]
        counts, bands = [], []
        for model in lonely:
            runs = curves.get(("pure", "", model, ""))
            if runs:
                style = {"color": model_colours[model], "lw": 1.6}
                band, tail = _draw_seeds(ax, runs, model, style, zorder=3)
                bands.append(band)
                thin |= tail
                counts.append(len(runs))
        if bands:
            _zoom(ax, bands)
        title = "trained alone" + (", in no pair" if pairs else "")
        ax.set_title(f"{title}\n{_seeds(counts)}", fontsize=FONT)
        for ax in axes[-1][1:]:
            ax.set_visible(False)
    for ax in (ax for row in axes for ax in row):
        ax.grid(alpha=0.3)
        ax.tick_params(labelsize=FONT, labelbottom=True)
    for row in axes:
        row[0].set_ylabel("test accuracy (%)", fontsize=FONT)
    for col in range(cols):  # under the lowest panel shown of each column
        shown = [row[col] for row in axes if row[col].get_visible()]
        shown[-1].set_xlabel("epoch", fontsize=FONT)

    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Line2D([], [], color=colours[a], lw=2, label=f"KD, α = {a}")
               for a in sorted(drawn_alphas, key=float)]  # fmt: skip
    if references:
        handles += [Line2D([], [], label="student alone", **STUDENT_ALONE),
                    Line2D([], [], label="teacher", **TEACHER)]  # fmt: skip
    handles += [Line2D([], [], color=model_colours[m], lw=2, label=m) for m in lonely]
    handles.append(Patch(color="0.5", alpha=BAND + 0.1, lw=0, label="min–max over seeds"))
    if thin:
        handles.append(Line2D([], [], color="0.3", lw=0.8, label="thin: epochs only some\n"
                              "seeds have reached"))  # fmt: skip
    fig.legend(handles=handles, loc="outside right center", fontsize=FONT, frameon=False)
    fig.suptitle(f"{dataset}: test accuracy per epoch (line: mean over seeds)", fontsize=11)
    return fig


def plot_curves(
    histories: dict[Path, pd.DataFrame],
    files: dict[str, Path],
    results_dir: str | Path | None = None,
    experiments: Iterable[str | Path] = (),
) -> list[Path]:
    """For each dataset of `files`, its figure of training curves (`curves_figure`) of
    `histories`, laid out and coloured by every experiment of them and of `experiments` (the
    config's directories: panels and colours stay put while a sweep runs); a dataset of which
    no experiment has finished an epoch gets a figure that says so. `results_dir` is not
    needed (an experiment's path names it, wherever its results directory lies): it stays so
    that callers that pass it keep working."""
    experiments = list(experiments)
    written = []
    for dataset, path in files.items():
        fig = curves_figure(histories, dataset, experiments)
        if fig is None:
            text = "no experiment has finished an epoch yet"
            written.append(_nothing_yet(Path(path), f"{dataset}: training curves", text))
        else:
            written.append(_save(fig, Path(path)))
    return written


def alpha_figure(table: pd.DataFrame, dataset: str) -> Figure | None:
    """Student accuracy against alpha of `dataset` from the results table, or None if no
    distilled student has finished: a panel per teacher -> student pair, a line per method
    (mean with sample-std error bars over seeds; a method has one colour in every panel and
    every report), the student alone and the teacher as reference lines with their values and
    n in the panel's title. n is said once where every point has the same, and beside each
    point that has fewer seeds."""
    rows = table[table["dataset"] == dataset]
    kd = rows[rows["method"] != "pure"]
    alone = rows[rows["method"] == "pure"].set_index("model")
    pairs = sorted(set(zip(kd["teacher"], kd["model"], strict=True)))
    if not pairs:
        return None
    colours = method_colours(table["method"])
    spelt = {float(a): a for a in kd["alpha"]}  # as the table writes them: 0.5, not 0.50
    alphas = sorted(spelt)
    span = (alphas[-1] - alphas[0]) or 1.0
    most = int(kd["n"].max())
    cols = min(3, len(pairs))
    grid = -(-len(pairs) // cols)
    fig, axes = _figure(grid, cols, 2.0 + 4.6 * cols, 0.9 + 3.6 * grid)
    panels = [ax for row in axes for ax in row]
    shown: dict[str, None] = {}
    for ax, (teacher, student) in zip(panels, pairs, strict=False):
        pair = kd[(kd["teacher"] == teacher) & (kd["model"] == student)]
        present = [m for m in colours if m in set(pair["method"])]
        for i, method in enumerate(present):
            points = pair[pair["method"] == method]
            points = points.assign(a=points["alpha"].astype(float)).sort_values("a")
            # side by side, so that error bars at one alpha do not hide each other
            dodge = (i - (len(present) - 1) / 2) * 0.012 * span
            ax.errorbar(points["a"] + dodge, points["final_acc_mean"],
                        yerr=points["final_acc_std"].fillna(0), color=colours[method],
                        marker="o", ms=5, lw=1.6, capsize=3, gid=method)  # fmt: skip
            shown[method] = None
            for a, y, n in zip(points["a"], points["final_acc_mean"], points["n"], strict=True):
                if n < most:  # beside the point, on the side away from the panel's edge
                    left = a == alphas[-1] and len(alphas) > 1
                    ax.annotate(f"n={n}", (a + dodge, y), textcoords="offset points",
                                xytext=(-5 if left else 5, -12), ha="right" if left else "left",
                                fontsize=FONT - 1, color=colours[method])  # fmt: skip
        said = []
        for model, style, who in ((student, STUDENT_ALONE, "student alone"),
                                  (teacher, TEACHER, "teacher")):  # fmt: skip
            if model in alone.index:
                ref = alone.loc[model]
                ax.axhline(ref["final_acc_mean"], gid=who, zorder=1, **style)
                said.append(f"{who} {ref['final_acc_mean']:.2f} (n={ref['n']})")
        title = f"{teacher} → {student}" + ("\n" + ", ".join(said) if said else "")
        ax.set_title(title, fontsize=FONT)
        ax.set_xticks(alphas, [spelt[a] for a in alphas])
        ax.set_xlabel("alpha (weight of the KD term)", fontsize=FONT)
        ax.tick_params(labelsize=FONT)
        ax.grid(alpha=0.3)
    for ax in panels[len(pairs) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel("test accuracy, last epoch (%)", fontsize=FONT)

    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[m], marker="o", lw=1.6, label=m) for m in shown]
    handles += [Line2D([], [], label="student alone", **STUDENT_ALONE),
                Line2D([], [], label="teacher", **TEACHER)]  # fmt: skip
    fig.legend(handles=handles, loc="outside right center", fontsize=FONT, frameon=False,
               title="method", title_fontsize=FONT, alignment="left")  # fmt: skip
    fig.suptitle(f"{dataset}: student accuracy against alpha\n(mean ± std over seeds, n = {most} "
                 "per point unless marked)", fontsize=11)  # fmt: skip
    return fig


def plot_alpha(table: pd.DataFrame, files: dict[str, Path]) -> list[Path]:
    """For each dataset of `files`, its figure of student accuracy against alpha
    (`alpha_figure`); a dataset with no distilled student finished gets one that says so."""
    written = []
    for dataset, path in files.items():
        fig = alpha_figure(table, dataset)
        if fig is None:
            title = f"{dataset}: student accuracy against alpha"
            written.append(_nothing_yet(Path(path), title, "no distilled student has finished yet"))
        else:
            written.append(_save(fig, Path(path)))
    return written
