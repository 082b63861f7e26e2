"""The benchmarks as a user runs them: tables, the ratio line, and JSON results parsed back."""

import json
import re
from pathlib import Path

import pytest
import torch

from resnetlab import bench
from resnetlab.cli import main
from resnetlab.recipes import get_recipe

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
QUICK = ["--model", "resnet8", "--batch-size", "64", "--steps", "10", "--workers", "0", "--limit-test", "300",
         "--device", "cpu"]


def only_result(folder: Path) -> dict:
    (path,) = folder.glob("*.json")
    return json.loads(path.read_text())


@needs_fashion
def test_bench_train_compares_both_loops_and_writes_the_result(tmp_path, capsys):
    assert main(["bench", "train", *QUICK, "--repeat", "3", "--results", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    ratio = re.fullmatch(r"speedup vs typical loop: (\d+\.\d\d)x", lines[-1])
    assert ratio, lines[-1]
    result = only_result(tmp_path)
    assert list(result["contenders"]) == ["typical loop", "resnetlab"]
    typical, ours = result["contenders"]["typical loop"], result["contenders"]["resnetlab"]
    assert result["speedup"] == pytest.approx(typical["ms_per_step"] / ours["ms_per_step"])
    assert float(ratio.group(1)) == pytest.approx(result["speedup"], abs=0.006)
    for row in (typical, ours):
        assert len(row["ms_per_step_runs"]) == 3
        assert row["ms_per_step"] == pytest.approx(sorted(row["ms_per_step_runs"])[1])  # the median
        assert row["images_per_s"] == pytest.approx(64e3 / row["ms_per_step"])
        assert 0.13 < row["test_accuracy"] <= 1.0  # ten steps on real images: above chance (0.1 +- 0.02 on 300)
    assert result["timed_steps"] == 8 and result["test_examples"] == 300
    assert result["device_type"] == "cpu" and result["torch"] and result["date"].startswith("20")


@needs_fashion
def test_a_failing_variant_is_reported_and_the_others_still_count(tmp_path, monkeypatch):
    # A CUDA-graphed variant cannot run on the CPU: it must fail alone, with its reason.
    broken = bench._Variant("+ graph", "CUDA graph on a CPU", graphed=True)
    monkeypatch.setattr(bench, "_variants", lambda device, compile: [bench._Variant("resnetlab", "eager"), broken])
    printed = []
    result = bench.bench_train("resnet8", batch_size=64, steps=10, device="cpu", workers=0, limit_test=300,
                               print_fn=printed.append)
    assert "CUDA device" in result["contenders"]["+ graph"]["error"]
    assert any(line.startswith("  + graph: failed: ValueError") for line in printed)
    assert printed[-1].startswith("speedup vs typical loop: ")


@needs_fashion
def test_both_loops_train_with_the_same_weight_decay(monkeypatch):
    """The usual script decays every parameter (one optimizer group): resnetlab's loop does the same
    here, so that the accuracies compare at one schedule."""
    from resnetlab import steps

    decayed, real = [], steps.make_optimizer

    def record(recipe, model, *args, **kwargs):
        optimizer = real(recipe, model, *args, **kwargs)
        decayed.append(sum(p.numel() for g in optimizer.param_groups if g["weight_decay"] for p in g["params"]))
        return optimizer

    monkeypatch.setattr(steps, "make_optimizer", record)
    bench.bench_train("resnet8", batch_size=64, steps=10, device="cpu", workers=0, limit_test=300, print_fn=lambda line: None)
    assert decayed == [sum(p.numel() for p in bench.create_model("resnet8", num_classes=10, in_chans=1).parameters())]


@needs_fashion
def test_both_loops_train_with_the_recipes_optimizer(monkeypatch):
    """signs-adam's Adam in the usual script too: an SGD loop at Adam's learning rate would barely train,
    and the accuracy column would compare two different recipes."""
    from resnetlab import steps

    made, real_ours, real_typical = [], steps.make_optimizer, bench._typical_optimizer
    monkeypatch.setattr(steps, "make_optimizer", lambda *a, **k: made.append(real_ours(*a, **k)) or made[-1])
    monkeypatch.setattr(bench, "_typical_optimizer", lambda *a: made.append(real_typical(*a)) or made[-1])
    bench.bench_train("resnet8", batch_size=64, steps=10, device="cpu", workers=0, limit_test=300,
                      recipe_name="signs-adam", print_fn=lambda line: None)
    assert sorted(type(o).__name__ for o in made) == ["Adam", "Adam"]
    assert {o.defaults["eps"] for o in made} == {1e-7}  # the notebook's (Keras's) epsilon in both


def test_both_loops_time_the_same_steps_after_their_warm_up(monkeypatch):
    """On a clock that a training step moves by exactly one second, each loop reports one second a step:
    both time the steps after the warm-up and divide by those steps alone."""
    from resnetlab.data import ArrayDataset

    images = torch.randint(0, 256, (96, 1, 28, 28), dtype=torch.uint8)
    train_set = ArrayDataset(images, torch.arange(96) % 10, [str(i) for i in range(10)], "stand-in")
    now = [0.0]
    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    recipe, cpu = get_recipe("fast", batch_size=16), torch.device("cpu")
    for loop in (lambda model: bench._typical_loop(model, train_set, recipe, [0.5], [0.25], 9, 3, cpu, 0),
                 lambda model: bench._resnetlab_loop(model, train_set, recipe, [0.5], [0.25], 9, 3, cpu, 0, False, False)):
        model = bench.create_model("resnet8", num_classes=10, in_chans=1)
        model.register_forward_pre_hook(lambda module, args: now.__setitem__(0, now[0] + 1))
        assert loop(model) == 1.0


def test_the_typical_loop_makes_each_optimizer_a_recipe_names():
    model = bench.create_model("resnet8", num_classes=10, in_chans=1)
    for name, kind in (("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        optimizer = bench._typical_optimizer(get_recipe("fast", optimizer=name, nesterov=False, weight_decay=0.05), model)
        assert type(optimizer) is kind and optimizer.defaults["weight_decay"] == 0.05


@needs_fashion
def test_a_variant_failing_in_a_later_round_is_reported_not_timed(monkeypatch):
    monkeypatch.setattr(bench, "_variants", lambda device, compile: [bench._Variant("resnetlab", "eager"),
                                                                      bench._Variant("+ flaky", "fails in round 2")])
    calls, real_loop = [], bench._resnetlab_loop

    def fourth_call_fails(*args, **kwargs):  # round 1: resnetlab, + flaky; round 2: resnetlab, + flaky
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("out of memory")
        return real_loop(*args, **kwargs)

    monkeypatch.setattr(bench, "_resnetlab_loop", fourth_call_fails)
    result = bench.bench_train("resnet8", batch_size=64, steps=10, device="cpu", workers=0, limit_test=300, repeat=2,
                               print_fn=lambda line: None)
    assert result["contenders"]["+ flaky"] == {"name": "+ flaky", "how": "fails in round 2", "error": "RuntimeError: out of memory"}
    assert len(result["contenders"]["resnetlab"]["ms_per_step_runs"]) == 2


def test_bench_model_compares_with_torchvision(tmp_path, capsys):
    argv = ["bench", "model", "--model", "resnet18", "--batch-size", "2", "--image-size", "64", "--steps", "2",
            "--device", "cpu", "--results", str(tmp_path)]
    assert main(argv) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert re.fullmatch(r"resnetlab vs torchvision: training \d+\.\d\dx, inference \d+\.\d\dx", last), last
    result = only_result(tmp_path)
    assert set(result["contenders"]) == {"torchvision", "resnetlab"}
    tv, ours = result["contenders"]["torchvision"], result["contenders"]["resnetlab"]
    assert result["train_ratio"] == pytest.approx(ours["train_images_per_s"] / tv["train_images_per_s"])
    assert result["precision"] == "fp32" and result["image_size"] == 64
    assert result["trainer_step"]["train_images_per_s"] > 0 and "eager" in result["trainer_step"]["how"]


@pytest.mark.parametrize("argv,message", [
    (["train", "--steps", "5"], "--steps must be at least 10"),
    (["train", "--repeat", "0"], "--repeat must be at least 1"),
    (["train", "--limit-test", "0"], "--limit-test must be at least 1"),
    # No whole batch: both loops waited for one forever.
    (["train", "--batch-size", "60001"], "--batch-size 60001 is larger than the 60,000 training images"),
    (["train", "--dataset", "folder:photos"], "bench train times datasets held in memory"),
    (["model", "--model", "vgg11"], "torchvision has no 'vgg11' to compare with; use resnet18, resnet34"),
    (["model", "--model", "ResNet"], "torchvision has no 'ResNet'"),
    (["model", "--image-size", "8"], "--image-size must be at least 32"),
    (["model", "--steps", "0"], "error: --steps must be at least 1, got 0\n"),  # the unset --batch-size not named
    (["model", "--image-size", "100000"], "--image-size must be from 1 to 8,192 pixels, not 100000"),  # not the allocator's bytes
    (["decode", "--image-size", "0"], "--image-size must be from 1 to 8,192 pixels, not 0"),
    (["decode", "--size", "100000"], "--image-size must be from 1 to 8,192 pixels, not 100000"),
])
def test_bench_refuses_what_it_cannot_time(capsys, argv, message):
    assert main(["bench", *argv, "--device", "cpu"] if argv[0] != "decode" else ["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err


def test_bench_checks_where_its_result_goes_before_timing(tmp_path, capsys, monkeypatch):
    from resnetlab import bench

    monkeypatch.setattr(bench, "bench_model", lambda *args, **kwargs: pytest.fail("timed before checking --results"))
    (tmp_path / "afile").write_text("")
    assert main(["bench", "model", "--device", "cpu", "--results", str(tmp_path / "afile")]) == 2
    assert f"error: --results {tmp_path / 'afile'}: cannot write there" in capsys.readouterr().err


def test_bench_decode_times_both_pipelines_on_each_size_and_crop(tmp_path, capsys, monkeypatch):
    printed = []
    result = bench.bench_decode(size=32, count=2, repeat=2, sizes=((60, 40), (300, 200)), print_fn=printed.append)
    assert [(r["images"], r["crop"]) for r in result["rows"]] == [
        ("60x40", "random-resized crop"), ("60x40", "scale jitter"),
        ("300x200", "random-resized crop"), ("300x200", "scale jitter"),
    ]
    for r in result["rows"]:
        assert r["speedup"] == pytest.approx(r["torchvision_ms_per_image"] / r["resnetlab_ms_per_image"])
    assert result["scale_jitter"] == [37, 69] and result["device_type"] == "cpu"
    assert len(printed) == 2 + 4

    photos = tmp_path / "photos" / "only"
    photos.mkdir(parents=True)
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (90, 70), (i * 80, 0, 0)).save(photos / f"{i}.png")
    monkeypatch.setenv("HOME", str(tmp_path))  # --folder=~/photos: the shell leaves a ~ after = as it is
    assert main(["bench", "decode", "--folder=~/photos", "--size", "32", "--count", "2",
                 "--repeat", "1", "--results", str(tmp_path / "results")]) == 0
    saved = only_result(tmp_path / "results")
    assert saved["images"] == "the user's folder" and len(saved["rows"]) == 2
    row = next(line for line in capsys.readouterr().out.splitlines() if "random-resized crop" in line)
    assert row.startswith(f"{saved['rows'][0]['images']}  ")  # a long folder name keeps its column apart

    (photos / "0.png").write_text("not an image")  # named as training names it, not in PIL's words
    assert main(["bench", "decode", "--folder", str(tmp_path / "photos"), "--size", "32", "--count", "2",
                 "--repeat", "1", "--results", str(tmp_path / "results")]) == 2
    assert f"{photos / '0.png'} is not a readable image" in capsys.readouterr().err
