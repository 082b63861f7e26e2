"""The ``reproduce`` experiments, run through their command line on tiny real Fashion-MNIST jobs.

Nets of depth 8 and 14 train for 10 steps of 16 images (2 steps an epoch, so 5 evaluations on 32
test images). Later tests copy the degradation runs and reuse them rather than train again.
"""

import csv
import json
import shutil
import statistics
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
import torch
from PIL import Image

from resnetlab import cli, experiments
from resnetlab.experiments import STUDIES, degradation_verdict, layer_response_stds, response_layers, train_or_reuse
from resnetlab.models import create_model
from resnetlab.runs import read_grad_norms, read_metrics
from resnetlab.train import TrainConfig, train

QUICK = ["--limit-train", "32", "--batch-size", "16", "--steps", "10", "--limit-test", "32", "--device", "cpu"]


def reproduce(*argv) -> None:
    """Run ``resnetlab reproduce ARGV`` as the command line wires it, its errors raised rather than printed."""
    args = cli.build_parser().parse_args(["reproduce", *map(str, argv)])
    cli.cmd_reproduce(args)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def assert_figure(base):
    with Image.open(base.with_suffix(".png")) as image:
        assert image.format == "PNG" and image.size[0] > 800
    assert ET.parse(base.with_suffix(".svg")).getroot().tag.endswith("svg")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Nets this small run faster on one thread, and many times faster on a busy machine, where
    # two OpenMP threads spend their time waiting for each other.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def degradation(tmp_path_factory, one_thread):
    out = tmp_path_factory.mktemp("degradation")
    reproduce("degradation", "--depths", 14, 8, *QUICK, "--out", out)
    return out


def copy_runs(source, out, names):
    for name in names:
        shutil.copytree(source / "runs" / name, out / "runs" / name)


def test_degradation_writes_the_figure_data_and_report(degradation):
    assert_figure(degradation / "degradation")
    rows = read_csv(degradation / "degradation.csv")
    assert list(rows[0]) == ["model", "depth", "kind", "seed", "step", "train_error", "test_error"]
    runs = {}
    for r in rows:
        runs.setdefault((r["model"], r["depth"], r["kind"], r["seed"]), []).append(r)
    assert sorted(runs) == [
        ("plain14", "14", "plain", "0"), ("plain8", "8", "plain", "0"),
        ("resnet14", "14", "residual", "0"), ("resnet8", "8", "residual", "0"),
    ]
    for (model, _, _, seed), series in runs.items():
        assert [int(r["step"]) for r in series] == [2, 4, 6, 8, 10]
        # The figure's numbers are the run's own: each evaluation's accuracy as an error in percent.
        metrics = read_metrics(degradation / "runs" / f"{model}-s{seed}")
        for column in ("train", "test"):
            assert [float(r[f"{column}_error"]) for r in series] == pytest.approx([100 * (1 - m[f"{column}_acc"]) for m in metrics])

    report = (degradation / "degradation.md").read_text()
    for model in ("plain8", "plain14", "resnet8", "resnet14"):
        assert f"| {model} |" in report
    # Ten iterations of one seed: the report says what that cannot show.
    assert "Caveat: these runs are 10 iterations, 0.016% of the papers' 64,000" in report and "one seed" in report
    # The sentence is the verdict on this very table, whichever way it went.
    finals = {(s[-1]["kind"], int(s[-1]["depth"])): float(s[-1]["train_error"]) for s in runs.values()}
    _, sentence = degradation_verdict(
        {d: e for (k, d), e in finals.items() if k == "plain"}, {d: e for (k, d), e in finals.items() if k == "residual"}
    )
    assert sentence in report
    for s in runs.values():  # the table's final errors are the last evaluation's
        last = s[-1]
        assert f"| {last['model']} | {last['depth']} | {last['kind']} | {float(last['train_error']):.2f} | {float(last['test_error']):.2f} |" in report
    assert (degradation / "runs" / "plain8-s0" / "model.safetensors").exists()


