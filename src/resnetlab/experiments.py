"""Experiments that show why residual learning works: ``resnetlab reproduce EXPERIMENT``.

- ``degradation``: the 2015 paper's Figure 6. Deeper plain nets train worse; deeper ResNets do not.
- ``depth``: its Table 6. Test error and parameters of residual nets from 20 to 110 layers.
- ``gradients``: the seed notebook's Figure 1. Whether a deep plain net's gradients vanish (or explode) towards
  its input, where a ResNet's identity paths keep them comparable across depth.
- ``responses``: the 2015 paper's Figure 7. The layers of residual nets respond more weakly than plain ones.
- ``orders``: the 2016 paper's Table 2. Where BN and ReLU sit around the addition (its Figure 4).
- ``shortcuts``: its Table 1. Scaled, gated, projected or dropped-out shortcuts against the identity.

Each experiment trains its nets into ``OUT/runs/<model>-s<seed>``, then writes its figures (PNG
and SVG), the numbers behind them (CSV or JSON) and a Markdown report into ``OUT``. A run that already
finished with the same settings is reused and an interrupted one is resumed, so a figure can be
redrawn, or an experiment continued, without training again.

``resnetlab reproduce`` (in ``cli``) calls the ``reproduce_*`` functions. matplotlib is imported
only when a figure is drawn: training alone should not wait for a plotting library.
"""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from . import runs
from .ablations import STUDIES, variant_of
from .data import folder_sizes, get_dataset, load_split, reload_sizes, resolve_dataset
from .devices import pick_device
from .evaluate import eval_mode
from .loader import make_loader
from .models import ResNet, cifar_blocks_per_stage, count_parameters, depth_of
from .recipes import Recipe, default_recipe, warmup_note
from .train import TrainConfig, resolve_recipe, resume, train

if TYPE_CHECKING:
    from matplotlib.figure import Figure

KINDS = ("plain", "residual")
MIN_POINTS = 5  # evaluations per run below which a curve is too coarse to read


# --- training the nets an experiment needs ------------------------------------------------------


def _model_name(kind: str, depth: int) -> str:
    """The registered name of a CIFAR-style net: ``plain20`` or ``resnet20``."""
    return f"{'plain' if kind == 'plain' else 'resnet'}{depth}"


def _label(kind: str, depth: int) -> str:
    """The 2015 paper's legend names: plain-20, ResNet-20."""
    return f"{'plain' if kind == 'plain' else 'ResNet'}-{depth}"


def _check_depths(depths: Iterable[int]) -> list[int]:
    """The depths sorted and without repeats; every one must be a 6n+2 CIFAR depth."""
    depths = sorted(set(depths))
    if not depths:
        raise ValueError("give at least one depth")
    for d in depths:
        if not cifar_blocks_per_stage(d, "basic", missing_ok=True):
            raise ValueError(f"depth {d} is not a CIFAR net's 6n+2 layers: use 8, 14, 20, 32, 44, 56, 110, ...")
    return depths


def _check_seeds(seeds: int) -> None:
    if seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {seeds}")


def train_or_reuse(config: TrainConfig) -> Path:
    """Train ``config`` into ``config.out``; reuse the run there if it finished with the same settings.

    A run with the same settings that stopped early is resumed. A run with other settings is an
    error rather than something to overwrite or, worse, to plot as if it were the one asked for.
    """
    run_dir = Path(config.out)
    if not (run_dir / runs.CHECKPOINT).exists():
        # Nothing trained yet, or a run killed before its first checkpoint (train starts that one afresh).
        # A variant that fails (the 2016 paper's "fail" rows) is a result: it trains to the end.
        return train(replace(config, stop_on_divergence=False)).run_dir
    saved = runs.read_config(run_dir)
    asked = {
        # As config.json holds them: the dataset resolved (a folder's absolute path), the recipe as a Recipe
        # (its notes are prose, not a setting).
        "model": config.model, "dataset": resolve_dataset(config.dataset, config.data_dir), "seed": config.seed,
        "limit_train": config.limit_train, "limit_test": config.limit_test,
        "grad_norm_every": config.grad_norm_every, "weights": config.weights,
    }
    differ = [key for key, value in asked.items() if saved.get(key) != value]
    # Only a folder's images depend on it (its held-out tenth, its --limit draws); a named dataset's are its first N.
    if asked["dataset"].startswith("folder:") and runs.data_seed(saved) != config.data_seed:
        differ.append("data_seed" if "data_seed" in saved else
                      f"data_seed: trained before --data-seed, its held-out images follow its seed {saved['seed']}")
    recipe = resolve_recipe(config)
    differ += ["recipe"] if Recipe.from_dict(saved["recipe"]) != recipe else []
    # The side trained at, where the request decides it: given, or a folder's default (a named dataset's own
    # size is known only once it is loaded).
    size = folder_sizes(asked["dataset"], config.image_size, recipe)[0]
    differ += ["image_size"] if size is not None and saved.get("image_size") != size else []
    # Both ways: an option the saved run was built with and the request lacks (order=preact in a
    # folder where the original net is asked for) changes the net as much as one asked for and missing.
    # The class count and channels come from the dataset, which is compared above.
    saved_options = {k: v for k, v in saved.get("model_kwargs", {}).items() if k not in ("num_classes", "in_chans")}
    asked_options = json.loads(json.dumps(config.model_kwargs))
    options = [*asked_options, *(k for k in saved_options if k not in asked_options)]
    differ += [f"model option {k}" for k in options if saved_options.get(k) != asked_options.get(k)]
    if differ:
        raise ValueError(f"{run_dir} holds a run with other settings ({', '.join(differ)}): delete it or pick another --out")
    rows = runs.read_metrics(run_dir, missing_ok=True)
    if rows and rows[-1]["step"] >= saved["total_steps"]:
        print(f"reusing the finished run {run_dir}")
        return run_dir
    print(f"resuming {run_dir}")
    return resume(run_dir, device=config.device, progress=config.progress).run_dir


