"""Training curves and confusion matrices, drawn from run directories built here in the real formats."""

import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from resnetlab import plots
from resnetlab.plots import _confusion_figure, _curves_figure, plot_confusion, plot_runs, save_figure
from conftest import with_files_limited_to
from resnetlab.runs import read_metrics


def make_run(root, name, model="resnet20", epochs=4, steps_per_epoch=100, eval_every=1, start_loss=2.0):
    """A run directory as training writes it: config.json and one metrics line per epoch."""
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": model, "dataset": "cifar10"}))
    lines = []
    for epoch in range(1, epochs + 1):
        evaluated = epoch % eval_every == 0
        lines.append(json.dumps({
            "epoch": epoch, "step": epoch * steps_per_epoch, "lr": 0.1,
            "train_loss": start_loss / epoch, "train_acc": 0.5 + 0.1 * epoch,
            "test_loss": start_loss / epoch + 0.1 if evaluated else None,
            "test_acc": 0.45 + 0.1 * epoch if evaluated else None,
            "time": 10.0 * epoch, "images_per_s": 5000.0,
        }))
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_plot_runs_writes_figure_and_data(tmp_path):
    a = make_run(tmp_path, "resnet20-cifar10")
    b = make_run(tmp_path, "baseline", model="plain20", epochs=3, eval_every=2)
    paths = plot_runs([a, b], tmp_path / "out" / "curves")
    assert [p.name for p in paths] == ["curves.png", "curves.svg", "curves.csv"]
    with Image.open(paths[0]) as image:
        assert image.format == "PNG" and image.size[0] > 1000
    assert ET.parse(paths[1]).getroot().tag.endswith("svg")

    rows = read_csv(paths[2])
    assert list(rows[0]) == ["run", "epoch", "step", "train_loss", "test_loss", "train_error", "test_error"]
    assert [r["run"] for r in rows] == ["resnet20-cifar10"] * 4 + ["baseline"] * 3
    assert [int(r["step"]) for r in rows[:4]] == [100, 200, 300, 400]
    first = rows[0]
    assert float(first["train_loss"]) == pytest.approx(2.0)
    assert float(first["test_loss"]) == pytest.approx(2.1)
    assert float(first["train_error"]) == pytest.approx(40.0)  # accuracy 0.6 -> 40 % error
    assert float(first["test_error"]) == pytest.approx(45.0)
    # Epochs without an evaluation leave the test cells empty, not zero.
    assert rows[4]["test_error"] == rows[6]["test_error"] == rows[6]["test_loss"] == ""
    assert float(rows[5]["test_error"]) == pytest.approx(35.0)


def drawn(monkeypatch) -> list:
    """The figures plot_runs saves, kept as it saves them (their PNG and SVG are still written)."""
    figures, real = [], plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: figures.append(fig) or real(fig, out))
    return figures


def test_plot_runs_by_epoch_with_suffix(tmp_path, monkeypatch):
    """x="epoch" puts epochs on the x axis of both panels; the files written read back as a PNG, an SVG and the CSV."""
    figures = drawn(monkeypatch)
    run = make_run(tmp_path, "run", steps_per_epoch=100)
    paths = plot_runs([run], tmp_path / "figure.png", x="epoch")
    assert sorted(p.name for p in paths) == ["figure.csv", "figure.png", "figure.svg"]
    with Image.open(tmp_path / "figure.png") as image:
        assert image.format == "PNG"
    assert ET.parse(tmp_path / "figure.svg").getroot().tag.endswith("svg")
    assert [int(r["epoch"]) for r in read_csv(tmp_path / "figure.csv")] == [1, 2, 3, 4]
    (fig,) = figures
    for ax in fig.axes:
        assert ax.get_xlabel() == "epochs"
        assert all(list(line.get_xdata()) == [1, 2, 3, 4] for line in ax.get_lines())  # not the steps 100 ... 400