def test_degradation_verdict_both_ways():
    shows, sentence = degradation_verdict({20: 8.0, 56: 12.5}, {20: 7.0, 56: 4.0})
    assert shows is True and sentence.startswith("Degradation shows") and "12.50%" in sentence
    shows, sentence = degradation_verdict({20: 8.0, 56: 6.0}, {20: 7.0, 56: 4.0})
    assert shows is False and "does not show" in sentence
    shows, sentence = degradation_verdict({20: 8.0, 56: 12.5}, {20: 7.0, 56: 9.0})
    assert shows is False and "residual nets also train worse" in sentence
    # Equal errors for the residual nets still count as "no worse"; one depth cannot be judged.
    assert degradation_verdict({20: 8.0, 56: 9.0}, {20: 5.0, 56: 5.0})[0] is True
    assert degradation_verdict({20: 8.0}, {20: 5.0})[0] is None


def test_responses_of_trained_runs(degradation, tmp_path):
    out = tmp_path / "responses"
    reproduce("responses", "--runs", *(degradation / "runs" / f"{m}-s0" for m in ("resnet14", "plain8", "resnet8", "plain14")),
              "--limit-test", 32, "--device", "cpu", "--out", out)
    assert_figure(out / "responses")
    models = json.loads((out / "responses.json").read_text())["models"]
    assert [(m["model"], m["kind"], m["depth"]) for m in models] == [
        ("plain8", "plain", 8), ("plain14", "plain", 14), ("resnet8", "residual", 8), ("resnet14", "residual", 14),
    ]
    for m in models:
        layers = m["depth"] - 1  # every 3x3 layer: conv1 and two a block; not fc
        assert len(m["std"]) == len(m["layers"]) == layers and m["layers"][:2] == ["bn1", "layer1.0.bn1"]
        assert all(s > 0 for s in m["std"])
        assert m["std_sorted"] == sorted(m["std"], reverse=True)
    # Measured by hand on one run: its first 32 test images, normalised as it trained, the net in eval mode,
    # each BN's output (before the in-place ReLU) over images, channels and positions.
    from resnetlab.data import load_split
    from resnetlab.loader import normalize
    from resnetlab.runs import load_model

    model, config = load_model(degradation / "runs" / "resnet8-s0")
    images = load_split(config["dataset"], "test", limit=32, seed=config["seed"]).images
    assert len(images) == 32
    outputs = {}
    for name in models[2]["layers"]:
        model.get_submodule(name).register_forward_hook(lambda mod, i, o, name=name: outputs.__setitem__(name, o.clone()))
    with torch.no_grad():
        model.eval()(normalize(images, config["mean"], config["std"]))
    expected = [outputs[name].double().std(correction=0).item() for name in models[2]["layers"]]
    assert models[2]["std"] == pytest.approx(expected, rel=1e-5)
    rows = read_csv(out / "responses.csv")
    assert len(rows) == 7 + 13 + 7 + 13
    report = (out / "responses.md").read_text()
    assert "| resnet14 | resnet14-s0 | residual | 13 |" in report and "its own output" not in report  # every 3x3 conv has its BN
    recipe = json.loads((degradation / "runs" / "resnet8-s0" / "config.json").read_text())["recipe"]["name"]
    assert f"Trained: fashion-mnist, recipe {recipe}, 10 iterations, 32 training images; measured on 32 test images." in report

    preact = train(TrainConfig(model="preact_resnet8", limit_train=32, batch_size=16, steps=2, limit_test=32,
                               device="cpu", progress=False, out=str(tmp_path / "preact8"))).run_dir
    reproduce("responses", "--runs", preact, "--limit-test", 32, "--device", "cpu", "--out", out)
    assert "(pre-activation units, or BN after the addition) is measured at its own output" in (out / "responses.md").read_text()


def test_responses_trains_or_reuses_its_nets(degradation, tmp_path):
    out = tmp_path / "responses"
    copy_runs(degradation, out, ["plain8-s0", "resnet8-s0"])
    reproduce("responses", "--depths", 8, *QUICK, "--out", out)  # same settings: nothing is trained again
    assert [m["model"] for m in json.loads((out / "responses.json").read_text())["models"]] == ["plain8", "resnet8"]