def _train_nets(
    base: TrainConfig, out: Path, models: Iterable[str], seeds: Iterable[int], **fields
) -> dict[tuple[str, int], Path]:
    """Train (or reuse) every model with every seed into ``OUT/runs/<model>-s<seed>``."""
    done = {}
    for model in models:
        for seed in seeds:
            run_dir = out / "runs" / f"{model}-s{seed}"
            print(f"--- {model}, seed {seed}: {run_dir}")
            config = replace(base, model=model, seed=seed, out=str(run_dir), eval_every=1, **fields)
            done[model, seed] = train_or_reuse(config)
    return done


def _error(accuracy: float | None) -> float | None:
    """Accuracy (a fraction) as error in percent, rounded so that 0.91 reads 9.0 and not 8.999999999999996."""
    return None if accuracy is None else round(100.0 * (1.0 - accuracy), 9)


def _curve(run_dir: Path) -> list[dict]:
    """A run's evaluations: step, training error and test error (%) at the end of each epoch."""
    return [
        {"step": r["step"], "train_error": _error(r["train_acc"]), "test_error": _error(r.get("test_acc"))}
        for r in runs.read_metrics(run_dir)
    ]


def _mean_curve(per_seed: Sequence[list[dict]]) -> list[dict]:
    """The seeds' curves of one net averaged evaluation by evaluation: seeds share the settings, so their
    evaluations fall on the same steps. With several seeds, each row also has the range of their test
    errors (``test_low``, ``test_high``), which the figures shade: a mean alone hides the spread."""
    curve = []
    for rows in zip(*per_seed):
        row = {"step": rows[0]["step"], **{c: statistics.mean(r[c] for r in rows) for c in ("train_error", "test_error")}}
        if len(rows) > 1:
            row |= {"test_low": min(r["test_error"] for r in rows), "test_high": max(r["test_error"] for r in rows)}
        curve.append(row)
    return curve


def _seeds_band(ax, rows: list[dict], colour) -> None:
    """Shade the seeds' range of test error under a mean curve (nothing for one seed)."""
    if rows and "test_low" in rows[0]:
        ax.fill_between([r["step"] for r in rows], [r["test_low"] for r in rows], [r["test_high"] for r in rows],
                        color=colour, alpha=0.15, lw=0)


_BAND = "shaded: the seeds' range of test error"