def test_the_curves_are_the_runs_numbers_on_their_own_panels(tmp_path, monkeypatch):
    """Loss left, error (%) right, train and test each its own line, against iterations; epochs without an
    evaluation are left out of the test lines (not drawn at zero)."""
    figures = drawn(monkeypatch)
    plot_runs([make_run(tmp_path, "run", epochs=4, eval_every=2)], tmp_path / "curves")
    (fig,) = figures
    loss_ax, err_ax = fig.axes[:2]
    assert loss_ax.get_xlabel() == err_ax.get_xlabel() == "iterations"
    assert loss_ax.get_ylabel() == "loss (cross-entropy)" and err_ax.get_ylabel() == "error (%)"
    lines = {ax: [(list(l.get_xdata()), pytest.approx(list(l.get_ydata()))) for l in ax.get_lines()] for ax in (loss_ax, err_ax)}
    # make_run: train loss 2/epoch, test loss 2/epoch + 0.1, train accuracy 0.5 + 0.1 epoch, test 0.45 + 0.1 epoch.
    assert lines[loss_ax] == [([100, 200, 300, 400], [2.0, 1.0, 2 / 3, 0.5]), ([200, 400], [1.1, 0.6])]
    assert lines[err_ax] == [([100, 200, 300, 400], [40.0, 30.0, 20.0, 10.0]), ([200, 400], [35.0, 15.0])]


def test_out_keeps_dots_that_are_not_suffixes(tmp_path):
    paths = plot_runs([make_run(tmp_path, "run")], tmp_path / "resnet20.fast")
    assert paths[0].name == "resnet20.fast.png"


def test_loss_axis_goes_logarithmic_past_one_decade(tmp_path):
    series = {"step": [1, 2], "epoch": [1, 2], "test_loss": [None, None], "train_error": [50, 40], "test_error": [None, 45]}
    wide = _curves_figure([("a", {**series, "train_loss": [5.0, 0.1]})], "step")
    narrow = _curves_figure([("a", {**series, "train_loss": [2.0, 0.5]})], "step")
    assert wide.axes[0].get_yscale() == "log" and narrow.axes[0].get_yscale() == "linear"


def test_runs_that_share_a_name_are_told_apart(tmp_path, monkeypatch):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    paths = plot_runs([make_run(tmp_path / "a", "run"), make_run(tmp_path / "b", "run")], tmp_path / "two")
    assert [r["run"] for r in read_csv(paths[2])] == ["a/run"] * 4 + ["b/run"] * 4
    monkeypatch.chdir(make_run(tmp_path, "resnet20-here"))
    assert {r["run"] for r in read_csv(plot_runs(["."], tmp_path / "dot")[2])} == {"resnet20-here"}  # not ""


def test_one_evaluation_is_told_apart_and_has_whole_ticks():
    one = {"step": [2], "epoch": [1], "train_loss": [1.0], "test_loss": [1.2], "train_error": [40.0], "test_error": [45.0]}
    loss_ax, err_ax = _curves_figure([("a", one)], "step").axes
    train, test = loss_ax.get_lines()
    assert train.get_markerfacecolor() == "none" and test.get_markerfacecolor() != "none"
    assert loss_ax.get_xlim() == err_ax.get_xlim() == (1, 3)
    # Every loss diverged (null in metrics.jsonl): the errors are still drawn.
    diverged = {**one, "train_loss": [None], "test_loss": [None]}
    assert _curves_figure([("a", diverged)], "step").axes[0].get_yscale() == "linear"


def test_bad_x_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="step, epoch"):
        plot_runs([make_run(tmp_path, "run")], tmp_path / "c", x="time")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "metrics.jsonl not found"),
        ("", "metrics.jsonl is empty"),
        ('{"epoch": 1, "step": 10, "train_loss": 1.0, "train_acc": 0.5}\n{"epoch": 2,\n', "line 2: not valid JSON"),
        ('{"epoch": 1, "step": 10}\n', "line 1: not a metrics row .missing train_loss, train_acc"),
        ("[1, 2]\n", "line 1: not a metrics row"),
        # An edited value: the plot failed on comparing a str with an int, naming no file.
        ('{"epoch": 1, "step": 8, "train_loss": "x", "train_acc": null, "lr": true}\n', "line 1: train_loss, lr are not a number"),
    ],
)
def test_bad_metrics_name_the_file(tmp_path, content, message):
    run = tmp_path / "run"
    run.mkdir()
    if content is not None:
        (run / "metrics.jsonl").write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        plot_runs([run], tmp_path / "c")
    assert str(run / "metrics.jsonl") in str(error.value)