def test_depth_table(degradation, tmp_path, capsys):
    out = tmp_path / "depth"
    copy_runs(degradation, out, ["resnet8-s0", "resnet14-s0"])  # seed 1 trains, seed 0 is reused
    reproduce("depth", "--depths", 8, 14, "--seeds", 2, *QUICK, "--out", out)
    printed = capsys.readouterr().out
    assert "reusing the finished run" in printed and str(out / "depth.md") in printed
    assert_figure(out / "depth")
    rows = json.loads((out / "depth.json").read_text())["rows"]
    assert [(r["model"], r["depth"], r["seeds"]) for r in rows] == [("resnet8", 8, [0, 1]), ("resnet14", 14, [0, 1])]
    assert rows[0]["parameters"] < rows[1]["parameters"]
    for r in rows:
        # Each seed's error is its run's last evaluation; std is the sample std over seeds (n - 1).
        finals = [100 * (1 - read_metrics(out / "runs" / f"{r['model']}-s{s}")[-1]["test_acc"]) for s in (0, 1)]
        assert r["test_errors"] == pytest.approx(finals)
        assert r["mean"] == pytest.approx(sum(finals) / 2) and r["std"] == pytest.approx(statistics.stdev(finals))
    table = (out / "depth.md").read_text()
    # Millions throughout, as the paper's Table 6 (75,002 and 172,218 parameters at one channel).
    assert "| resnet8 | 8 | 0.08M |" in table and "| resnet14 | 14 | 0.17M |" in table and "±" in table


def test_gradients(tmp_path):
    out = tmp_path / "gradients"
    reproduce("gradients", "--depth", 8, *QUICK, "--out", out)
    for name in ("gradients_first_layers", "gradients_heatmap"):
        assert_figure(out / name)
    rows = read_csv(out / "gradients.csv")
    steps = list(rows[0])[4:]
    assert [int(s) for s in steps] == list(range(10))  # a 10-step run records every step
    for model in ("plain8", "resnet8"):
        layers = [r for r in rows if r["model"] == model]
        # One row per weight layer, input to output: conv1, six block convs, fc.
        assert [int(r["layer_index"]) for r in layers] == list(range(8))
        assert layers[0]["layer"] == "conv1" and layers[-1]["layer"] == "fc"
        assert all(float(r[s]) > 0 for r in layers for s in steps)
        # The table is the run's record, layer by layer and step by step, not transposed or shifted.
        log = read_grad_norms(out / "runs" / f"{model}-s0")
        assert log["steps"] == list(range(10))
        assert [[float(r[str(s)]) for r in layers] for s in log["steps"]] == log["norms"]
    data = json.loads((out / "gradients.json").read_text())
    assert data["every"] == 1 and set(data["models"]) == {"plain8", "resnet8"}
    report = (out / "gradients.md").read_text()
    assert "| plain8 | conv1 | layer3.0.conv2 |" in report and "| resnet8 | conv1 | layer3.0.conv2 |" in report


def test_responses_are_read_at_each_3x3_layer_after_bn_before_the_relu_and_the_addition():
    torch.manual_seed(0)
    x = torch.randn(8, 1, 28, 28)
    batches = [(x, torch.zeros(8, dtype=torch.long))]
    # A zero last-BN gamma makes each block's second layer output exactly zero: the hook reads the
    # branch before the addition, not the sum.
    zeroed = create_model("resnet8", num_classes=10, in_chans=1, zero_init_residual=True)
    stds = layer_response_stds(zeroed, batches)
    assert list(stds) == ["bn1", *(f"layer{i}.0.bn{j}" for i in (1, 2, 3) for j in (1, 2))]
    assert [stds[f"layer{i}.0.bn2"] for i in (1, 2, 3)] == [0.0, 0.0, 0.0]
    assert all(stds[f"layer{i}.0.bn1"] > 0 for i in (1, 2, 3))
    assert zeroed.training  # the mode is given back
    # The stem's BN output before its in-place ReLU, negative values included.
    with torch.no_grad():
        stem = zeroed.eval().bn1(zeroed.conv1(x))
    assert stds["bn1"] == pytest.approx(stem.std(correction=0).item(), rel=1e-5)

    def layers(name: str, **kwargs) -> list[str]:
        return [n for n, _ in response_layers(create_model(name, num_classes=10, **kwargs))]

    # Pre-activation convs, and the conv whose BN comes after the addition, are read at their output.
    assert layers("preact_resnet8") == ["conv1", *(f"layer{i}.0.conv{j}" for i in (1, 2, 3) for j in (1, 2))]
    assert layers("resnet8", order="bn_after_add")[1:3] == ["layer1.0.bn1", "layer1.0.conv2"]
    # A bottleneck's 3x3 layer only; an ImageNet stem's 7x7 conv is not one.
    assert layers("resnet11", block="bottleneck") == ["bn1", "layer1.0.bn2", "layer2.0.bn2", "layer3.0.bn2"]
    assert layers("resnet18")[:2] == ["layer1.0.bn1", "layer1.0.bn2"] and len(layers("resnet18")) == 16