def _mean_std(values: Sequence[float]) -> str:
    """``12.34 ± 0.56`` over seeds, or the single value."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def _seeds_text(base: TrainConfig, seeds: int) -> str:
    return f"seed {base.seed}" if seeds == 1 else f"seeds {base.seed}-{base.seed + seeds - 1}"


def _setup_text(base: TrainConfig) -> str:
    """One line saying what the nets were trained on, for reports and figure titles."""
    # The recipe's name alone would claim its batch size and learning rate where the flags replaced them.
    changed = [f"batch {base.batch_size}" if base.batch_size else "", f"lr {base.lr:g}" if base.lr else "",
               *(f"{key}={value if isinstance(value, str) else json.dumps(value)}" for key, value in base.recipe_overrides.items())]
    parts = [base.dataset, f"recipe {base.recipe or default_recipe(base.model)}" + (f" with {', '.join(c for c in changed if c)}" if any(changed) else "")]
    if base.steps:
        parts.append(f"{base.steps:,} iteration{'s' if base.steps != 1 else ''}")
    elif base.epochs:
        parts.append(f"{base.epochs:g} epoch{'s' if base.epochs != 1 else ''}")
    if base.limit_train:
        parts.append(f"first {base.limit_train:,} training images")
    if base.limit_test:
        parts.append(f"first {base.limit_test:,} test images")
    return ", ".join(parts)


_OUT_HOLDS = "the runs, figures and reports go into it"  # what --out is for, said when it is a file
PAPER_ITERATIONS = 64_000  # the papers' CIFAR-10 schedule, whose end their claims are about


def _scale_note(base: TrainConfig, seeds: int, depth: int = 0) -> str:
    """What a short or single-seed study cannot show, in one sentence ("" when neither), and a warm-up
    that outlasts the runs of nets up to ``depth`` layers (the console said so; the report must too)."""
    steps, notes = _planned_steps(base), []
    if steps < PAPER_ITERATIONS / 10:
        notes.append(f"these runs are {steps:,} iterations, {100 * steps / PAPER_ITERATIONS:.2g}% of the papers' {PAPER_ITERATIONS:,}, "
                     "so they show the start of training, and the papers' claims are about its end")
    if seeds == 1:
        notes.append("with one seed, differences of a point or two may be noise")
    warm = warmup_note(resolve_recipe(base), steps, depth)
    if warm:
        notes.append(warm)
    return f"Caveat: {'; '.join(notes)}." if notes else ""


# An experiment's tables are written whole or not at all (runs.atomic_write): a full disk or a kill
# keeps the ones an earlier run of it wrote.

def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict]) -> Path:
    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:  # not the locale's: Windows' would be cp1252
            writer = csv.DictWriter(f, columns)
            writer.writeheader()
            writer.writerows(rows)

    runs.atomic_write(path, write)
    return path


def _write_text(path: Path, lines: list[str]) -> Path:
    runs.atomic_write(path, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))  # "±" in any locale
    return path


def _table(header: Sequence[str], rows: Iterable[Sequence]) -> list[str]:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


# --- degradation (2015 paper, Figure 6) ---------------------------------------------------------


def degradation_verdict(plain: dict[int, float], residual: dict[int, float]) -> tuple[bool | None, str]:
    """Whether final training errors show degradation, and one sentence saying so from the numbers.

    ``plain`` and ``residual`` map depth to final training error (%). Degradation shows when the
    deepest plain net trains worse than the shallowest while the deepest residual net trains no
    worse than its shallowest. ``None`` when a kind has fewer than two depths to compare.
    """
    if len(plain) < 2 or len(residual) < 2:
        return None, "Degradation cannot be judged from one depth: give --depths at least two depths."
    p_lo, p_hi, r_lo, r_hi = min(plain), max(plain), min(residual), max(residual)
    plain_text = (
        f"{_label('plain', p_hi)} ends at {plain[p_hi]:.2f}% training error "
        f"against {plain[p_lo]:.2f}% for {_label('plain', p_lo)}"
    )
    residual_text = (
        f"{_label('residual', r_hi)} ends at {residual[r_hi]:.2f}% "
        f"against {residual[r_lo]:.2f}% for {_label('residual', r_lo)}"
    )
    if plain[p_hi] <= plain[p_lo]:
        return False, (
            f"Degradation does not show in these runs: {plain_text}, so depth did not hurt the plain nets ({residual_text})."
        )
    if residual[r_hi] > residual[r_lo]:
        return False, (
            f"Degradation does not show cleanly: {plain_text}, but the residual nets also train worse with depth "
            f"({residual_text}); longer runs may separate them."
        )
    return True, f"Degradation shows: {plain_text}, while {residual_text}: depth hurts the plain nets only."


def reproduce_degradation(
    base: TrainConfig, out: str | Path, depths: Sequence[int] = (20, 32, 44, 56), seeds: int = 1
) -> list[Path]:
    """Train plain and residual nets of each depth and draw the 2015 paper's Figure 6.

    Writes ``degradation.png``/``.svg`` (training error dashed, test error bold, plain nets left,
    ResNets right), ``degradation.csv`` (every evaluation of every run) and ``degradation.md`` (final
    errors and whether degradation shows) into ``out``, and returns their paths.
    """
    depths, out = _check_depths(depths), runs.out_folder(out, _OUT_HOLDS)
    _check_seeds(seeds)
    seed_list = range(base.seed, base.seed + seeds)
    models = [(kind, d) for kind in KINDS for d in depths]
    run_dirs = _train_nets(base, out, [_model_name(k, d) for k, d in models], seed_list)

    records, curves, table = [], {}, []
    final_train = {kind: {} for kind in KINDS}
    for kind, depth in models:
        per_seed = [_curve(run_dirs[_model_name(kind, depth), s]) for s in seed_list]
        records += [
            {"model": _model_name(kind, depth), "depth": depth, "kind": kind, "seed": s, **row}
            for s, curve in zip(seed_list, per_seed) for row in curve
        ]
        curves[kind, depth] = _mean_curve(per_seed)
        train_errors = [curve[-1]["train_error"] for curve in per_seed]
        test_errors = [curve[-1]["test_error"] for curve in per_seed]
        final_train[kind][depth] = statistics.mean(train_errors)
        table.append((_model_name(kind, depth), depth, kind, _mean_std(train_errors), _mean_std(test_errors)))
    points = min(len(rows) for rows in curves.values())
    if points < MIN_POINTS:
        print(f"note: the curves have only {points} point{'s' if points != 1 else ''}, one an epoch: "
              "--limit-train makes epochs shorter")
    title = f"Degradation (He et al. 2015, Figure 6)\n{_setup_text(base)}"
    if seeds > 1:
        title += f"\nmean of {seeds} seeds ({_BAND})"
    paths = _save(_degradation_figure(curves, title), out / "degradation")
    columns = ["model", "depth", "kind", "seed", "step", "train_error", "test_error"]
    paths.append(_write_csv(out / "degradation.csv", columns, records))

    _, sentence = degradation_verdict(final_train["plain"], final_train["residual"])
    spread = ": errors are mean ± std over seeds" if seeds > 1 else ""
    lines = [
        "# Degradation: plain against residual nets (He et al. 2015, Figure 6)", "",
        f"{_setup_text(base)}; {_seeds_text(base, seeds)}{spread}.", "",
        *_table(["model", "depth", "kind", "final train error (%)", "final test error (%)"], table), "",
        sentence, "", _scale_note(base, seeds, max(depths)), "",
        "![training error (dashed) and test error (bold) against iterations](degradation.png)",
    ]
    paths.append(_write_text(out / "degradation.md", lines))
    return paths


def _degradation_figure(curves: dict[tuple[str, int], list[dict]], title: str) -> Figure:
    from matplotlib.lines import Line2D

    fig, axes = _figure(1, 2, (11, 4.6), sharey=True)
    depths = sorted({d for _, d in curves})
    colour = _colours(depths)
    # The paper's line styles: training error dashed and thin, test error solid and bold.
    train_style, test_style = dict(ls="--", lw=1.2), dict(ls="-", lw=2.2)
    # Few points get markers, training's hollow and test's filled: a run evaluated once has no line to tell them by.
    if max(len(rows) for rows in curves.values()) <= 30:
        train_style |= dict(marker="o", ms=4, mfc="none")
        test_style |= dict(marker="o", ms=3)
    for ax, kind in zip(axes, KINDS):
        for depth in depths:
            rows = curves[kind, depth]
            steps = [r["step"] for r in rows]
            ax.plot(steps, [r["train_error"] for r in rows], color=colour[depth], **train_style)
            ax.plot(steps, [r["test_error"] for r in rows], color=colour[depth], **test_style)
            _seeds_band(ax, rows, colour[depth])
        handles = [Line2D([], [], color=colour[d], lw=2.2, label=_label(kind, d)) for d in depths]
        for what, style in (("train", train_style), ("test", test_style)):
            handles.append(Line2D([], [], color="black", label=what, **style))
        ax.legend(handles=handles, fontsize=9, loc="best")
        ax.set_title("plain networks" if kind == "plain" else "residual networks (ResNets)")
        _iterations_axis(ax)
    highest = max(r[c] for rows in curves.values() for r in rows for c in ("train_error", "test_error"))
    axes[0].set_ylim(0, min(100.0, 1.05 * highest))
    axes[0].set_ylabel("error (%)")
    fig.suptitle(title)
    return fig


# --- depth (2015 paper, Table 6) ----------------------------------------------------------------


def reproduce_depth(
    base: TrainConfig, out: str | Path, depths: Sequence[int] = (20, 32, 44, 56, 110), seeds: int = 3
) -> list[Path]:
    """Train residual nets of each depth with several seeds: the 2015 paper's Table 6.

    Writes ``depth.md`` (parameters and test error, mean ± std over seeds), ``depth.json`` and
    ``depth.png``/``.svg`` (test error against depth with error bars, parameters as labels).
    """
    depths, out = _check_depths(depths), runs.out_folder(out, _OUT_HOLDS)
    _check_seeds(seeds)
    seed_list = range(base.seed, base.seed + seeds)
    run_dirs = _train_nets(base, out, [_model_name("residual", d) for d in depths], seed_list)

    rows = []
    for depth in depths:
        model = _model_name("residual", depth)
        errors = [_curve(run_dirs[model, s])[-1]["test_error"] for s in seed_list]
        parameters = count_parameters(runs.build_model(runs.read_config(run_dirs[model, base.seed])))
        rows.append({
            "model": model, "depth": depth, "parameters": parameters, "seeds": list(seed_list), "test_errors": errors,
            "mean": statistics.mean(errors), "std": statistics.stdev(errors) if seeds > 1 else None,
        })
    runs.write_json(out / "depth.json", {"setup": _setup_text(base), "rows": rows})
    paths = [out / "depth.json"]
    title = f"Test error against depth (He et al. 2015, Table 6)\n{_setup_text(base)}"
    paths += _save(_depth_figure(rows, title), out / "depth")

    spread = "mean ± std" if seeds > 1 else "one run"
    table = [
        (r["model"], r["depth"], _parameters_text(r["parameters"]), _mean_std(r["test_errors"]),
         ", ".join(f"{e:.2f}" for e in r["test_errors"]))
        for r in rows
    ]
    lines = [
        "# Test error against depth (He et al. 2015, Table 6)", "",
        f"Residual nets only; {_setup_text(base)}; {_seeds_text(base, seeds)}.", "",
        *_table(["model", "layers", "parameters", f"test error (%), {spread}", "per seed (%)"], table), "",
        _scale_note(base, seeds, max(depths)), "", "![test error against depth](depth.png)",
    ]
    paths.append(_write_text(out / "depth.md", lines))
    return paths


def _parameters_text(n: int) -> str:
    """0.27M, as the paper's Table 6 writes parameter counts: millions throughout, so that a table
    from resnet8 (0.08M) to resnet1202 (19.42M) compares at a glance."""
    return f"{n / 1e6:.2f}M"


def _depth_figure(rows: list[dict], title: str) -> Figure:
    fig, (ax,) = _figure(1, 1, (7, 4.6))
    depths = [r["depth"] for r in rows]
    means = [r["mean"] for r in rows]
    stds = [r["std"] or 0.0 for r in rows]
    label = "ResNet, one run" if rows[0]["std"] is None else "ResNet, mean ± std over seeds"
    ax.errorbar(depths, means, yerr=stds, fmt="o-", lw=2, capsize=5, color="tab:blue", label=label)
    ax.set_xticks(depths)
    ax.set_xlabel("depth (weight layers)")
    ax.set_ylabel("test error (%)")
    low, high = min(m - s for m, s in zip(means, stds)), max(m + s for m, s in zip(means, stds))
    margin = max(0.5, 0.25 * (high - low))  # room for the labels beside the points
    # Labels above the error bars, or below them where 100% leaves no room (the top edge struck them through).
    above = high + 2 * margin <= 100.0
    ax.set_ylim(max(0.0, low - margin * (1 if above else 2)), min(100.0, high + 2 * margin))
    for r, std in zip(rows, stds):
        ax.annotate(f"{_parameters_text(r['parameters'])} params", (r["depth"], r["mean"] + (std if above else -std)),
                    textcoords="offset points", xytext=(0, 8 if above else -8), ha="center",
                    va="bottom" if above else "top", fontsize=9)
    ax.margins(x=0.1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="lower left")
    ax.set_title(title, fontsize=11)
    return fig


# --- gradient norms by layer (the seed notebook's Figure 1) -------------------------------------


def reproduce_gradients(base: TrainConfig, out: str | Path, depth: int = 56, every: int | None = None) -> list[Path]:
    """Train a plain and a residual net recording every layer's gradient norm every ``every`` steps.

    ``every`` defaults to a hundredth of the run. Writes ``gradients_first_layers.png``/``.svg``
    (the first layers' gradient norms against iterations, log scale), ``gradients_heatmap.png``/``.svg``
    (log10 gradient norm by layer and iteration, plain and residual side by side),
    ``gradients.csv`` (one row per net and layer, one column per recorded step),
    ``gradients.json`` and ``gradients.md`` (first-layer over last-layer gradient norm).
    """
    (depth,), out = _check_depths([depth]), runs.out_folder(out, _OUT_HOLDS)
    if every is not None and every < 1:
        raise ValueError(f"--every must be at least 1, got {every}")
    every = every or max(1, _planned_steps(base) // 100)
    models = {kind: _model_name(kind, depth) for kind in KINDS}
    run_dirs = _train_nets(base, out, models.values(), [base.seed], grad_norm_every=every)
    logs = {kind: runs.read_grad_norms(run_dirs[models[kind], base.seed]) for kind in KINDS}

    paths = _save(_first_layers_figure(logs, depth, _setup_text(base)), out / "gradients_first_layers")
    paths += _save(_heatmap_figure(logs, depth, _setup_text(base)), out / "gradients_heatmap")
    steps = logs["plain"]["steps"]
    csv_rows = [
        {"model": models[kind], "kind": kind, "layer_index": i, "layer": _layer_name(layer),
         **{str(s): record[i] for s, record in zip(log["steps"], log["norms"])}}
        for kind, log in logs.items() for i, layer in enumerate(log["layers"])
    ]
    paths.append(_write_csv(out / "gradients.csv", ["model", "kind", "layer_index", "layer", *map(str, steps)], csv_rows))
    data = {"every": every, "models": {models[kind]: {"kind": kind, **log} for kind, log in logs.items()}}
    runs.write_json(out / "gradients.json", data, indent=None)
    paths.append(out / "gradients.json")

    table = []
    for kind, log in logs.items():
        # The last conv rather than the classifier: an fc weight's norm is not comparable with a conv's.
        last = max(i for i, name in enumerate(log["layers"]) if ".conv" in name)
        ratios = [record[0] / record[last] for record in log["norms"]]
        table.append((models[kind], _layer_name(log["layers"][0]), _layer_name(log["layers"][last]),
                      f"{ratios[0]:.3g}", f"{statistics.median(ratios):.3g}"))
    lines = [
        f"# Gradient norms by layer: {_label('plain', depth)} against {_label('residual', depth)}", "",
        f"{_setup_text(base)}; the gradient norm of every conv and fc weight every "
        f"{'iteration' if every == 1 else f'{every} iterations'} ({len(steps)} records).", "",
        "The ratio is the first layer's gradient norm over the last conv layer's. The layers differ in "
        "size, so compare the two nets rather than read the ratio alone: the lower it falls, the more "
        "slowly the layers near the input learn.", "",
        *_table(["model", "first layer", "last conv layer", "ratio at the first step", "median ratio over the run"], table), "",
        "![gradient norms of the first layers](gradients_first_layers.png)", "",
        "![log10 gradient norm by layer and iteration](gradients_heatmap.png)",
    ]
    paths.append(_write_text(out / "gradients.md", lines))
    return paths


def _planned_steps(config: TrainConfig) -> int:
    """How many iterations ``train`` will run for ``config`` (as it works it out)."""
    recipe = resolve_recipe(config)
    if recipe.steps:
        return recipe.steps
    examples = len(get_dataset(config.dataset, "train", root=config.data_dir))
    if config.limit_train:
        examples = min(examples, config.limit_train)  # as load_split cuts it
    return max(1, round(recipe.epochs * (examples // recipe.batch_size)))


def _layer_name(parameter: str) -> str:
    return parameter.removesuffix(".weight")


def _first_layers_figure(logs: dict[str, dict], depth: int, setup: str, count: int = 3) -> Figure:
    from matplotlib.lines import Line2D

    fig, (ax,) = _figure(1, 1, (8, 4.8))
    styles = {"plain": dict(ls="--", lw=1.2), "residual": dict(ls="-", lw=1.8)}
    colours = _colours(range(count))
    for kind, log in logs.items():
        for i in range(count):
            ax.plot(log["steps"], [record[i] for record in log["norms"]], color=colours[i], **styles[kind])
    ax.set_yscale("log")
    ax.set_ylabel("gradient norm (L2, log scale)")
    _iterations_axis(ax)
    layers = logs["plain"]["layers"]
    handles = [Line2D([], [], color=colours[i], lw=2, label=_layer_name(layers[i])) for i in range(count)]
    handles += [Line2D([], [], color="black", label=_label(kind, depth), **styles[kind]) for kind in KINDS]
    ax.legend(handles=handles, fontsize=9, loc="best")
    nets = f"{_label('plain', depth)} against {_label('residual', depth)}"
    ax.set_title(f"Gradients of the first {count} layers: {nets}\n{setup}", fontsize=11)
    return fig


def _heatmap_figure(logs: dict[str, dict], depth: int, setup: str) -> Figure:
    from matplotlib.ticker import MaxNLocator

    # Layers down the rows, records along the columns; a zero norm would be -inf on a log scale.
    maps = {kind: np.log10(np.maximum(np.asarray(log["norms"], dtype=float).T, 1e-30)) for kind, log in logs.items()}
    low, high = min(m.min() for m in maps.values()), max(m.max() for m in maps.values())
    fig, axes = _figure(1, 2, (12, 5), sharey=True)
    for ax, kind in zip(axes, KINDS):
        steps, layers = logs[kind]["steps"], len(logs[kind]["layers"])
        image = ax.imshow(
            maps[kind], aspect="auto", origin="lower", interpolation="nearest", cmap="viridis", vmin=low, vmax=high,
            extent=(steps[0], steps[-1] + (steps[1] - steps[0] if len(steps) > 1 else 1), -0.5, layers - 0.5),
        )
        ax.set_title(_label(kind, depth))
        _iterations_axis(ax)
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))  # layers are counted: no 2.5
        ax.grid(False)
    axes[0].set_ylabel("layer index (0 = conv1 at the input, top = fc)")
    fig.colorbar(image, ax=list(axes), label="log10 gradient norm (one colour scale for both)")
    fig.suptitle(f"Gradient norm by layer and iteration\n{setup}")
    return fig


# --- responses (2015 paper, Figure 7) -----------------------------------------------------------


def response_layers(model: ResNet) -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are Figure 7's layer responses, input to output, with their names.

    The paper measures "the outputs of each 3x3 layer, after BN and before nonlinearity": the stem's
    3x3 conv and both convs of every basic block (the 3x3 one of a bottleneck), each read at the BN
    that follows it. A 3x3 conv that no BN follows directly (pre-activation units, which normalise
    before the conv, and the last conv of a block with BN after the addition) is read at its own
    output, the value that reaches the next BN or the addition.
    """
    names = {id(m): name for name, m in model.named_modules()}
    pairs = [(model.conv1, model.bn1)]
    for block in model.blocks():
        last = len(block.convs) - 1
        for i, conv in enumerate(block.convs):
            follows = block.order != "preact" and not (block.order == "bn_after_add" and i == last)
            pairs.append((conv, block.bns[i] if follows else None))
    layers = [bn if isinstance(bn, nn.BatchNorm2d) else conv for conv, bn in pairs if conv.kernel_size == (3, 3)]
    return [(names[id(m)], m) for m in layers]


def layer_response_stds(model: ResNet, batches: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Standard deviation of each of ``response_layers(model)``'s outputs over ``batches``, by name.

    The std is taken over every value of the response map: images, channels and positions. The model
    runs in eval mode, as the paper's test-set responses do.
    """
    layers = response_layers(model)
    sums = [torch.zeros(3, dtype=torch.float64) for _ in layers]

    def record(i: int):
        # Read at once: the stem's in-place ReLU overwrites its BN's output right after this hook.
        def hook(module, inputs, output) -> None:
            o = output.detach().double()
            sums[i] += torch.stack([torch.tensor(float(o.numel()), dtype=torch.float64), o.sum(), (o * o).sum()]).cpu()
        return hook

    handles = [module.register_forward_hook(record(i)) for i, (_, module) in enumerate(layers)]
    try:
        with torch.no_grad(), eval_mode(model):
            for x, _ in batches:
                model(x)
    finally:
        for h in handles:
            h.remove()
    stds = {}
    for (name, _), (n, total, squares) in zip(layers, (s.tolist() for s in sums)):
        if n == 0:
            raise ValueError("nothing to measure: the data set is empty")
        stds[name] = math.sqrt(max(0.0, squares / n - (total / n) ** 2))
    return stds


def reproduce_responses(
    base: TrainConfig, out: str | Path, depths: Sequence[int] | None = None, run_dirs: Sequence[str | Path] | None = None
) -> list[Path]:
    """Standard deviations of the layer responses of plain and residual nets: Figure 7.

    Trains plain and residual nets of each depth (default 20, 56 and 110), or measures the trained
    runs ``run_dirs`` instead, on the test set (``base.limit_test`` images), at the layers ``response_layers`` names.
    Writes ``responses.png``/``.svg`` (std by layer, and the same sorted by magnitude), ``responses.csv``, ``responses.json`` and
    ``responses.md``, named apart from the other reports so that one ``out`` can serve
    ``degradation`` and then ``responses`` on the same runs.
    """
    out = runs.out_folder(out, _OUT_HOLDS)
    if run_dirs and depths:
        raise ValueError("--depths chooses the nets to train and --runs measures trained ones instead: give one of them")
    if run_dirs:
        run_dirs = [Path(d) for d in run_dirs]
        for run_dir in run_dirs:  # every one checked before anything is written
            if runs.read_config(run_dir).get("dataset") is None:
                # Each run is measured on its own test set; another run's could differ in classes or size.
                raise ValueError(f"{run_dir} names no dataset to measure its responses on (an imported model): "
                                 "import it again with resnetlab import FILE --dataset NAME")
        out.mkdir(parents=True, exist_ok=True)
    else:
        depths = _check_depths(depths or (20, 56, 110))
        out.mkdir(parents=True, exist_ok=True)
        trained = _train_nets(base, out, [_model_name(k, d) for k in KINDS for d in depths], [base.seed])
        run_dirs = list(trained.values())

    device = pick_device(base.device)
    measured, configs = [], []
    for run_dir in run_dirs:
        model, config = runs.load_model(run_dir, device)
        configs.append(config)
        variant = variant_of(config.get("model_kwargs") or {})
        data_dir = base.data_dir or config["data_dir"]
        test = load_split(config["dataset"], "test", data_dir, limit=base.limit_test, seed=runs.data_seed(config),
                          **reload_sizes(config["dataset"], config))
        batches = make_loader(test, 256, config["mean"], config["std"], device, train=False)
        stds = layer_response_stds(model, batches)
        measured.append({
            "model": config["model"], "run": str(run_dir), "run_name": run_dir.resolve().name, "depth": depth_of(config["model"]),
            "variant": variant.label if variant else None,
            "kind": "residual" if model.residual else "plain", "order": model.order, "test_images": len(test),
            "conv_outputs": [name for name, m in model.named_modules() if name in stds and isinstance(m, nn.Conv2d)],
            "layers": list(stds), "std": list(stds.values()), "std_sorted": sorted(stds.values(), reverse=True),
        })

    measured.sort(key=lambda m: (KINDS.index(m["kind"]), m["depth"]))
    images = sorted({m["test_images"] for m in measured})
    setup = f"{_trained_text(configs)}; measured on {' or '.join(f'{n:,}' for n in images)} test images"
    paths = _save(_responses_figure(measured, setup), out / "responses")
    runs.write_json(out / "responses.json", {"models": measured})
    csv_rows = [
        {"model": m["model"], "depth": m["depth"], "kind": m["kind"], "layer_index": i, "layer": layer,
         "std": std, "sorted_std": ranked}
        for m in measured for i, (layer, std, ranked) in enumerate(zip(m["layers"], m["std"], m["std_sorted"]), 1)
    ]
    paths += [out / "responses.json", _write_csv(out / "responses.csv", list(csv_rows[0]), csv_rows)]

    table = [(m["model"], m["run_name"], m["kind"], len(m["std"]), f"{statistics.mean(m['std']):.3f}", f"{max(m['std']):.3f}")
             for m in measured]
    lines = [
        "# Layer responses (He et al. 2015, Figure 7)", "", f"{setup[0].upper()}{setup[1:]}.", "",
        f"Standard deviation over the test set ({' or '.join(f'{n:,}' for n in images)} test images) of the output of "
        "each 3x3 layer, after its BN and before the nonlinearity (and before the addition that ends a residual block)"
        + ("; a 3x3 conv that no BN follows directly (pre-activation units, or BN after the addition) is measured at "
           "its own output." if any(m["conv_outputs"] for m in measured) else "."), "",
        *_table(["model", "run", "kind", "layers", "mean std", "largest std"], table), "",
        *_responses_sentences(measured), "",
        "![response std by layer and sorted](responses.png)",
    ]
    paths.append(_write_text(out / "responses.md", lines))
    return paths


def _trained_text(configs: Sequence[dict]) -> str:
    """What the measured runs were trained on, read from their configs: one line where they share it."""
    setups = {(c.get("dataset"), (c.get("recipe") or {}).get("name"), c.get("total_steps"), c.get("train_examples"))
              for c in configs}
    if len(setups) > 1:
        return "trained with different settings (each run's config.json says which)"
    dataset, recipe, steps, images = setups.pop()
    parts = [dataset or "", f"recipe {recipe}" if recipe else "", f"{steps:,} iterations" if steps else "",
             f"{images:,} training images" if images else ""]
    return "trained: " + ", ".join(p for p in parts if p)


def _responses_sentences(measured: list[dict]) -> list[str]:
    """At each depth measured for both kinds: are the residual responses smaller, as the paper finds?

    Several runs of one kind and depth (seeds, or the variants of an ablation) are averaged, each
    run's mean std counting once, rather than one of them standing for all."""
    means: dict[tuple[str, int], list[float]] = {}
    for m in measured:
        means.setdefault((m["kind"], m["depth"]), []).append(statistics.mean(m["std"]))
    lines = []
    for depth in sorted({d for _, d in means}):
        if ("plain", depth) not in means or ("residual", depth) not in means:
            continue
        plain, residual = means["plain", depth], means["residual", depth]

        def text(values: list[float]) -> str:
            return f"{statistics.mean(values):.3f}" + (f", mean of {len(values)} runs" if len(values) > 1 else "")

        verb = "smaller than" if statistics.mean(residual) < statistics.mean(plain) else "not smaller than"
        # One run of each, measured once: a few percent either way is within what a seed changes.
        alone = len(plain) == len(residual) == 1 and abs(residual[0] - plain[0]) < 0.05 * plain[0]
        lines.append(
            f"At depth {depth} the residual responses are {verb} the plain ones (mean std {text(residual)}, against {text(plain)})"
            + ("; one run of each, so a difference this small may be noise." if alone else ".")
        )
    return lines or ["No depth was measured for both a plain and a residual net, so they are not compared."]


def _responses_figure(measured: list[dict], setup: str) -> Figure:
    import matplotlib
    from matplotlib.ticker import FormatStrFormatter, MaxNLocator

    fig, (top, bottom) = _figure(2, 1, (9, 7.5), sharey=True)
    labels = [_label(m["kind"], m["depth"]) for m in measured]
    # Two runs of one net (seeds, an ablation's variants) are named by their variant, else by their folder,
    # and each gets a colour of its own, or they could not be told apart.
    shared = [i for i, label in enumerate(labels) if labels.count(label) > 1]
    for i in shared:
        labels[i] += f", {measured[i]['variant']}" if measured[i]["variant"] else f" ({measured[i]['run_name']})"
    twins = {label for label in labels if labels.count(label) > 1}  # one variant, several seeds
    labels = [f"{label} ({m['run_name']})" if label in twins else label for label, m in zip(labels, measured)]
    depths = sorted({m["depth"] for m in measured})
    if shared:
        colour = _colours([*depths, *(("run", i) for i in shared)])
        shades = [colour["run", i] if i in shared else colour[m["depth"]] for i, m in enumerate(measured)]
    else:  # a depth's plain and residual nets in a dark and a light shade of one hue
        pairs = matplotlib.colormaps["tab20"].colors
        shades = [pairs[(2 * depths.index(m["depth"]) + (m["kind"] == "plain")) % 20] for m in measured]
    for m, label, shade in zip(measured, labels, shades):
        style = dict(ls="--", lw=1.4) if m["kind"] == "plain" else dict(ls="-", lw=2)
        marker = dict(marker="o", ms=3) if len(m["std"]) <= 30 else {}
        index = range(1, len(m["std"]) + 1)
        top.plot(index, m["std"], color=shade, label=label, **style, **marker)
        bottom.plot(index, m["std_sorted"], color=shade, label=label, **style, **marker)
    top.set_xlabel("layer index: 3x3 layers, input to output")
    bottom.set_xlabel("layer index, sorted by magnitude")
    for ax in (top, bottom):
        ax.set_ylabel("std of the response")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, ncol=2, loc="best")
        ax.set_xlim(left=0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are counted, never halved
    stds = [s for m in measured for s in m["std"]]
    if min(stds) > 0 and max(stds) / min(stds) > 4:  # a few large responses would flatten the rest onto one line
        top.set_yscale("log")
        for ax in (top, bottom):  # 2, 4, 6 rather than 2x10^0
            ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
    where = "each 3x3 layer after its BN, before the nonlinearity"
    if any(m["conv_outputs"] for m in measured):
        where += ", or at its output where no BN follows it"
    if any(m["kind"] == "plain" for m in measured):
        where += "; plain nets dashed"
    top.set_title(f"Standard deviation of the layer responses (He et al. 2015, Figure 7)\n{where}\n{setup}", fontsize=10)
    return fig


# --- figures ------------------------------------------------------------------------------------


def _figure(rows: int, cols: int, size: tuple[float, float], **kwargs) -> tuple[Figure, list]:
    """A Figure (no pyplot state) and its axes as a flat list."""
    from matplotlib.figure import Figure

    from . import plots  # noqa: F401  (chooses a display-free backend where none is set)

    fig = Figure(figsize=size, layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False, **kwargs)
    return fig, [ax for row in axes for ax in row]


def _colours(keys: Iterable) -> dict:
    """One tab10 colour per key, in order: the same depth gets the same colour in every panel."""
    import matplotlib

    palette = matplotlib.colormaps["tab10"].colors
    return {key: palette[i % len(palette)] for i, key in enumerate(keys)}


def _iterations_axis(ax) -> None:
    from matplotlib.ticker import EngFormatter, MaxNLocator

    ax.set_xlabel("iterations")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # one evaluation alone got ticks 7.6 ... 8.4
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))  # 64000 -> 64k
    ax.grid(alpha=0.3)


