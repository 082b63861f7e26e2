"""Figures of training runs: the curves of the papers' Figures 4 and 6, and confusion matrices.

Every figure is saved twice by ``save_figure``: PNG to look at, SVG to put in a paper or a page.
Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so drawing keeps no global
state, leaks no open figures however many an experiment makes, and needs no display: the caller's
backend (a notebook's, a script's ``plt.show()``) is left as it was.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import EngFormatter, MaxNLocator

from .runs import CONFIG, atomic_write, read_metrics

_SUFFIXES = (".png", ".svg", ".csv", ".pdf")
_X_LABELS = {"step": "iterations", "epoch": "epochs"}
CSV_COLUMNS = ("run", "epoch", "step", "train_loss", "test_loss", "train_error", "test_error")
_MARKED_POINTS = 30  # curves of this many points or fewer get a marker at each, which stays legible


def save_figure(fig: Figure, out: str | Path) -> list[Path]:
    """Write ``fig`` as ``out.png`` and ``out.svg`` (a suffix on ``out`` is replaced), and as
    ``out.pdf`` too when ``out`` ends in ``.pdf``; return the paths written."""
    base = _base(out)  # its folder is made by atomic_write, which names a file in the way
    # No date in the SVG or PDF, so that the same figure gives the same file.
    formats = {"png": {"dpi": 150}, "svg": {"metadata": {"Date": None}}}
    if Path(out).suffix.lower() == ".pdf":
        formats["pdf"] = {"metadata": {"CreationDate": None}}
    paths = []
    for fmt, options in formats.items():
        # Each file whole or not at all: a full disk keeps the figure drawn before rather than cutting it short.
        path = _with(base, "." + fmt)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, bbox_inches="tight", **options))
        paths.append(path)
    return paths


def plot_runs(run_dirs: Sequence[str | Path], out: str | Path, x: str = "step") -> list[Path]:
    """Training curves of one or more runs, overlaid: loss and error (%) against iterations or epochs.

    Writes ``out.png``, ``out.svg`` and ``out.csv`` (the numbers behind the figure) and returns their
    paths. ``x`` is ``"step"`` (iterations, as the papers plot) or ``"epoch"``.
    """
    if x not in _X_LABELS:
        raise ValueError(f"x must be one of {', '.join(_X_LABELS)}, got {x!r}")
    if not run_dirs:
        raise ValueError("plot_runs needs at least one run directory")
    dirs = [Path(d) for d in run_dirs]
    series = [_series(read_metrics(d)) for d in dirs]
    configs = [_config(d) for d in dirs]
    names = _run_names(dirs)
    labels = [_run_label(name, c.get("model", "")) for name, c in zip(names, configs)]
    datasets = {c.get("dataset") for c in configs}
    dataset = datasets.pop() if len(datasets) == 1 else None
    sizes = {_size_text(c) for c in configs}  # said once, when every run shares it
    size = sizes.pop() if len(sizes) == 1 else ""
    paths = save_figure(_curves_figure(list(zip(labels, series)), x, dataset, size), out)

    csv_path = _with(_base(out), ".csv")

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:  # run names in any script, in any locale
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for name, s in zip(names, series):
                for values in zip(*(s[c] for c in CSV_COLUMNS[1:])):
                    writer.writerow([name] + ["" if v is None else v for v in values])

    atomic_write(csv_path, write_csv)
    return paths + [csv_path]


MAX_NAMED_CLASSES = 60  # more classes than this are numbered on a confusion matrix's axes, not named


def plot_confusion(matrix: Sequence[Sequence[int]], classes: list[str], out: str | Path, title: str) -> list[Path]:
    """A confusion matrix as a heat map (rows: true class, columns: predicted), saved as PNG and SVG.

    Colour is the fraction of each true class, so rare classes read as clearly as common ones;
    the counts are written in the cells when there are at most 20 classes, the names on the axes
    when there are at most ``MAX_NAMED_CLASSES``.
    """
    return save_figure(_confusion_figure(matrix, classes, title), out)


# --- helpers ------------------------------------------------------------------------------------


def _base(out: str | Path) -> Path:
    """``out`` without a figure or table suffix; other dots (``resnet20.fast``) stay in the name."""
    out = Path(out)
    return out.with_suffix("") if out.suffix.lower() in _SUFFIXES else out


def _with(base: Path, suffix: str) -> Path:
    return base.parent / (base.name + suffix)


def _config(run_dir: Path) -> dict:
    """The run's config.json, or {} where there is none (plots need only the metrics)."""
    path = run_dir / CONFIG
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON object")
    return config


def _run_names(dirs: Sequence[Path]) -> list[str]:
    """Each run's directory name, or as many of its path's last folders as tell it from the others
    (``a/run`` and ``b/run``); ``.`` is named after the folder it is."""
    paths = [d.resolve() for d in dirs]
    for depth in range(1, max(len(p.parts) for p in paths) + 1):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]  # the same run given twice


def _run_label(name: str, model: str) -> str:
    """The run's name, with its model when the name does not already say it."""
    return name if model in name else f"{name} ({model})"


def _size_text(config: dict) -> str:
    """How long the run was planned and on how many images, for a title ("" where config.json does not say)."""
    parts = [f"{config['total_steps']:,} iterations" if config.get("total_steps") else "",
             f"{config['train_examples']:,} training images" if config.get("train_examples") else "",
             f"{config['test_examples']:,} test images" if config.get("test_examples") else ""]
    return ", ".join(p for p in parts if p)