def test_bad_config_names_the_file(tmp_path):
    run = make_run(tmp_path, "run")
    (run / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        plot_runs([run], tmp_path / "c")


def test_read_metrics_skips_blank_lines(tmp_path):
    run = make_run(tmp_path, "run", epochs=2)
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + "\n\n")
    assert [r["epoch"] for r in read_metrics(run)] == [1, 2]


def test_plot_confusion(tmp_path):
    matrix = [[8, 2, 0], [1, 9, 0], [0, 0, 0]]  # the last class never occurs: no division by zero
    paths = plot_confusion(matrix, ["cat", "dog", "frog"], tmp_path / "confusion", "resnet20 on pets")
    assert [p.name for p in paths] == ["confusion.png", "confusion.svg"]
    with Image.open(paths[0]) as image:
        assert image.format == "PNG"
    ET.parse(paths[1])


def test_confusion_colours_are_fractions_of_each_true_class():
    """Rows are the true class and each row is divided by its own total (not each column, nor the whole);
    the title gives the accuracy, the trace over the total."""
    matrix = [[8, 2, 0], [1, 9, 0], [0, 3, 1]]
    ax = _confusion_figure(matrix, ["cat", "dog", "frog"], "resnet20 on pets").axes[0]
    (image,) = ax.get_images()
    assert np.asarray(image.get_array()) == pytest.approx(np.array([[0.8, 0.2, 0.0], [0.1, 0.9, 0.0], [0.0, 0.75, 0.25]]))
    assert image.get_clim() == (0, 1)
    assert ax.get_ylabel() == "true class" and ax.get_xlabel() == "predicted class"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["cat", "dog", "frog"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "frog"]  # the same order both ways
    # 18 of 24 on the diagonal; the cells' numbers are counts, while their colour is a fraction of the row.
    assert ax.get_title() == "resnet20 on pets\naccuracy 75.00% of 24; numbers are image counts"
    assert "fraction of the true class" in fig_colorbar_label(ax)
    # A cell's count sits at (column = predicted, row = true).
    assert {(t.get_position(), t.get_text()) for t in ax.texts} >= {((1, 0), "2"), ((0, 1), "1"), ((1, 2), "3")}


def test_confusion_counts_written_only_for_few_classes():
    few = _confusion_figure([[5, 1], [2, 7]], ["a", "b"], "t")
    assert sorted(t.get_text() for t in few.axes[0].texts) == ["1", "2", "5", "7"]
    many = _confusion_figure([[1] * 21 for _ in range(21)], [str(i) for i in range(21)], "t")
    assert len(many.axes[0].texts) == 0


def test_a_thousand_classes_are_numbered_not_named(tmp_path):
    n = 1000
    matrix = [[5 if i == j else 0 for j in range(n)] for i in range(n)]
    names = [f"n{i:08d}" for i in range(n)]
    fig = _confusion_figure(matrix, names, "ImageNet")
    ax = fig.axes[0]
    fig.canvas.draw()
    assert not {t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()} & set(names)
    assert "index" in ax.get_xlabel()
    ET.parse(plot_confusion(matrix, names, tmp_path / "c", "ImageNet")[1])


def test_confusion_shape_must_match_classes(tmp_path):
    with pytest.raises(ValueError, match="3x3 for 3 classes"):
        plot_confusion([[1, 2], [3, 4]], ["a", "b", "c"], tmp_path / "c", "t")


def fig_colorbar_label(ax) -> str:
    (colorbar,) = [other for other in ax.figure.axes if other is not ax]
    return colorbar.get_ylabel()


def test_save_figure_writes_a_pdf_when_asked_for_one(tmp_path):
    fig = _confusion_figure([[1]], ["only"], "t")
    paths = save_figure(fig, tmp_path / "fig.pdf")
    assert [p.name for p in paths] == ["fig.png", "fig.svg", "fig.pdf"]
    data = paths[2].read_bytes()
    assert data.startswith(b"%PDF-") and b"CreationDate" not in data  # no date: the same figure, the same file


def test_curve_titles_say_how_long_the_runs_were_and_on_how_many_images(tmp_path, monkeypatch):
    figures = drawn(monkeypatch)
    for name in ("a", "b"):
        run = make_run(tmp_path, name)
        config = json.loads((run / "config.json").read_text())
        config |= {"total_steps": 400, "train_examples": 1024, "test_examples": 500}
        (run / "config.json").write_text(json.dumps(config))
    plot_runs([tmp_path / "a"], tmp_path / "one")
    plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "two")
    one, two = (fig.get_suptitle() for fig in figures)
    assert one == "Training curves: a (resnet20) on cifar10\n400 iterations, 1,024 training images, 500 test images"
    assert two.endswith("\n400 iterations, 1,024 training images, 500 test images, each")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps(config | {"total_steps": 800}))
    plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "three")
    assert figures[2].get_suptitle() == "Training curves: 2 runs on cifar10"  # no one size to give
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    (tmp_path / "b" / "config.json").write_text(json.dumps(config | {"dataset": "mnist"}))
    plot_runs([tmp_path / "a", tmp_path / "b"], tmp_path / "four")
    assert figures[3].get_suptitle() == "Training curves: 2 runs"  # no one dataset to name either
    loss_ax, err_ax = figures[3].axes[:2]
    assert err_ax.get_ylim()[0] == 0 and loss_ax.get_ylim()[0] > 0  # error from 0%; losses where they are


def test_save_figure_writes_png_and_svg(tmp_path):
    fig = _confusion_figure([[1]], ["only"], "t")
    paths = save_figure(fig, tmp_path / "deep" / "dir" / "fig.svg")
    assert [p.name for p in paths] == ["fig.png", "fig.svg"]
    with Image.open(paths[0]) as image:
        assert image.format == "PNG" and image.info["dpi"] == pytest.approx((150, 150), abs=0.02)  # PNG stores dots per metre
    svg = paths[1].read_text()
    assert ET.fromstring(svg).tag.endswith("svg") and "<dc:date>" not in svg  # no date: the same figure, the same file


def test_plotting_leaves_the_callers_matplotlib_backend_unchosen(tmp_path):
    """A script that plots runs and then calls plt.show() gets its own window: importing and drawing
    choose no backend (drawing on Figure objects needs none)."""
    import os
    import subprocess
    import sys

    make_run(tmp_path, "a")
    script = ("import matplotlib, sys\n"
              "from resnetlab.plots import plot_runs\n"
              "plot_runs([sys.argv[1]], sys.argv[2])\n"
              "print(matplotlib.rcParams._get_backend_or_none())\n")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "a"), str(tmp_path / "curves")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "None\n" and (tmp_path / "curves.png").stat().st_size > 0


def test_curves_that_do_not_fit_on_the_disk_leave_the_earlier_files_whole(tmp_path):
    run = make_run(tmp_path, "a")
    plot_runs([run], tmp_path / "curves")
    names = ("curves.png", "curves.svg", "curves.csv")
    before = {n: (tmp_path / n).read_bytes() for n in names}
    make_run(tmp_path, "b", start_loss=3.0)  # a second run: new curves, written over the first ones
    said = with_files_limited_to(5_000, (
        "import sys\n"
        "from resnetlab.plots import plot_runs\n"
        "from resnetlab.runs import RunError\n"
        "try:\n"
        "    plot_runs(sys.argv[1:3], sys.argv[3])\n"
        "except RunError as e:\n"
        "    print(e)\n"), run, tmp_path / "b", tmp_path / "curves")
    assert said.startswith(f"could not write {tmp_path / 'curves.png'} (File too large)"), said
    assert {n: (tmp_path / n).read_bytes() for n in names} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(names)  # no temporary file left


def test_a_file_where_the_figures_folder_should_be_is_named(tmp_path):
    from matplotlib.figure import Figure

    from resnetlab.runs import RunError

    (tmp_path / "afile").write_text("mine")
    with pytest.raises(RunError, match=r"afile is a file, where a folder is needed\. Nothing was written"):
        save_figure(Figure(), tmp_path / "afile" / "curves")
    assert (tmp_path / "afile").read_text() == "mine"