def test_bad_arguments_fail_before_training(degradation, tmp_path):
    with pytest.raises(ValueError, match="depth 10 is not"):
        reproduce("degradation", "--depths", 8, 10, *QUICK, "--out", tmp_path)
    with pytest.raises(ValueError, match="--seeds must be at least 1"):
        reproduce("depth", "--seeds", 0, *QUICK, "--out", tmp_path)
    with pytest.raises(ValueError, match="--every must be at least 1"):
        reproduce("gradients", "--every", 0, *QUICK, "--out", tmp_path)
    with pytest.raises(ValueError, match="give one of them"):  # the depths would be ignored
        reproduce("responses", "--depths", 8, "--runs", degradation / "runs" / "resnet8-s0", *QUICK, "--out", tmp_path)
    assert not (tmp_path / "runs").exists()
    other = TrainConfig(model="plain8", recipe="he2016", steps=12, limit_train=32, batch_size=16, limit_test=32,
                        device="cpu", out=str(degradation / "runs" / "plain8-s0"))
    with pytest.raises(ValueError, match="holds a run with other settings \\(recipe\\)"):
        train_or_reuse(other)


def test_a_folder_run_is_reused_and_a_run_killed_before_its_checkpoint_is_trained_again(tmp_path, monkeypatch, capsys):
    """Experiments on the user's own folder can be redrawn: the run records the folder's absolute path,
    the request names it as typed; a recipe's notes are prose, not a setting."""
    from conftest import noise_photos

    monkeypatch.chdir(tmp_path)
    noise_photos(tmp_path / "photos", ["a", "b"], 12, lambda i: (20, 20))
    config = TrainConfig(model="resnet8", dataset="folder:photos", recipe="he2016", steps=2, batch_size=8,
                         image_size=16, device="cpu", progress=False, out=str(tmp_path / "runs" / "r8"))
    run_dir = train_or_reuse(config)
    capsys.readouterr()
    saved = json.loads((run_dir / "config.json").read_text())
    saved["recipe"]["notes"] += " (reworded since)"
    (run_dir / "config.json").write_text(json.dumps(saved))
    assert train_or_reuse(config) == run_dir and "reusing the finished run" in capsys.readouterr().out
    for size in (8, None):  # another side, given or the folder's default (64): another net's inputs
        with pytest.raises(ValueError, match="holds a run with other settings \\(image_size\\)"):
            train_or_reuse(replace(config, image_size=size))
    for name in ("checkpoint.pt", "model.safetensors", "metrics.jsonl"):  # killed before its first checkpoint
        (run_dir / name).unlink()
    assert train_or_reuse(config) == run_dir and (run_dir / "checkpoint.pt").is_file()


def test_the_steps_an_experiment_plans_are_the_steps_train_runs(tmp_path):
    """The caveat's iteration count and the gradient recording's spacing rest on this count."""
    from conftest import noise_photos

    noise_photos(tmp_path / "photos", ["a", "b"], 20, lambda i: (12, 12))  # 36 training images once a tenth is held out
    config = TrainConfig(model="resnet8", dataset=f"folder:{tmp_path / 'photos'}", recipe="he2016", epochs=1,
                         batch_size=4, limit_train=1000, image_size=8, recipe_overrides={"lr": 0.05}, device="cpu",
                         progress=False, out=str(tmp_path / "run"))
    assert experiments._planned_steps(config) == 9
    saved = json.loads((train(config).run_dir / "config.json").read_text())
    assert saved["total_steps"] == 9 and saved["recipe"]["lr"] == 0.05