def _series(rows: list[dict]) -> dict[str, list]:
    """Columns of the CSV from metrics rows; accuracy (a fraction) becomes error in percent."""
    def error(acc: float | None) -> float | None:
        # Rounded so that an accuracy of 0.91 reads 9.0, not 8.999999999999996.
        return None if acc is None else round(100.0 * (1.0 - acc), 9)

    return {
        "epoch": [r["epoch"] for r in rows],
        "step": [r["step"] for r in rows],
        "train_loss": [r["train_loss"] for r in rows],
        "test_loss": [r.get("test_loss") for r in rows],
        "train_error": [error(r["train_acc"]) for r in rows],
        "test_error": [error(r.get("test_acc")) for r in rows],
    }


def _points(xs: list, ys: list) -> tuple[list, list]:
    """The points that have a value (test metrics are missing between evaluations)."""
    kept = [(a, b) for a, b in zip(xs, ys) if b is not None]
    return [a for a, _ in kept], [b for _, b in kept]


def _curves_figure(runs: list[tuple[str, dict[str, list]]], x: str, dataset: str | None = None, size: str = "") -> Figure:
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    loss_ax, err_ax = fig.subplots(1, 2)
    # Both panels as the 2015 paper's Figure 6: train dashed and thin, test solid and bold.
    train, test = dict(ls="--", lw=1.2), dict(ls="-", lw=2.2)
    styles = {
        loss_ax: {"train_loss": train, "test_loss": test},
        err_ax: {"train_error": train, "test_error": test},
    }
    colours = matplotlib.colormaps["tab10"].colors
    for i, (_, s) in enumerate(runs):
        # Markers only while they can be told apart: short runs have few points.
        marker = "o" if len(s[x]) <= _MARKED_POINTS else None
        for ax, columns in styles.items():
            for column, style in columns.items():
                # Training hollow, test filled: a run of one epoch is two points, which no line style tells apart.
                face = "none" if column.startswith("train") else colours[i % 10]
                ax.plot(*_points(s[x], s[column]), color=colours[i % 10], marker=marker, ms=3, mfc=face, **style)

    losses = [v for _, s in runs for c in ("train_loss", "test_loss") for v in s[c] if v is not None]
    if losses and min(losses) > 0 and max(losses) / min(losses) > 10:  # none: every loss diverged
        loss_ax.set_yscale("log")
    xs = {v for _, s in runs for v in s[x]}
    if len(xs) == 1:  # one evaluation: whole numbers either side, not 1.975 ... 2.1
        (only,) = xs
        for ax in (loss_ax, err_ax):
            ax.set_xlim(only - 1, only + 1)
    err_ax.set_ylim(bottom=0)
    for ax, what in ((loss_ax, "loss (cross-entropy)"), (err_ax, "error (%)")):
        ax.set_xlabel(_X_LABELS[x])
        ax.set_ylabel(what)
        ax.grid(True, which="major", alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if x == "step":
            ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 64000 -> 64k
        marked = any(len(s[x]) <= _MARKED_POINTS for _, s in runs)  # as the curves: hollow for training, filled for test
        handles = [Line2D([], [], color="black", label=c.split("_")[0], marker="o" if marked else None, ms=4,
                          mfc="none" if c.startswith("train") else "black", **st) for c, st in styles[ax].items()]
        ax.legend(handles=handles, loc="best", fontsize=9)
    what = runs[0][0] if len(runs) == 1 else f"{len(runs)} runs"
    if size and len(runs) > 1:
        size += ", each"
    fig.suptitle(f"Training curves: {what}" + (f" on {dataset}" if dataset else "") + (f"\n{size}" if size else ""))
    fig.legend(
        handles=[Line2D([], [], color=colours[i % 10], lw=2, label=label) for i, (label, _) in enumerate(runs)],
        loc="outside lower center", ncol=min(len(runs), 3), fontsize=9, frameon=False,
    )
    return fig


def _confusion_figure(matrix: Sequence[Sequence[int]], classes: list[str], title: str) -> Figure:
    n = len(classes)
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"the confusion matrix must be {n}x{n} for {n} classes")
    totals = [sum(row) for row in matrix]
    fractions = [[c / t if t else 0.0 for c in row] for row, t in zip(matrix, totals)]
    correct, seen = sum(matrix[i][i] for i in range(n)), sum(totals)

    side = min(max(5.0, 0.45 * n + 2.5), 16.0)
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="fraction of the true class (the cells' colour)")
    if n <= 20:
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                dark = fractions[i][j] > 0.5
                ax.text(j, i, str(count), ha="center", va="center", fontsize=8, color="white" if dark else "black")
    if n <= MAX_NAMED_CLASSES:
        size = 9 if n <= 20 else 5
        ax.set_xticks(range(n), classes, rotation=45, ha="right", rotation_mode="anchor", fontsize=size)
        ax.set_yticks(range(n), classes, fontsize=size)
        ax.set_xlabel("predicted class")
        ax.set_ylabel("true class")
    else:
        # ImageNet's thousand names would print over each other, and laying them out takes minutes.
        ax.set_xlabel("predicted class (index into the classes of eval.json)")
        ax.set_ylabel("true class (index)")
    accuracy = f"accuracy {correct / seen:.2%} of {seen:,}" if seen else "no examples"
    if n <= 20:
        accuracy += "; numbers are image counts"
    ax.set_title(f"{title}\n{accuracy}")
    return fig