def _save(fig: Figure, out: Path) -> list[Path]:
    from .plots import save_figure

    return save_figure(fig, out)


# --- the 2016 paper's ablations (Tables 1 and 2): the variants are in ``ablations`` ---------


def reproduce_variants(
    base: TrainConfig, out: str | Path, study: str, depth: int = 110, block: str = "basic",
    keys: Sequence[str] | None = None, seeds: int = 1,
) -> list[Path]:
    """Train one CIFAR-style net in each variant of a 2016 ablation (``orders`` or ``shortcuts``).

    Writes ``{study}.png``/``.svg`` (a panel a variant, the original in grey in each; training error
    dashed, test error bold), ``{study}.csv`` (every evaluation), ``{study}.json`` and ``{study}.md``
    (final errors beside the paper's, where the paper trained the same net: ResNet-110, or ResNet-164
    with bottlenecks).
    """
    title, variants = STUDIES[study]
    original = variants[0]  # every other variant is drawn against it
    if keys:
        unknown = sorted(set(keys) - {v.key for v in variants})
        if unknown:
            raise ValueError(f"unknown {study} variant(s) {', '.join(unknown)}; choose from {', '.join(v.key for v in variants)}")
        variants = [v for v in variants if v.key in keys]
    if not cifar_blocks_per_stage(depth, block, missing_ok=True):
        form = {"basic": "6n+2", "bottleneck": "9n+2"}[block]
        raise ValueError(f"depth {depth} is not a CIFAR net's {form} layers for {block} blocks")
    _check_seeds(seeds)
    out, model, seed_list = runs.out_folder(out, _OUT_HOLDS), f"resnet{depth}", range(base.seed, base.seed + seeds)
    net = f"ResNet-{depth}" + (" (bottleneck)" if block == "bottleneck" else "")

    curves, records, rows = {}, [], []
    for variant in variants:
        per_seed = []
        for seed in seed_list:
            run_dir = out / "runs" / f"{model}-{block}-{variant.key}-s{seed}"
            print(f"--- {net}, {variant.label}, seed {seed}: {run_dir}")
            config = replace(base, model=model, seed=seed, out=str(run_dir), eval_every=1,
                             model_kwargs={"block": block, **variant.options})
            per_seed.append(_curve(train_or_reuse(config)))
        records += [{"variant": variant.key, "seed": s, **r} for s, curve in zip(seed_list, per_seed) for r in curve]
        curves[variant.label] = _mean_curve(per_seed)
        train_errors = [c[-1]["train_error"] for c in per_seed]
        test_errors = [c[-1]["test_error"] for c in per_seed]
        rows.append({
            "variant": variant.key, "label": variant.label, "options": variant.options,
            "train_errors": train_errors, "test_errors": test_errors, "paper_test_error": variant.paper_error(depth, block),
        })

    setup = f"{net}, {_setup_text(base)}"
    runs.write_json(out / f"{study}.json", {"study": study, "setup": setup, "rows": rows})
    paths = [out / f"{study}.json"]
    band = f"; mean of {seeds} seeds ({_BAND})" if seeds > 1 else ""
    paths += _save(_variants_figure(curves, f"{title}\n{setup}{band}", baseline=original.label), out / study)
    paths.append(_write_csv(out / f"{study}.csv", ["variant", "seed", "step", "train_error", "test_error"], records))
    paper_note = (
        "The paper's column is its CIFAR-10 result at the end of the full schedule (\"fail\": above 20%); "
        "runs on other data or shorter schedules are compared by their order, not their values."
        if any(r["paper_test_error"] for r in rows) else f"The paper did not train {net} in this study: no numbers of its own."
    )
    table = [(r["label"], _mean_std(r["train_errors"]), _mean_std(r["test_errors"]), r["paper_test_error"] or "—")
             for r in rows]
    lines = [
        f"# {title}", "", f"{setup}; {_seeds_text(base, seeds)}.", "",
        *_table(["variant", "final train error (%)", "final test error (%)", "paper, CIFAR-10 test error (%)"], table), "",
        paper_note, "", _scale_note(base, seeds, depth), "",
        f"![training error (dashed) and test error (bold) against iterations]({study}.png)",
    ]
    paths.append(_write_text(out / f"{study}.md", lines))
    return paths