def test_ablation_studies_train_each_variant_and_compare_with_the_paper(tmp_path, capsys):
    out = tmp_path / "orders"
    reproduce("orders", "--depth", 8, "--variants", "post", "bn_after_add", *QUICK, "--out", out)
    report = (out / "orders.md").read_text()
    assert "| original (Fig. 4a) |" in report and "| BN after addition (4b) |" in report
    assert "The paper did not train ResNet-8" in report  # its numbers are for ResNet-110 and -164 only
    rows = json.loads((out / "orders.json").read_text())["rows"]
    assert [r["variant"] for r in rows] == ["post", "bn_after_add"] and rows[0]["paper_test_error"] is None
    for row in rows:
        config = json.loads((out / "runs" / f"resnet8-basic-{row['variant']}-s0" / "config.json").read_text())
        assert config["model_kwargs"]["order"] == row["variant"]
        assert 0 <= row["test_errors"][0] <= 100
    assert {r["variant"] for r in read_csv(out / "orders.csv")} == {"post", "bn_after_add"}
    assert_figure(out / "orders")

    # Run again: both runs are reused, not trained again.
    capsys.readouterr()
    reproduce("orders", "--depth", 8, "--variants", "post", "bn_after_add", *QUICK, "--out", out)
    assert capsys.readouterr().out.count("reusing the finished run") == 2

    # A run trained with other model options is never passed off as the one asked for.
    shutil.copytree(out / "runs" / "resnet8-basic-post-s0", tmp_path / "gate" / "runs" / "resnet8-basic-gate-6-s0")
    # Its order=post, which the gated net does not ask for, counts too.
    with pytest.raises(ValueError, match="other settings \\(model option mixing, model option gate_bias, model option order\\)"):
        reproduce("shortcuts", "--depth", 8, "--variants", "gate-6", *QUICK, "--out", tmp_path / "gate")


def test_ablation_reports_the_papers_numbers_for_its_own_nets(monkeypatch, tmp_path):
    # The training itself is tested above; here each run is a stand-in that ends at a known error.
    def fake_run(config):
        run_dir = experiments.Path(config.out)
        run_dir.mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "step": 1, "train_loss": 1.0,
                                                           "train_acc": 0.9, "test_acc": 0.8}) + "\n")
        return run_dir

    monkeypatch.setattr(experiments, "train_or_reuse", fake_run)
    experiments.reproduce_variants(TrainConfig(), tmp_path / "a", "orders", depth=164, block="bottleneck")
    rows = json.loads((tmp_path / "a" / "orders.json").read_text())["rows"]
    assert [r["paper_test_error"] for r in rows] == ["5.93", "6.50", "6.14", "5.91", "5.46"]
    experiments.reproduce_variants(TrainConfig(), tmp_path / "b", "shortcuts", depth=110)
    report = (tmp_path / "b" / "shortcuts.md").read_text()
    assert "| shortcut-only gating, b_g = -6 (2d) | 10.00 | 20.00 | 6.91 |" in report
    with pytest.raises(ValueError, match="unknown orders variant"):
        experiments.reproduce_variants(TrainConfig(), tmp_path / "c", "orders", keys=["sideways"])
    with pytest.raises(ValueError, match="not a CIFAR net's 9n\\+2 layers"):
        experiments.reproduce_variants(TrainConfig(), tmp_path / "c", "orders", depth=14, block="bottleneck")


def test_a_run_with_model_options_or_weights_not_asked_for_is_not_reused(degradation, tmp_path):
    """The check runs both ways: options the saved run has and the request lacks differ too."""
    run_dir = tmp_path / "runs" / "resnet8-s0"
    shutil.copytree(degradation / "runs" / "resnet8-s0", run_dir)
    asked = TrainConfig(model="resnet8", recipe="he2016", steps=10, limit_train=32, batch_size=16, limit_test=32,
                        device="cpu", progress=False, out=str(run_dir))
    config = json.loads((run_dir / "config.json").read_text())
    config["model_kwargs"]["order"] = "preact"  # as if trained with --model-arg order=preact
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="other settings \\(model option order\\)"):
        train_or_reuse(asked)
    del config["model_kwargs"]["order"]
    config["weights"] = "/somewhere/weights.safetensors"
    (run_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="other settings \\(weights\\)"):
        train_or_reuse(asked)


def test_reports_name_the_batch_size_and_learning_rate_given(degradation):
    # QUICK overrides the recipe's batch of 128: a report that named the recipe alone would mislead.
    report = (degradation / "degradation.md").read_text()
    assert "recipe he2016 with batch 16, 10 iterations" in report and "first 32 test images" in report
    base = TrainConfig(recipe="he2016", epochs=1, lr=0.05)
    assert experiments._setup_text(base) == "fashion-mnist, recipe he2016 with lr 0.05, 1 epoch"


def test_responses_of_several_runs_of_one_net_are_told_apart_and_averaged(degradation, tmp_path):
    out = tmp_path / "responses"
    copy_runs(degradation, tmp_path / "copy", ["resnet8-s0"])
    runs = [degradation / "runs" / "resnet8-s0", tmp_path / "copy" / "runs" / "resnet8-s0", degradation / "runs" / "plain8-s0"]
    reproduce("responses", "--runs", *runs, "--limit-test", 32, "--device", "cpu", "--out", out)
    models = json.loads((out / "responses.json").read_text())["models"]
    report = (out / "responses.md").read_text()
    # Each run has its own row, named by its folder; the comparison takes both ResNet-8 runs, not the last one alone.
    assert report.count("| resnet8 | resnet8-s0 |") == 2 and "| plain8 | plain8-s0 |" in report
    residual = [sum(m["std"]) / len(m["std"]) for m in models if m["kind"] == "residual"]
    assert len(residual) == 2
    assert f"mean std {sum(residual) / 2:.3f}, mean of 2 runs, against" in report
    assert "32 test images" in report


def test_responses_refuse_a_run_that_names_no_dataset_before_measuring_any(degradation, tmp_path):
    """An imported model's config says "dataset": null: responses failed on the NoneType after the runs before it."""
    copy_runs(degradation, tmp_path, ["resnet8-s0"])
    imported = tmp_path / "runs" / "resnet8-s0"
    config = json.loads((imported / "config.json").read_text())
    (imported / "config.json").write_text(json.dumps({**config, "dataset": None, "data_dir": None}))
    with pytest.raises(ValueError, match=f"{imported} names no dataset .*--dataset"):
        reproduce("responses", "--runs", degradation / "runs" / "plain8-s0", imported, "--device", "cpu",
                  "--out", tmp_path / "responses")
    assert not (tmp_path / "responses").exists()


def test_a_bad_out_fails_before_anything_is_trained_or_written(tmp_path):
    file = tmp_path / "a-file"
    file.write_text("")
    with pytest.raises(ValueError, match="--out .*a-file is a file, not a folder"):
        reproduce("degradation", "--depths", 8, *QUICK, "--out", file)
    with pytest.raises(ValueError, match="--out .*a-file is a file, not a folder"):
        reproduce("orders", "--depth", 8, *QUICK, "--out", file)
    # A bad depth leaves no empty folder behind.
    with pytest.raises(ValueError, match="depth 10 is not"):
        reproduce("responses", "--depths", 10, *QUICK, "--out", tmp_path / "responses")
    assert not (tmp_path / "responses").exists()


def test_a_degradation_figure_of_one_evaluation_tells_train_from_test():
    from resnetlab.experiments import _degradation_figure

    row = {"step": 8, "train_error": 90.0, "test_error": 85.0}
    fig = _degradation_figure({("plain", 8): [row], ("residual", 8): [row]}, "one evaluation")
    for ax in fig.axes:
        ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
        assert ticks == [8]  # not 7.6 ... 8.4
        train, test = ax.get_lines()
        assert train.get_markerfacecolor() == "none" and test.get_markerfacecolor() != "none"


def test_the_ablations_quote_the_2016_papers_tables():
    """Test errors (%) on CIFAR-10 as the 2016 paper prints them: Table 2 for ResNet-110 and ResNet-164
    (bottleneck) in each activation order, Table 1 for the shortcuts of ResNet-110."""
    orders = {v.key: (v.paper_error(110, "basic"), v.paper_error(164, "bottleneck")) for v in STUDIES["orders"].variants}
    assert orders == {"post": ("6.61", "5.93"), "bn_after_add": ("8.17", "6.50"), "relu_before_add": ("7.84", "6.14"),
                      "relu_preact": ("6.71", "5.91"), "preact": ("6.37", "5.46")}
    shortcuts = {v.key: v.paper_error(110, "basic") for v in STUDIES["shortcuts"].variants}
    assert shortcuts == {"original": "6.61", "scale-0.5-0.5": "12.35", "scale-0.5-1": "fail", "gate-6": "8.70",
                         "shortcut-gate-0": "12.86", "shortcut-gate-6": "6.91", "conv-shortcut": "12.22", "dropout": "fail"}
    assert all(v.paper_error(56, "basic") is None for study in STUDIES.values() for v in study.variants)


def test_the_2016_ablations_train_with_the_2016_recipe():
    """The 2016 paper warms up every CIFAR net; its ablations default to its recipe, the 2015 experiments to theirs."""
    parser = cli.build_parser()
    for study in STUDIES:
        assert parser.parse_args(["reproduce", study]).recipe == "he2016-preact"
    for experiment in ("degradation", "depth", "gradients", "responses"):
        assert parser.parse_args(["reproduce", experiment]).recipe == "he2016"


def measured_net(kind, depth, stds, run_name=None, variant=None, conv_outputs=()):
    """One entry of responses.json, as reproduce_responses measures it."""
    return {"model": f"{'plain' if kind == 'plain' else 'resnet'}{depth}", "run_name": run_name or f"{kind}{depth}-s0",
            "kind": kind, "depth": depth, "variant": variant, "conv_outputs": list(conv_outputs),
            "std": stds, "std_sorted": sorted(stds, reverse=True)}


def test_the_responses_figure_tells_every_net_apart_and_says_what_was_measured_on_what():
    from resnetlab.experiments import _responses_figure

    pair = [measured_net("plain", 8, [1.1, 1.0, 1.0]), measured_net("residual", 8, [1.0, 0.9, 1.0])]
    fig = _responses_figure(pair, "trained: fashion-mnist, 800 iterations; measured on 32 test images")
    top = fig.axes[0]
    plain, residual = top.get_lines()
    # A depth's two nets share a hue, not a colour: they lie on top of each other where the responses agree.
    assert plain.get_color() != residual.get_color() and plain.get_linestyle() == "--"
    title = top.get_title()
    assert title.endswith("plain nets dashed\ntrained: fashion-mnist, 800 iterations; measured on 32 test images")
    assert top.get_yscale() == "linear"
    # A few large responses go logarithmic, so that the rest do not flatten onto one line.
    steep = [measured_net("plain", 8, [7.8, 3.0, 1.0]), measured_net("residual", 8, [1.0, 0.9, 1.0])]
    assert _responses_figure(steep, "s").axes[0].get_yscale() == "log"

    # An ablation's runs: named by the paper's variant, the way they were measured said, no plain net claimed.
    orders = [measured_net("residual", 8, [1.0, 0.8, 0.9], "resnet8-basic-post-s0", "original (Fig. 4a)"),
              measured_net("residual", 8, [0.9, 0.7, 0.8], "resnet8-basic-preact-s0", "full pre-activation (4e)",
                           conv_outputs=["layer1.0.conv1"]),
              measured_net("residual", 8, [0.9, 0.7, 0.9], "resnet8-basic-preact-s1", "full pre-activation (4e)",
                           conv_outputs=["layer1.0.conv1"])]
    top = _responses_figure(orders, "s").axes[0]
    assert [t.get_text() for t in top.get_legend().get_texts()] == [
        "ResNet-8, original (Fig. 4a)",
        "ResNet-8, full pre-activation (4e) (resnet8-basic-preact-s0)",  # two seeds of one variant: their folders
        "ResNet-8, full pre-activation (4e) (resnet8-basic-preact-s1)",
    ]
    assert len({line.get_color() for line in top.get_lines()}) == 3
    assert "or at its output where no BN follows it" in top.get_title() and "dashed" not in top.get_title()


def test_a_small_difference_between_one_plain_and_one_residual_run_is_called_noise():
    from resnetlab.experiments import _responses_sentences

    close = [measured_net("plain", 20, [1.020]), measured_net("residual", 20, [1.019])]
    far = [measured_net("plain", 56, [1.67]), measured_net("residual", 56, [0.99])]
    near, apart = _responses_sentences(close + far)
    assert near.endswith("(mean std 1.019, against 1.020); one run of each, so a difference this small may be noise.")
    assert apart.endswith("(mean std 0.990, against 1.670).")


def test_several_seeds_are_drawn_as_their_mean_with_their_range_shaded():
    from resnetlab.experiments import _degradation_figure, _mean_curve

    seeds = [[{"step": 8, "train_error": 50.0, "test_error": 40.0}, {"step": 16, "train_error": 30.0, "test_error": 20.0}],
             [{"step": 8, "train_error": 60.0, "test_error": 50.0}, {"step": 16, "train_error": 40.0, "test_error": 36.0}]]
    curve = _mean_curve(seeds)
    assert curve[1] == {"step": 16, "train_error": 35.0, "test_error": 28.0, "test_low": 20.0, "test_high": 36.0}
    assert "test_low" not in _mean_curve(seeds[:1])[0]  # one seed: no range to shade
    fig = _degradation_figure({("plain", 8): curve, ("residual", 8): curve}, "two seeds")
    for ax in fig.axes:
        (band,) = ax.collections
        ys = band.get_paths()[0].vertices[:, 1]
        assert min(ys) == 20.0 and max(ys) == 50.0


def test_depth_labels_go_below_the_points_where_100_percent_leaves_no_room_above():
    from resnetlab.experiments import _depth_figure

    for mean, std, va in ((12.0, 1.0, "bottom"), (95.0, 4.0, "top")):
        rows = [{"depth": 20, "mean": mean, "std": std, "parameters": 270_000},
                {"depth": 32, "mean": mean - 1, "std": std, "parameters": 464_000}]
        ax = _depth_figure(rows, "t").axes[0]
        assert ax.get_ylim()[1] <= 100.0
        label = ax.texts[0]
        assert label.get_text() == "0.27M params" and label.get_va() == va
        assert label.xy[1] == (mean + std if va == "bottom" else mean - std)


def test_the_gradient_heat_map_counts_layers_in_whole_numbers():
    from resnetlab.experiments import _heatmap_figure

    log = {"steps": [0, 1, 2], "layers": [f"l{i}" for i in range(8)], "norms": [[1.0] * 8, [0.5] * 8, [0.2] * 8]}
    fig = _heatmap_figure({"plain": log, "residual": log}, 8, "setup")
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_yticks() if -0.5 <= t <= 7.5]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_an_ablation_run_is_known_by_its_variant():
    from resnetlab.ablations import variant_of

    assert variant_of({"num_classes": 10, "in_chans": 1, "block": "basic", "order": "preact"}).label == "full pre-activation (4e)"
    assert variant_of({"block": "basic", "mixing": "scale", "scales": [0.5, 1.0]}).key == "scale-0.5-1"
    assert variant_of({"num_classes": 10}) is None  # a plain resnet: no variant
    assert variant_of({"order": "preact", "drop_rate": 0.1}) is None  # other options too: not the paper's variant


def test_a_short_ablation_takes_the_recipe_arg_its_warm_up_note_advises(tmp_path, capsys):
    out = tmp_path / "orders"
    reproduce("orders", "--depth", 8, "--variants", "preact", *QUICK, "--out", out)
    assert "--recipe-arg warmup_steps=" in "".join(capsys.readouterr())  # he2016-preact's 400 steps at 0.01 outlast the run
    # The report says so too: a figure of runs that never left the warm-up's lr is not the recipe's.
    assert "recipe he2016-preact holds lr 0.01 for its first 400 steps" in (out / "orders.md").read_text()
    shutil.rmtree(out)
    reproduce("orders", "--depth", 8, "--variants", "preact", *QUICK, "--recipe-arg", "warmup_steps=0", "--out", out)
    config = json.loads((out / "runs" / "resnet8-basic-preact-s0" / "config.json").read_text())
    assert config["recipe"]["warmup_steps"] == 0
    assert [r["lr"] for r in read_metrics(out / "runs" / "resnet8-basic-preact-s0")][0] == 0.1  # no warm-up at 0.01
    assert "recipe he2016-preact with batch 16, warmup_steps=0," in (out / "orders.md").read_text()
    assert "warm-up" not in (out / "orders.md").read_text()
    capsys.readouterr()
    reproduce("orders", "--depth", 8, "--variants", "preact", *QUICK, "--recipe-arg", "warmup_steps=0", "--out", out)
    assert "reusing the finished run" in capsys.readouterr().out
    with pytest.raises(ValueError, match="other settings \\(recipe\\)"):  # the run is not the one asked for without it
        reproduce("orders", "--depth", 8, "--variants", "preact", *QUICK, "--out", out)