def _variants_figure(curves: dict[str, list[dict]], title: str, baseline: str | None) -> Figure:
    """One panel a variant, beside the ``baseline`` (the original block, grey in every panel): eight
    variants' train and test curves in one panel hide each other."""
    from matplotlib.lines import Line2D

    variants = [label for label in curves if label != baseline] or list(curves)
    cols = min(4, len(variants))
    rows = math.ceil(len(variants) / cols)
    fig, axes = _figure(rows, cols, (3.4 * cols, 2.9 * rows + 0.9), sharex=True, sharey=True)
    colour = _colours(variants)  # tab10's grey is its eighth colour: left to the baseline
    train_style, test_style = dict(ls="--", lw=1.2), dict(ls="-", lw=2.2)

    def draw(ax, label: str, shade) -> None:
        steps = [r["step"] for r in curves[label]]
        marker = dict(marker="o", ms=3) if len(steps) <= 30 else {}
        ax.plot(steps, [r["train_error"] for r in curves[label]], color=shade, **train_style, **marker)
        ax.plot(steps, [r["test_error"] for r in curves[label]], color=shade, **test_style, **marker)
        _seeds_band(ax, curves[label], shade)

    for i, (ax, label) in enumerate(zip(axes, variants)):
        if baseline in curves and label != baseline:
            draw(ax, baseline, "0.6")
        draw(ax, label, colour[label])
        ax.set_title(label, fontsize=9, color=colour[label])
        _iterations_axis(ax)
        if i + cols < len(variants):  # no axis label where a panel below shows it
            ax.set_xlabel("")
        else:
            ax.xaxis.set_tick_params(labelbottom=True)
    for ax in axes[len(variants):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel("error (%)")
    highest = max(r[c] for rows_ in curves.values() for r in rows_ for c in ("train_error", "test_error"))
    axes[0].set_ylim(0, min(100.0, 1.05 * highest))
    handles = [Line2D([], [], color="black", label=what, **style) for what, style in (("train", train_style), ("test", test_style))]
    if baseline in curves and len(curves) > 1:
        handles.insert(0, Line2D([], [], color="0.6", lw=2.2, label=baseline))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig
