"""Training on real data, resume equivalence, and the graphed step's equivalence with the eager one."""

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from resnetlab import runs
from resnetlab.models import create_model
from resnetlab.pretrained import WeightsError
from resnetlab.recipes import get_recipe
from resnetlab.steps import GraphedTrainStep, TrainStep, build_train_step, load_optimizer_state, make_optimizer
from resnetlab.train import Diverged, Interrupted, TrainConfig, resume, train

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")


def tiny(tmp_path, name="run", **kw) -> TrainConfig:
    """A run of a few seconds: resnet8 on 512 real images."""
    base = dict(model="resnet8", recipe="he2016", limit_train=512, limit_test=256, batch_size=64, steps=20,
                device="cpu", out=str(tmp_path / name), progress=False, deterministic=True, seed=3)
    return TrainConfig(**{**base, **kw})


def stopped_and_resumed(tmp_path, stop_at: int, **kw):
    """A run stopped after ``stop_at`` steps, then resumed to its end."""
    with pytest.raises(Interrupted):
        train(tiny(tmp_path, "resumed", **kw), stop_at=stop_at)
    return resume(tmp_path / "resumed", device="cpu", progress=False)


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = load_file(a_dir / runs.WEIGHTS), load_file(b_dir / runs.WEIGHTS)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@needs_fashion
@pytest.mark.slow
def test_resnet20_reaches_80_percent_on_fashion_mnist_in_about_a_minute(tmp_path):
    result = train(TrainConfig(
        model="resnet20", limit_train=6000, epochs=3, eval_every=3, device="cpu",
        out=str(tmp_path / "run"), progress=False,
    ))
    assert result.test.count == 10_000  # the whole real test set
    assert result.test_accuracy >= 0.80


@needs_fashion
def test_run_directory_holds_everything_to_rebuild_and_resume(tmp_path):
    result = train(tiny(tmp_path, steps=16))
    run_dir = result.run_dir
    config = runs.read_config(run_dir)
    assert config["model"] == "resnet8" and config["classes"][0] == "T-shirt/top"
    assert (config["channels"], config["image_size"]) == (1, 28)
    assert len(config["mean"]) == 1 and 0.2 < config["mean"][0] < 0.4
    model, _ = runs.load_model(run_dir)
    weights = load_file(run_dir / runs.WEIGHTS)
    assert torch.equal(weights["fc.weight"], model.fc.weight)
    state = runs.load_checkpoint(run_dir)
    assert state["step"] == 16 and "optimizer" in state
    rows = runs.read_metrics(run_dir)
    assert [r["step"] for r in rows] == [8, 16]
    assert rows[-1]["test_acc"] == pytest.approx(result.test_accuracy)
    assert not list(run_dir.glob("*.tmp"))  # atomic writes leave no temporary files


@needs_fashion
@pytest.mark.parametrize("model_kwargs", [{}, {"drop_rate": 0.5}])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, model_kwargs):
    """Stopped mid-epoch and resumed: the same weights and the same metrics, row by row (the cut epoch's
    sums carried over). Dropout draws from torch's generator, which the checkpoint carries too."""
    straight = train(tiny(tmp_path, "straight", model_kwargs=model_kwargs))
    with pytest.raises(Interrupted):
        train(tiny(tmp_path, "resumed", model_kwargs=model_kwargs), stop_at=11)  # mid-epoch: 8 steps an epoch
    assert runs.load_checkpoint(tmp_path / "resumed")["step"] == 11
    torch.manual_seed(12345)  # whatever the caller drew since
    resumed = resume(tmp_path / "resumed", device="cpu", progress=False)
    assert resumed.steps == straight.steps == 20
    assert_same_weights(straight.run_dir, resumed.run_dir)
    rows_a, rows_b = runs.read_metrics(straight.run_dir), runs.read_metrics(resumed.run_dir)
    assert [r["step"] for r in rows_b] == [r["step"] for r in rows_a] == [8, 16, 20]
    for a, b in zip(rows_a, rows_b):
        for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
            assert b[key] == pytest.approx(a[key], rel=1e-6), (a["step"], key)


@needs_fashion
@pytest.mark.parametrize("recipe, overrides, augmentation", [
    ("he2016", {}, dict(pad_crop=4, flip=True, scale_crop=None)),
    ("fast", {"pad_crop": 0, "flip": False}, dict(pad_crop=0, flip=False, scale_crop=None)),
    ("fast", {"pad_crop": 0, "scale_crop": [0.5, 1.0]}, dict(pad_crop=0, flip=True, scale_crop=(0.5, 1.0))),
])
def test_the_training_batches_are_augmented_as_the_recipe_says_and_the_test_batches_not(tmp_path, monkeypatch, recipe, overrides, augmentation):
    from resnetlab import train as train_module

    made, real = [], train_module.make_loader
    monkeypatch.setattr(train_module, "make_loader", lambda *a, **k: made.append(k) or real(*a, **k))
    train(tiny(tmp_path, steps=2, recipe=recipe, recipe_overrides=overrides))
    [for_training], [for_testing] = [k for k in made if k["train"]], [k for k in made if not k["train"]]
    assert {k: for_training[k] for k in augmentation} == augmentation
    assert not any(for_testing.get(k) for k in ("pad_crop", "flip", "scale_crop", "scale_jitter", "lighting"))


@needs_fashion
def test_each_session_records_its_arithmetic_and_a_resume_that_changes_it_says_so(tmp_path, capsys):
    """On a CPU the thread count splits and orders every sum: a run resumed with another does not end on the
    uninterrupted run's weights. config.json records each session's, and such a resume says so."""
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with pytest.raises(Interrupted):
            train(tiny(tmp_path), stop_at=5)
        env = runs.read_config(tmp_path / "run")["environment"]
        assert (env["threads"], env["torch"], env["cpu"]) == (1, torch.__version__, torch.backends.cpu.get_cpu_capability())
        assert {"python", "torchvision", "numpy", "pillow", "platform"} <= set(env)
        capsys.readouterr()
        with pytest.raises(Interrupted):
            resume(tmp_path / "run", device="cpu", progress=False, stop_at=10)
        assert "other arithmetic" not in capsys.readouterr().err
        torch.set_num_threads(2)
        resume(tmp_path / "run", device="cpu", progress=False)
        err = capsys.readouterr().err
        assert "note: the run goes on with other arithmetic than it had (threads 1 -> 2): from step 10 " in err
        assert "OMP_NUM_THREADS=1 gives it its thread count back" in err
    finally:
        torch.set_num_threads(threads)
    sessions = runs.read_config(tmp_path / "run")["resumed"]
    assert [(s["step"], s["device"], s["environment"]["threads"]) for s in sessions] == [(5, "cpu", 1), (10, "cpu", 2)]
    resume(tmp_path / "run", device="cpu", progress=False)  # finished: no session, nothing recorded
    assert len(runs.read_config(tmp_path / "run")["resumed"]) == 2


@needs_fashion
def test_a_run_ending_mid_epoch_labels_its_bars_and_lines_alike(tmp_path, capsys, monkeypatch):
    """20 steps of 8 an epoch are 2.5 epochs: each progress bar reads as the line printed when its epoch
    ends, the last one 2.5/2.5 (not a bar at 3/3 and a line at 2.5/3), in a resumed run too."""
    import re
    import sys

    train(tiny(tmp_path, "piped", progress=True))  # bars on a terminal only: a log gets the lines alone
    out, err = capsys.readouterr()
    assert "epoch 2.5/2.5" in out and "\r" not in err and "img/s]" not in err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)

    def labels() -> tuple[list[str], list[str]]:
        out, err = capsys.readouterr()
        bars = list(dict.fromkeys(re.findall(r"epoch [\d.]+/[\d.]+", err)))  # tqdm redraws a bar many times
        return bars, [line.split("  ")[0] for line in out.splitlines() if line.startswith("epoch ")]

    train(tiny(tmp_path, progress=True))
    assert labels() == (["epoch 1/2.5", "epoch 2/2.5", "epoch 2.5/2.5"],) * 2
    with pytest.raises(Interrupted):
        train(tiny(tmp_path, "resumed", progress=True), stop_at=11)
    assert labels() == (["epoch 1/2.5", "epoch 2/2.5"], ["epoch 1/2.5"])
    resume(tmp_path / "resumed", device="cpu")
    assert labels() == (["epoch 2/2.5", "epoch 2.5/2.5"],) * 2


@needs_fashion
def test_deterministic_kernels_hold_for_the_run_and_the_process_gets_its_settings_back(tmp_path, monkeypatch):
    """Deterministic kernels and cuDNN's autotuner are switches of the whole process: a run sets them for
    itself and puts them back, even when it stops early."""
    import os

    from resnetlab import train as trainer

    seen = []
    real_epoch = trainer._train_epoch

    def spy(*args, **kwargs):
        seen.append((torch.are_deterministic_algorithms_enabled(), os.environ.get("CUBLAS_WORKSPACE_CONFIG")))
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(trainer, "_train_epoch", spy)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    assert not torch.are_deterministic_algorithms_enabled()
    train(tiny(tmp_path, steps=16, batch_size=64, limit_train=512))  # two epochs
    with pytest.raises(Interrupted):
        train(tiny(tmp_path, "stopped"), stop_at=4)
    assert seen == [(True, ":4096:8")] * 3
    assert not torch.are_deterministic_algorithms_enabled() and "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    assert torch.backends.cudnn.benchmark


@needs_fashion
def test_a_run_leaves_the_callers_random_draws_and_grad_mode_as_they_were(tmp_path):
    """A random search draws each trial's learning rate, trains, draws the next: the runs' seeding must not
    make it draw the same rate again. And a notebook may train under torch.no_grad() or inference_mode()."""
    import random

    import numpy as np

    def draws():
        return random.random(), np.random.rand(), torch.rand(1).item()

    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    expected = [draws() for _ in range(4)]
    random.seed(7), np.random.seed(7), torch.manual_seed(7)
    seen = [draws()]
    with torch.no_grad():
        assert train(tiny(tmp_path, "first", steps=4, limit_test=64)).steps == 4
        assert not torch.is_grad_enabled()
    seen.append(draws())
    with torch.inference_mode(), pytest.raises(Interrupted):
        train(tiny(tmp_path, "stopped", steps=4, limit_test=64), stop_at=2)
    seen.append(draws())
    assert resume(tmp_path / "stopped", device="cpu", progress=False).steps == 4
    seen.append(draws())
    assert seen == expected


@needs_fashion
def test_a_sweep_that_goes_on_past_failing_runs_still_stops_when_a_run_is_stopped(tmp_path):
    """A stopped run is a KeyboardInterrupt, as Ctrl-C is, so ``except Exception`` does not swallow it."""
    with pytest.raises(Interrupted):
        for seed in (1, 2):
            try:
                train(tiny(tmp_path, f"seed{seed}", seed=seed, steps=4, limit_test=64), stop_at=2)
            except Exception:
                continue
    assert runs.load_checkpoint(tmp_path / "seed1")["step"] == 2 and not (tmp_path / "seed2").exists()


@needs_fashion
def test_a_run_too_short_for_its_warm_up_says_so_when_it_starts(tmp_path, capsys):
    train(tiny(tmp_path, recipe="he2016-preact", steps=8))
    assert "note: recipe he2016-preact holds lr 0.01 for its first 400 steps, up to the lr drop at step 4" in capsys.readouterr().err
    train(tiny(tmp_path, "scaled", recipe="he2016-preact", steps=8, recipe_overrides={"warmup_steps": 1}))
    assert "warm-up" not in capsys.readouterr().err


@needs_fashion
def test_eval_every_skips_test_scores_between_evaluations_and_always_scores_the_last_epoch(tmp_path):
    """Three epochs of 8 steps with eval_every=2: the test set is scored after epochs 2 and 3 (the last),
    and a run stopped after epoch 1 and resumed writes the same rows."""
    whole = train(tiny(tmp_path, "whole", steps=24, eval_every=2))
    assert [row["test_acc"] is not None for row in whole.history] == [False, True, True]
    assert [row["test_acc"] is not None for row in runs.read_metrics(whole.run_dir)] == [False, True, True]
    assert whole.test_accuracy == whole.history[-1]["test_acc"]
    resumed = stopped_and_resumed(tmp_path, 8, steps=24, eval_every=2)
    assert [row["test_acc"] for row in resumed.history] == [row["test_acc"] for row in whole.history]


@needs_fashion
def test_scale_augmentation_runs_resume_to_the_same_weights(tmp_path):
    """The imagenet recipe's random boxes come from the epoch plan too: a resumed run sees the same ones."""
    kw = dict(recipe="imagenet", batch_size=64, steps=12)
    straight = train(tiny(tmp_path, "straight", **kw))
    assert runs.read_config(straight.run_dir)["recipe"]["scale_crop"] == [0.08, 1.0]
    assert_same_weights(straight.run_dir, stopped_and_resumed(tmp_path, 5, **kw).run_dir)


@pytest.mark.parametrize("when", ["waiting for a batch", "evaluating"])
def test_ctrl_c_to_the_whole_terminal_group_stops_a_run_with_decoding_workers_cleanly(tmp_path, when):
    """A terminal's Ctrl-C reaches the workers too. They ended on it, and the trainer, finishing its
    step to save it, waited for a batch no worker would send: "DataLoader worker exited unexpectedly"."""
    import os
    import subprocess
    import sys

    from conftest import noise_photos

    photos = noise_photos(tmp_path / "photos", ("a", "b"), 16, lambda i: (20, 24))
    script = (
        "import os, signal, sys, time\n"
        "from resnetlab import loader, train\n"
        "from resnetlab.cli import main\n"
        "def ctrl_c():\n"
        "    os.killpg(os.getpgrp(), signal.SIGINT)\n"
        "    time.sleep(1)  # the workers get it before the trainer asks them for more\n"
        "if sys.argv[1] == 'evaluating':\n"
        "    evaluate = train._evaluate_into\n"
        "    train._evaluate_into = lambda *a, **k: (ctrl_c(), evaluate(*a, **k))[1]\n"
        "else:\n"
        "    passes = loader._raise_reported\n"
        "    def batches(decoder):\n"
        "        for i, batch in enumerate(passes(decoder)):\n"
        "            yield batch\n"
        "            if i == 1 and isinstance(decoder.batch_sampler, loader._EpochKeys) and os.environ.pop('ONCE', None):\n"
        "                ctrl_c()\n"
        "    loader._raise_reported = batches\n"
        "sys.exit(main(sys.argv[2:]))\n")
    argv = ["train", "--model", "resnet8", "--dataset", f"folder:{photos}", "--image-size", "16", "--recipe", "imagenet",
            "--batch-size", "8", "--steps", "12", "--workers", "2", "--device", "cpu", "--no-progress", "--out", tmp_path / "run"]
    done = subprocess.run([sys.executable, "-c", script, when, *map(str, argv)], capture_output=True, text=True, timeout=300,
                          start_new_session=True, env={**os.environ, "ONCE": "1"})  # its own group: pytest's gets no Ctrl-C
    assert done.returncode == 130 and "stopped at step" in done.stderr, done.stderr
    assert resume(tmp_path / "run", device="cpu", progress=False).steps == 12


def test_a_folder_that_changed_since_its_run_started_is_refused_on_resume(tmp_path):
    """Resuming on other images would end a run no uninterrupted one could; with images gone, one epoch
    of the plan would have no batches at all."""
    from PIL import Image

    photos = tmp_path / "photos"
    for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        (photos / name).mkdir(parents=True)
        for i in range(10):
            Image.new("RGB", (8, 8), (colour[0], i * 10, colour[2])).save(photos / name / f"{i}.png")
    kw = dict(dataset=f"folder:{photos}", recipe="fast", image_size=8, batch_size=4, steps=8, workers=0)
    with pytest.raises(Interrupted):
        train(tiny(tmp_path, **kw), stop_at=2)
    (photos / "red" / "3.png").unlink()
    with pytest.raises(runs.RunError, match=r"photos holds 2 classes and 1\d \+ \d images, not the run's 2 and 18 \+ 2: not the same data"):
        resume(tmp_path / "run", device="cpu", progress=False)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(photos / "red" / "3.png")  # as many images, another one
    with pytest.raises(runs.RunError, match="but other images or labels"):
        resume(tmp_path / "run", device="cpu", progress=False)


def test_seeds_change_the_weights_and_the_data_seed_the_images(tmp_path, monkeypatch):
    """Runs of several seeds are compared on one test set: a folder's held-out images and its --limit draws
    follow --data-seed alone. A run from before data_seed drew them with its seed, and still resumes."""
    from conftest import noise_photos

    from resnetlab.evaluate import evaluate_run

    photos = noise_photos(tmp_path / "photos", ("a", "b"), 20, lambda i: (10, 10))
    kw = dict(dataset=f"folder:{photos}", recipe="fast", image_size=8, batch_size=4, steps=4, workers=0,
              limit_train=30, limit_test=None)
    import resnetlab.data

    drawn, real_load_split = [], resnetlab.data.load_split
    monkeypatch.setattr(resnetlab.data, "load_split", lambda *a, **k: drawn.append(k.get("seed", a[5:6])) or real_load_split(*a, **k))
    fingerprint = {}
    for name, seeds in (("s3", {"seed": 3}), ("s4", {"seed": 4}), ("d1", {"seed": 3, "data_seed": 1})):
        result = train(tiny(tmp_path, name, **kw, **seeds))
        fingerprint[name] = runs.read_config(result.run_dir)["data_fingerprint"]
        # eval draws the held-out images again with the run's data seed: the very ones it was scored on
        assert evaluate_run(result.run_dir, device="cpu", out=tmp_path / f"eval-{name}").result.accuracy == result.test_accuracy
        assert drawn[-1] == seeds.get("data_seed", 0)
    assert fingerprint["s3"] == fingerprint["s4"]
    assert fingerprint["d1"]["train"] != fingerprint["s3"]["train"] and fingerprint["d1"]["test"] != fingerprint["s3"]["test"]
    assert not torch.equal(runs.load_model(tmp_path / "s3")[0].fc.weight, runs.load_model(tmp_path / "s4")[0].fc.weight)

    with pytest.raises(Interrupted):  # as an earlier version drew it: split and draws by the run's own seed
        train(tiny(tmp_path, "old", **kw, seed=5, data_seed=5), stop_at=2)
    config = runs.read_config(tmp_path / "old")
    del config["data_seed"]
    runs.write_json(tmp_path / "old" / runs.CONFIG, config)
    assert resume(tmp_path / "old", device="cpu", progress=False).steps == 4


def test_folders_with_scale_augmentation_train_on_crops_and_evaluate_on_centre_crops(tmp_path):
    """The imagenet recipe on a folder: training crops come from the stored images (resumable, like
    every plan), held-out images keep their proportions and lose their edges to the centre crop."""
    from PIL import Image, ImageDraw

    from resnetlab.data import get_dataset, load_split, reload_sizes
    from resnetlab.predict import predict_images
    from resnetlab.loader import normalize

    photos = tmp_path / "photos"
    for name, colour in (("red", (200, 0, 0)), ("blue", (0, 0, 200))):
        (photos / name).mkdir(parents=True)
        for i in range(10):
            wide = i % 2 == 0
            img = Image.new("RGB", (60, 24) if wide else (24, 60), colour)
            # Green bands at the ends of the long side: a squash to a square keeps them, a centre crop does not.
            ends = [(0, 0, 5, 23), (54, 0, 59, 23)] if wide else [(0, 0, 23, 5), (0, 54, 23, 59)]
            for box in ends:
                ImageDraw.Draw(img).rectangle(box, fill=(0, 255, 0))
            img.save(photos / name / f"{i}.png")
    kw = dict(dataset=f"folder:{photos}", recipe="imagenet", image_size=16, batch_size=4, steps=6, workers=0)
    straight = train(tiny(tmp_path, "straight", **kw))
    assert math.isfinite(straight.history[-1]["train_loss"])
    config = runs.read_config(straight.run_dir)
    assert config["std"][1] == 1.0  # green never shows in the centre crops: left unscaled
    assert (config["image_size"], config["resize_size"]) == (16, 18)  # torchvision's 224 -> 256, scaled
    test = load_split(config["dataset"], "test", limit=None, seed=config["seed"], **reload_sizes(config["dataset"], config))
    assert test.images.shape[1:] == (3, 16, 16) and len(test) == 2  # one a class held out
    assert test.images[:, 1].max() == 0  # no green: the centre crop of the proportioned image
    model, _ = runs.load_model(straight.run_dir)
    held_out = [p for p, _ in get_dataset(config["dataset"], "test", seed=config["seed"]).samples]
    answers = predict_images(model, config, held_out, top_k=1)  # prediction preprocesses as evaluation does
    with torch.no_grad():
        probs = model.eval()(normalize(test.images, config["mean"], config["std"])).softmax(1)
    assert [a.classes[0] for a in answers] == [config["classes"][k] for k in probs.argmax(1).tolist()]
    assert [a.probabilities[0] for a in answers] == pytest.approx(probs.max(1).values.tolist(), rel=1e-5)
    assert_same_weights(straight.run_dir, stopped_and_resumed(tmp_path, 5, **kw).run_dir)  # mid-epoch: 4 steps an epoch


def test_the_2015_imagenet_recipe_trains_on_a_folder_and_resumes_to_the_same_weights(tmp_path, capsys):
    """Scale jitter from the files, colour noise along this folder's own colour components, resumable."""
    from PIL import Image

    from resnetlab.cli import main

    photos = tmp_path / "photos"
    rng = torch.Generator().manual_seed(0)
    for name in ("sea", "sand"):
        (photos / name).mkdir(parents=True)
        for i in range(10):
            h, w = (40, 56) if i % 2 else (64, 40)
            pixels = torch.randint(0, 256, (h, w, 3), dtype=torch.uint8, generator=rng)
            pixels[..., 2 if name == "sea" else 0] //= 4  # the classes differ in colour
            Image.fromarray(pixels.numpy()).save(photos / name / f"{i}.png")
    kw = dict(dataset=f"folder:{photos}", recipe="he2015-imagenet", image_size=16, batch_size=4, steps=6, workers=0,
              recipe_overrides={"scale_jitter": (19, 35)})
    straight = train(tiny(tmp_path, "straight", **kw))
    config = runs.read_config(straight.run_dir)
    assert config["resize_size"] == 18 and len(config["colour_pca"]["eigval"]) == 3
    assert_same_weights(straight.run_dir, stopped_and_resumed(tmp_path, 5, **kw).run_dir)

    # Unless told, the paper's 256-480 follows the crop size: 19-35 for 16-pixel crops, as above.
    scaled = train(tiny(tmp_path, "scaled", **{**kw, "steps": 1, "recipe_overrides": {}}))
    assert runs.read_config(scaled.run_dir)["recipe"]["scale_jitter"] == [19, 35]

    quick = ["--model", "resnet8", "--recipe", "he2015-imagenet", "--steps", "1", "--batch-size", "4", "--device", "cpu"]
    assert main(["train", *quick, "--dataset", f"folder:{photos}", "--image-size", "288", "--recipe-arg",
                 "scale_jitter=[256,480]", "--out", str(tmp_path / "big")]) == 2
    assert "at least the training size 288; the paper's 256-480 for 224-pixel crops is --recipe-arg scale_jitter=[330,618]" \
        in capsys.readouterr().err
    assert not (tmp_path / "big").exists()
    if FASHION.exists():
        assert main(["train", *quick, "--dataset", "fashion-mnist", "--out", str(tmp_path / "named")]) == 2
        assert "scale jitter resizes image files: it needs a folder dataset" in capsys.readouterr().err


def test_an_unreadable_file_mid_run_saves_the_run_and_says_how_to_go_on(tmp_path, capsys):
    """A training image spoiled after the run started: one line naming it, the steps done kept; once it
    is mended, the resumed run ends with the weights of a run that never stopped."""
    from conftest import noise_photos

    from resnetlab.cli import main

    photos = noise_photos(tmp_path / "photos", ("a", "b"), 12, lambda i: (30, 40 + i))
    kw = dict(dataset=f"folder:{photos}", recipe="imagenet", image_size=16, batch_size=4, steps=10, workers=1)
    straight = train(tiny(tmp_path, "straight", **kw))
    with pytest.raises(Interrupted):
        train(tiny(tmp_path, "resumed", **kw), stop_at=2)
    # The first image of the 4th of the first epoch's 5 batches (22 training images, batches of 4).
    from resnetlab.data import get_dataset
    from resnetlab.loader import make_loader

    train_images = get_dataset(f"folder:{photos}", "train", image_size=16, seed=0)  # the run's data seed
    order = make_loader(train_images, 4, [0.5] * 3, [0.2] * 3, torch.device("cpu"), train=True, workers=0, seed=3,
                        scale_crop=(0.08, 1.0), flip=True).plan(0).order
    victim = train_images.samples[int(order[12])][0]
    good = victim.read_bytes()
    victim.write_bytes(good[:60])  # cut short, as a copy that failed half way leaves it
    capsys.readouterr()  # what the runs above said
    assert main(["train", "--resume", str(tmp_path / "resumed"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {victim} is not a readable image") and "Traceback" not in err
    step = runs.load_checkpoint(tmp_path / "resumed")["step"]
    assert step == 3 and "The run is saved at step 3; continue it with: resnetlab train --resume" in err
    victim.write_bytes(good)
    resumed = resume(tmp_path / "resumed", device="cpu", progress=False)
    assert resumed.steps == 10
    assert_same_weights(straight.run_dir, resumed.run_dir)


@needs_fashion
def test_gradient_norms_are_recorded(tmp_path):
    result = train(tiny(tmp_path, steps=12, grad_norm_every=4))
    log = runs.read_grad_norms(result.run_dir)
    assert log["steps"] == [0, 4, 8]
    assert log["layers"][0] == "conv1.weight" and log["layers"][-1] == "fc.weight"
    assert all(len(row) == len(log["layers"]) and min(row) > 0 for row in log["norms"])


def test_the_recorded_gradient_norms_are_each_weights_gradient_of_that_step():
    """The norms a step returns are the L2 norms of this batch's gradients alone, the step before's
    cleared (checked against autograd on a copy of the model), and the step still updates the weights."""
    torch.manual_seed(0)
    recipe = get_recipe("fast", label_smoothing=0.1)
    model = create_model("resnet8", in_chans=1)
    cpu = torch.device("cpu")
    step = TrainStep(model, make_optimizer(recipe, model, cpu), recipe.label_smoothing, cpu)
    watched = [p for p in model.parameters() if p.ndim > 1]
    for _ in range(2):
        x, y = torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))
        reference = copy.deepcopy(model)
        torch.nn.functional.cross_entropy(reference(x), y, label_smoothing=0.1).backward()
        expected = torch.stack([p.grad.norm() for p in reference.parameters() if p.ndim > 1])
        norms = step(x, y, 0.1, watched=watched)
        torch.testing.assert_close(norms, expected, rtol=1e-5, atol=1e-7)
        assert not torch.equal(watched[0], next(reference.parameters())), "recording the norms must not skip the update"


def test_the_steps_sums_are_sums_over_images_whatever_the_batch_sizes():
    """An epoch's mean loss is its sum over images divided by the images seen: batches of 3 and 5 add
    3 and 5 images' losses, as cross-entropy summed over each image would (lr 0 keeps the weights)."""
    torch.manual_seed(0)
    recipe, cpu = get_recipe("fast", label_smoothing=0.1), torch.device("cpu")
    model = create_model("resnet8", in_chans=1)
    reference = copy.deepcopy(model)
    batches = [(torch.randn(n, 1, 12, 12), torch.randint(0, 10, (n,))) for n in (3, 5)]
    step = TrainStep(model, make_optimizer(recipe, model, cpu), 0.1, cpu)  # the graphed step's batches are all one size
    loss = correct = 0.0
    for x, y in batches:
        step(x, y, 0.0)
        logits = reference(x)  # training mode, as the step: the same batch statistics
        loss += torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    sums = step.read_sums()
    assert sums["seen"] == 8 and sums["correct"] == correct
    assert sums["loss"] == pytest.approx(loss, rel=1e-5)


def test_graphed_step_body_matches_the_eager_step():
    """The graphed step's body, run without capture on the CPU, updates exactly as the eager step."""
    torch.manual_seed(0)
    recipe = get_recipe("fast", label_smoothing=0.1)
    model_a = create_model("resnet8", in_chans=1)
    model_b = copy.deepcopy(model_a)
    device = torch.device("cpu")
    eager = TrainStep(model_a, make_optimizer(recipe, model_a, device), recipe.label_smoothing, device)
    batches = [(torch.randn(16, 1, 12, 12), torch.randint(0, 10, (16,))) for _ in range(6)]
    graphed = GraphedTrainStep(model_b, model_b, make_optimizer(recipe, model_b, device, tensor_lr=True),
                               recipe.label_smoothing, batches[0], capture=False)
    for i, (x, y) in enumerate(batches):
        lr = 0.05 * (i + 1)
        eager(x, y, lr)
        graphed(x, y, lr)
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters()):
        assert torch.allclose(p, q, atol=1e-5, rtol=1e-4), name
    for buf_a, buf_b in zip(model_a.buffers(), model_b.buffers()):
        assert torch.allclose(buf_a.float(), buf_b.float(), atol=1e-5), "BN statistics"
    sums_a, sums_b = eager.read_sums(), graphed.read_sums()
    assert sums_a["seen"] == sums_b["seen"] == 96
    assert sums_a["loss"] == pytest.approx(sums_b["loss"], rel=1e-5)


def test_graphed_step_needs_tensor_learning_rates():
    model = create_model("resnet8")
    recipe = get_recipe("fast")
    with pytest.raises(ValueError, match="tensor learning rates"):
        GraphedTrainStep(model, model, make_optimizer(recipe, model, torch.device("cpu")), 0.0,
                         (torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)), capture=False)


def test_optimizer_state_of_the_graphed_path_continues_on_the_eager_path():
    """A checkpoint written on a GPU (learning rates held in tensors) resumes on the CPU, momentum intact."""
    torch.manual_seed(0)
    recipe = get_recipe("fast")
    cpu = torch.device("cpu")
    model = create_model("resnet8", in_chans=1)
    graphed = GraphedTrainStep(model, model, make_optimizer(recipe, model, cpu, tensor_lr=True), 0.0,
                               (torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))), capture=False)
    graphed(torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,)), 0.05)
    state = graphed.optimizer.state_dict()
    assert isinstance(state["param_groups"][0]["lr"], torch.Tensor)
    step = build_train_step(model, recipe, cpu, optimizer_state=state)
    assert type(step) is TrainStep
    assert all(type(g["lr"]) is float and g["lr"] == pytest.approx(0.05) for g in step.optimizer.param_groups)
    p = model.conv1.weight
    assert torch.equal(step.optimizer.state[p]["momentum_buffer"], graphed.optimizer.state[p]["momentum_buffer"])


def test_momentum_saved_without_channels_last_resumes_into_a_fused_channels_last_update():
    """A run saved where channels_last is off (MPS) resumes where it is on, with a fused update (which
    ignores strides): the update is the one the saved run would have made."""
    torch.manual_seed(0)
    recipe, cpu = get_recipe("fast"), torch.device("cpu")
    model = create_model("resnet8", in_chans=1)
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))
    saved = TrainStep(model, make_optimizer(recipe, model, cpu), 0.0, cpu)
    saved(x, y, 0.05)
    state = copy.deepcopy(saved.optimizer.state_dict())
    resumed_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    saved(x, y, 0.05)  # the saved run's next step
    fused = make_optimizer(recipe, resumed_model, cpu, tensor_lr=True)  # fused, as on a GPU
    load_optimizer_state(fused, state)
    GraphedTrainStep(resumed_model, resumed_model, fused, 0.0, (x, y), capture=False)(x, y, 0.05)
    for (name, a), b in zip(model.named_parameters(), resumed_model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)



def test_optimizer_state_that_does_not_fit_the_model_is_named():
    """A checkpoint made for another model (by hand, or another tool's): its optimizer state is refused
    in one line, not by the optimizer's own words or a broadcast at the first update."""
    recipe, cpu = get_recipe("fast"), torch.device("cpu")
    model = create_model("resnet8", in_chans=1)
    step = TrainStep(model, make_optimizer(recipe, model, cpu), 0.0, cpu)
    step(torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,)), 0.05)
    state = copy.deepcopy(step.optimizer.state_dict())
    first = state["param_groups"][0]["params"][0]
    state["state"][first]["momentum_buffer"] = torch.zeros(3)
    with pytest.raises(runs.RunError, match=r"its momentum_buffer of shape \(3,\) for a parameter of shape \(16, 1, 3, 3\)"):
        load_optimizer_state(make_optimizer(recipe, model, cpu), state)
    other = create_model("resnet14", in_chans=1)  # more parameters
    with pytest.raises(runs.RunError, match="the checkpoint's optimizer state does not fit this model's parameters \\(loaded"):
        load_optimizer_state(make_optimizer(recipe, other, cpu), step.optimizer.state_dict())


@needs_fashion
def test_a_run_whose_checkpoint_optimizer_state_does_not_fit_names_the_file(tmp_path):
    with pytest.raises(Interrupted):
        train(tiny(tmp_path, steps=8), stop_at=2)
    path = tmp_path / "run" / runs.CHECKPOINT
    checkpoint = torch.load(path, weights_only=True)
    first = checkpoint["optimizer"]["param_groups"][0]["params"][0]
    checkpoint["optimizer"]["state"][first]["momentum_buffer"] = torch.zeros(3)
    torch.save(checkpoint, path)
    with pytest.raises(runs.RunError, match=f"{path}: the checkpoint's optimizer state does not fit"):
        resume(tmp_path / "run", device="cpu", progress=False)

def test_a_graphed_step_refuses_a_batch_of_another_shape():
    model = create_model("resnet8", in_chans=1)
    step = GraphedTrainStep(model, model, make_optimizer(get_recipe("fast"), model, torch.device("cpu"), tensor_lr=True), 0.0,
                            (torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,))), capture=False)
    with pytest.raises(ValueError, match=r"batches of \(8, 1, 12, 12\), not \(1, 1, 12, 12\)"):
        step(torch.randn(1, 1, 12, 12), torch.randint(0, 10, (1,)), 0.05)  # copy_ would broadcast it


def eager_state_in_a_graph_ready_optimizer(recipe_name: str, steps: int, lr: float, **overrides):
    """(model, eager step, tensor-lr optimizer loaded with the eager step's state after ``steps`` steps)."""
    torch.manual_seed(0)
    recipe = get_recipe(recipe_name, **overrides)
    cpu = torch.device("cpu")
    model = create_model("resnet8", in_chans=1)
    eager = TrainStep(model, make_optimizer(recipe, model, cpu), 0.0, cpu)
    for _ in range(steps):
        eager(torch.randn(8, 1, 12, 12), torch.randint(0, 10, (8,)), lr)
    graph_ready = make_optimizer(recipe, model, cpu, tensor_lr=True)
    load_optimizer_state(graph_ready, eager.optimizer.state_dict())
    return model, eager, graph_ready


def test_an_eager_checkpoint_keeps_the_graphed_paths_fused_update():
    """Loading an eager run's optimizer state must not bring its unfused, float-lr update into a graph."""
    model, eager, graph_ready = eager_state_in_a_graph_ready_optimizer("fast", steps=1, lr=0.03)
    for group in graph_ready.param_groups:
        assert group["fused"] is True
        assert isinstance(group["lr"], torch.Tensor) and float(group["lr"]) == pytest.approx(0.03)
    p = model.conv1.weight
    assert torch.equal(graph_ready.state[p]["momentum_buffer"], eager.optimizer.state[p]["momentum_buffer"])


def test_a_graphed_step_needs_a_cuda_device():
    model = create_model("resnet8")
    with pytest.raises(ValueError, match="CUDA device"):
        build_train_step(model, get_recipe("fast"), torch.device("cpu"), graphed=True,
                         sample=(torch.randn(2, 3, 8, 8), torch.zeros(2, dtype=torch.long)))


@needs_fashion
def test_tensorboard_gets_the_epoch_metrics(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = train(tiny(tmp_path, steps=16))
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("train_loss")] == [8, 16]
    assert events.Scalars("test_acc")[-1].value == pytest.approx(result.test_accuracy)


@pytest.mark.parametrize("overrides", [{}, {"optimizer": "adamw", "weight_decay": 0.05}], ids=["adam", "adamw"])
def test_an_eager_adam_checkpoint_continues_in_a_capturable_adam(overrides):
    model, _, graph_ready = eager_state_in_a_graph_ready_optimizer("signs-adam", steps=2, lr=1e-3, **overrides)
    assert type(graph_ready).__name__ == ("AdamW" if overrides else "Adam")
    assert all(g["capturable"] and g["fused"] for g in graph_ready.param_groups)
    step = graph_ready.state[model.conv1.weight]["step"]
    assert step.dtype == torch.float32 and float(step) == 2.0
    graph_ready.zero_grad()
    torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 12, 12)), torch.randint(0, 10, (8,))).backward()
    graph_ready.step()  # the capturable, fused update runs on the loaded state
    assert float(graph_ready.state[model.conv1.weight]["step"]) == 3.0


def test_a_run_that_failed_before_its_first_checkpoint_starts_again_in_its_directory(tmp_path, monkeypatch):
    """Nothing to resume there, so the same --out takes a new run; a run with a checkpoint is never replaced."""
    import resnetlab.train as train_module

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(train_module, "build_train_step", broken)
    with pytest.raises(RuntimeError, match="out of memory"):
        train(tiny(tmp_path, steps=2))
    assert (tmp_path / "run" / runs.CONFIG).exists() and not (tmp_path / "run" / runs.CHECKPOINT).exists()
    with pytest.raises(runs.RunError, match="stopped before saving one"):
        resume(tmp_path / "run", progress=False)
    monkeypatch.undo()
    result = train(tiny(tmp_path, steps=2))
    assert result.run_dir == tmp_path / "run" and len(runs.read_metrics(tmp_path / "run")) == 1
    with pytest.raises(runs.RunError, match="already holds a run"):
        train(tiny(tmp_path, steps=2))


def test_runs_started_in_the_same_second_get_directories_of_their_own(tmp_path, monkeypatch):
    from resnetlab.train import _new_run_dir

    monkeypatch.chdir(tmp_path)
    config = TrainConfig(model="resnet8")
    (first, lock1), (second, lock2) = _new_run_dir(config), _new_run_dir(config)
    assert first.is_dir() and second.is_dir() and first != second
    lock1.release(), lock2.release()


@needs_fashion
def test_a_directory_another_process_trains_into_is_refused(tmp_path):
    """Two runs into one --out: the second is refused while the first holds the directory (before it
    has written a checkpoint, when the directory still looks unstarted), and so is a resume."""
    lock = runs.RunLock(tmp_path / "run")  # as a training process holds it; a lock of another open file
    runs.write_json(tmp_path / "run" / runs.CONFIG, {"model": "resnet8", "recipe": {}, "versions": {"resnetlab": "0"}})
    with pytest.raises(runs.RunError, match="being trained by another process"):
        train(tiny(tmp_path, steps=2))
    assert json.loads((tmp_path / "run" / runs.CONFIG).read_text())["model"] == "resnet8"  # the other run's, left alone
    lock.release()
    train(tiny(tmp_path, steps=8))
    lock = runs.RunLock(tmp_path / "run")
    with pytest.raises(runs.RunError, match="being trained by another process"):
        resume(tmp_path / "run", progress=False)
    lock.release()


def test_a_folder_that_is_not_a_run_is_not_cleared(tmp_path):
    """A config.json of someone else's, beside other files: refused, and nothing deleted."""
    folder = tmp_path / "run"
    (folder / "tensorboard").mkdir(parents=True)
    (folder / runs.CONFIG).write_text('{"my": "settings"}')
    (folder / "tensorboard" / "events.important").write_text("x")
    with pytest.raises(runs.RunError, match="not a resnetlab training run's; pick another --out"):
        train(tiny(tmp_path, steps=2))
    assert (folder / runs.CONFIG).read_text() == '{"my": "settings"}' and (folder / "tensorboard" / "events.important").exists()


@needs_fashion
def test_killed_or_out_of_space_while_saving_the_run_can_still_be_resumed(tmp_path, monkeypatch):
    """The checkpoint is written before the weights, so a run killed between the two writes resumes;
    a write that fails (a full disk: torch.save's C++ writer raises a RuntimeError) is one RunError
    naming the file, and a killed writer's temporary file is removed when the run goes on."""
    straight = train(tiny(tmp_path, "straight", steps=16))
    real_save_weights = runs.save_weights

    def killed(*args):
        raise KeyboardInterrupt  # the process dies after the checkpoint, before the weights

    monkeypatch.setattr(runs, "save_weights", killed)
    with pytest.raises(Interrupted):
        train(tiny(tmp_path, "resumed", steps=16))
    assert (tmp_path / "resumed" / runs.CHECKPOINT).exists() and not (tmp_path / "resumed" / runs.WEIGHTS).exists()
    monkeypatch.setattr(runs, "save_weights", real_save_weights)
    (tmp_path / "resumed" / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half")

    def full_disk(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 464832 vs 464720")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(runs.RunError, match=r"could not write .*checkpoint.pt \(it stopped short\); is the disk full\?"):
        resume(tmp_path / "resumed", progress=False)
    monkeypatch.undo()
    assert not list((tmp_path / "resumed").glob(".*.tmp"))
    resume(tmp_path / "resumed", progress=False)
    assert_same_weights(straight.run_dir, tmp_path / "resumed")


@needs_fashion
def test_a_run_killed_between_its_last_checkpoint_and_its_weights_gets_its_last_weights_on_resume(tmp_path, monkeypatch):
    """The resume of a finished run trains nothing, so nothing else would write those weights again."""
    straight = train(tiny(tmp_path, "straight", steps=16))
    real_save_weights, saves = runs.save_weights, []

    def killed_at_the_last(model, run_dir):
        saves.append(run_dir)
        if len(saves) == 2:  # the end of the second and last epoch
            raise KeyboardInterrupt
        real_save_weights(model, run_dir)

    monkeypatch.setattr(runs, "save_weights", killed_at_the_last)
    with pytest.raises(Interrupted):
        train(tiny(tmp_path, "killed", steps=16))
    monkeypatch.undo()
    assert runs.load_checkpoint(tmp_path / "killed")["step"] == 16
    finished = resume(tmp_path / "killed", progress=False)
    assert finished.steps == 16 and finished.test is None  # nothing trained, nothing evaluated
    assert finished.test_accuracy == straight.test_accuracy  # the run's last evaluation, from its history
    assert_same_weights(straight.run_dir, tmp_path / "killed")


@needs_fashion
def test_tensorboard_events_that_cannot_be_written_are_said_once_and_the_run_goes_on(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").write_text("a file where the events' folder goes")
    result = train(tiny(tmp_path, steps=16))
    assert result.steps == 16 and len(runs.read_metrics(out)) == 2
    err = capsys.readouterr().err
    assert err.count(f"note: TensorBoard's events cannot be written to {out / 'tensorboard'}") == 1, err
    assert "metrics.jsonl holds the same numbers" in err


@needs_fashion
@pytest.mark.parametrize("signum", ["SIGINT", "SIGTERM"])
def test_ctrl_c_mid_step_stops_after_that_step_and_resumes_to_the_same_weights(tmp_path, monkeypatch, signum):
    """SIGINT (Ctrl-C) or SIGTERM (a scheduler's notice) arriving inside a forward pass (batch norms already
    updated) finishes the step, saves it, and the resumed run ends as the uninterrupted one, batch-norm
    statistics and counts included."""
    import os
    import signal

    import resnetlab.train as train_module

    signum = getattr(signal, signum)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    straight = train(tiny(tmp_path, "straight"))
    real_build = train_module.build_train_step

    def build_with_a_ctrl_c(model, *args, **kwargs):
        calls = []

        def hook(module, inputs, output):
            if module.training:
                calls.append(1)
                if len(calls) == 13:  # in the 13th training step, after layer1's batch norms ran
                    os.kill(os.getpid(), signum)

        model.layer1.register_forward_hook(hook)
        return real_build(model, *args, **kwargs)

    monkeypatch.setattr(train_module, "build_train_step", build_with_a_ctrl_c)
    with pytest.raises(Interrupted, match="stopped at step 13") as stopped:
        train(tiny(tmp_path, "resumed"))
    assert stopped.value.signum == signum
    # The command line exits as a shell counts a death by that signal: 130 for Ctrl-C, 143 for SIGTERM.
    from resnetlab.cli import main

    assert main(["train", "--model", "resnet8", "--limit-train", "512", "--limit-test", "64", "--batch-size", "64",
                 "--steps", "20", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "cli")]) == 128 + signum
    monkeypatch.undo()
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # the handlers before are back
    resumed = resume(tmp_path / "resumed", device="cpu", progress=False)
    assert resumed.steps == 20
    assert_same_weights(straight.run_dir, resumed.run_dir)




@needs_fashion
def test_a_keras_layout_net_refuses_images_of_another_size_before_writing_anything(tmp_path):
    with pytest.raises(ValueError, match="signs_resnet50 takes 64x64 images .*and fashion-mnist's are 28x28: add --image-size 64"):
        train(tiny(tmp_path, model="signs_resnet50", recipe="signs-adam"))
    assert not (tmp_path / "run").exists()
    assert create_model("signs_resnet50", layers=[1, 1, 1], widths=[8, 16, 32]).fixed_input_size == 32  # 2x2 after 4 halvings
    assert create_model("resnet50").fixed_input_size is None

@needs_fashion
def test_a_run_too_short_for_its_batch_norms_running_statistics_says_so(tmp_path, capsys):
    """Evaluation uses the running statistics, which a short run with Keras's momentum (0.01) leaves near
    their starting values: the notebook's net then scores near chance on the test set while training well."""
    from resnetlab.evaluate import evaluate_run, unsettled_statistics

    train(tiny(tmp_path, "short", steps=8, model_kwargs={"bn_momentum": 0.01}))
    note = capsys.readouterr().err
    # 0.99 ** 8 of the starting values are left; 0.001 needs log(0.001) / log(0.99) = 687.3 steps.
    assert "after 8 steps the batch norms' running statistics, which evaluation uses, still hold 92.3%" in note
    assert "(--recipe-arg precise_bn=200), use --model-arg bn_momentum=0.1, or train for 688 steps or more" in note
    # eval says it too, where the score is read.
    assert "note: after 8 steps the batch norms' running statistics" in evaluate_run(tmp_path / "short", device="cpu").text()
    train(tiny(tmp_path, "long", steps=66))  # PyTorch's 0.1 over 66 steps leaves 0.9 ** 66 = 0.096%
    assert "running statistics" not in capsys.readouterr().err
    assert "note:" not in evaluate_run(tmp_path / "long", limit_test=256, device="cpu").text()  # the run's own 256
    # Fine-tuned from weights, the statistics start from the trained ones, not from 0 and 1.
    train(tiny(tmp_path, "tuned", steps=2, weights=str(tmp_path / "long" / runs.WEIGHTS)))
    assert "running statistics" not in capsys.readouterr().err
    model = create_model("resnet8", num_classes=10, in_chans=1)
    assert unsettled_statistics(model, 65) is not None and unsettled_statistics(model, 66) is None


@needs_fashion
def test_precise_bn_recomputes_the_running_statistics_from_the_training_images(tmp_path, capsys):
    """--recipe-arg precise_bn=N: once training ends, the running statistics are the average over N training
    batches with the final weights. Over every image, unaugmented, the first batch norm's running mean is the
    mean of the first conv's output over the training set, by hand."""
    import gzip

    import numpy as np

    steps_per_epoch = 512 // 64
    result = train(tiny(tmp_path, steps=8, model_kwargs={"bn_momentum": 0.01},
                        recipe_overrides={"precise_bn": steps_per_epoch, "pad_crop": 0, "flip": False}))
    assert "running statistics" not in capsys.readouterr().err  # nothing left to warn of
    model, config = runs.load_model(result.run_dir)
    with gzip.open(FASHION / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 1, 28, 28)[:512]
    mean, std = (torch.tensor(config[k])[:, None, None] for k in ("mean", "std"))
    with torch.no_grad():
        conv1 = model.conv1((torch.from_numpy(images.copy()).float() / 255 - mean) / std)
    torch.testing.assert_close(model.bn1.running_mean, conv1.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert result.model.bn1.momentum == 0.01  # the trained model keeps its own momentum after the recomputation
    with pytest.raises(ValueError, match="precise-bn must be zero or more"):
        TrainConfig(recipe_overrides={"precise_bn": -1})


@needs_fashion
def test_a_diverging_run_stops_and_saves_no_nan(tmp_path):
    """A loss that is no longer a number stops the run with the reason, before NaN weights are saved;
    weights holding NaN (a run of an older version, a damaged file) are refused where they are loaded."""
    with pytest.raises(Diverged, match="the loss is nan in the epoch up to step 8 .*learning rate.*nothing was saved"):
        train(tiny(tmp_path, steps=16, lr=1e6))
    assert not (tmp_path / "run" / runs.WEIGHTS).exists() and not runs.read_metrics(tmp_path / "run", missing_ok=True)
    # Stopped mid-epoch (Ctrl-C, stop_at) after diverging: the good checkpoint of the epoch before stays.
    exploding = dict(steps=16, recipe_overrides={"schedule": "multistep", "milestones": [0.5], "gamma": 1e9})
    with pytest.raises(Diverged, match="in the epoch up to step 14 .*the run's last checkpoint, step 8, is kept"):
        train(tiny(tmp_path, "late", **exploding), stop_at=14)
    assert runs.load_checkpoint(tmp_path / "late")["step"] == 8
    runs.load_model(tmp_path / "late")  # its weights are finite
    result = train(tiny(tmp_path, "good", steps=8))
    weights = load_file(result.run_dir / runs.WEIGHTS)
    weights["layer1.0.bn1.running_var"][0] = float("nan")
    from safetensors.torch import save_file
    save_file(weights, result.run_dir / runs.WEIGHTS)
    with pytest.raises(runs.RunError, match="layer1.0.bn1.running_var holds values that are not finite numbers"):
        runs.load_model(result.run_dir)


@needs_fashion
def test_an_unreadable_file_met_in_an_epochs_evaluation_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    """The epoch's sums and metrics row are not yet written when its evaluation fails: the run stays at
    its last checkpoint, and resumed, ends as an uninterrupted run with every epoch's row."""
    import resnetlab.train as train_module
    from resnetlab.data import DataError

    straight = train(tiny(tmp_path, "straight", steps=24))
    calls, real_evaluate = [], train_module.evaluate

    def second_fails(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise DataError("photo.jpg is not a readable image")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train_module, "evaluate", second_fails)
    with pytest.raises(DataError, match="saved at step 8"):
        train(tiny(tmp_path, "resumed", steps=24))
    monkeypatch.undo()
    result = resume(tmp_path / "resumed", progress=False)
    assert [r["step"] for r in result.history] == [8, 16, 24]
    assert [r["train_loss"] for r in result.history] == [r["train_loss"] for r in straight.history]
    assert_same_weights(straight.run_dir, tmp_path / "resumed")


@needs_fashion
def test_a_damaged_checkpoint_or_config_is_one_readable_error(tmp_path):
    run_dir = train(tiny(tmp_path, steps=8)).run_dir
    checkpoint = torch.load(run_dir / runs.CHECKPOINT, weights_only=True)
    sums = dict(checkpoint["sums"])
    checkpoint["sums"] = {"loss": sums["loss"]}  # the right types, the wrong contents
    torch.save(checkpoint, run_dir / runs.CHECKPOINT)
    with pytest.raises(runs.RunError, match=r"is damaged: its epoch sums are loss, not correct, loss, seen"):
        resume(run_dir, progress=False)
    del checkpoint["optimizer"]
    checkpoint["step"] = "8"
    torch.save(checkpoint, run_dir / runs.CHECKPOINT)
    with pytest.raises(runs.RunError, match=r"not a resnetlab training checkpoint, or is damaged \(optimizer, step missing"):
        resume(run_dir, progress=False)
    config = runs.read_config(run_dir)
    (run_dir / runs.CONFIG).write_text("[1, 2]")
    with pytest.raises(runs.RunError, match="is not a resnetlab run's config"):
        runs.load_model(run_dir)
    del config["classes"]
    runs.write_json(run_dir / runs.CONFIG, config)
    with pytest.raises(runs.RunError, match="config \\(it has no classes\\)"):
        runs.load_model(run_dir)


@needs_fashion
def test_an_experiment_trains_a_diverging_variant_to_its_end(tmp_path):
    """The papers' failing variants are results: an experiment's run goes on past a non-finite loss. Its
    metrics stay JSON any reader parses (Python would write NaN, which JSON has not), the loss as null."""
    from resnetlab.experiments import train_or_reuse

    def strict(constant: str):
        raise ValueError(f"{constant} is not JSON")

    run_dir = train_or_reuse(tiny(tmp_path, steps=16, lr=1e6))
    rows = [json.loads(line, parse_constant=strict) for line in (run_dir / runs.METRICS).read_text().splitlines()]
    assert [r["step"] for r in rows] == [8, 16] and [r["train_loss"] for r in rows] == [None, None]
    assert all(0 <= r["train_acc"] <= 1 for r in rows) and runs.read_metrics(run_dir) == rows


@needs_fashion
def test_the_papers_warm_up_is_for_the_110_layer_nets_and_deeper(tmp_path):
    """He et al. 2015, Section 4.2: ResNet-110 starts at lr 0.01 (he2016: its first 400 iterations)."""
    for model, lr in (("resnet110", 0.01), ("resnet56", 0.1)):
        result = train(tiny(tmp_path, model, model=model, limit_train=32, limit_test=16, batch_size=16, steps=2,
                            recipe_overrides={"schedule": "constant"}))  # no step decay to mistake for the warm-up
        assert result.history[-1]["lr"] == pytest.approx(lr)


# ----------------------------------------------------------------------------- the Python API's checks


def test_train_config_takes_any_mapping_of_options(tmp_path):
    """Hydra's DictConfig, a MappingProxy: config.json gets a dict."""
    from types import MappingProxyType

    config = TrainConfig(model_kwargs=MappingProxyType({"zero_init_residual": True}), recipe_overrides=MappingProxyType({}))
    assert config.model_kwargs == {"zero_init_residual": True} and type(config.model_kwargs) is dict


def test_train_config_names_a_value_of_the_wrong_kind(tmp_path):
    for fields, message in [  # the wrong kind: TypeError, as Python and PyTorch raise
        ({"limit_train": "100"}, "limit_train must be a whole number or null, not '100'"),
        ({"seed": 1.5}, "seed must be a whole number, not 1.5"),
        ({"model_kwargs": [("order", "preact")]}, "model_kwargs must be a dict"),
        ({"device": 5}, "device must be text or a torch.device, not 5"),
        ({"out": 5}, "out must be text or a path or null, not 5"),
        ({"dataset": torch.zeros(100, 100)}, "^dataset must be text, not a Tensor$"),  # not all its numbers
    ]:
        with pytest.raises(TypeError, match=message):
            TrainConfig(**fields)
    for fields, message in [
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"eval_every": 0}, r"eval_every \(--eval-every\) must be at least 1"),
        # Out of range, named when made rather than when training starts.
        ({"limit_train": 0}, r"limit_train \(--limit-train\) must be at least 1, got 0"),
        ({"workers": -1}, r"workers \(--workers\) must be at least 0"),
        ({"image_size": 0}, r"image_size \(--image-size\) must be from 1 to 8,192 pixels, not 0"),
        ({"image_size": 100_000}, r"image_size \(--image-size\) must be from 1 to 8,192 pixels, not 100000"),
        ({"grad_norm_every": -5}, "grad_norm_every must be at least 0"),
        ({"lr": -0.1}, "lr must be positive and finite, got -0.1"),
        ({"steps": 0}, "steps must be positive"),
        ({"recipe": "he2015"}, "unknown recipe 'he2015'"),
        ({"recipe_overrides": {"momentum": -1}}, "momentum must be zero or more"),
    ]:
        with pytest.raises(ValueError, match=message):
            TrainConfig(**fields)
    with pytest.raises(WeightsError, match="weights must be a tag"):
        TrainConfig(weights=7)
    with pytest.raises(TypeError, match="train takes a TrainConfig, not dict"):
        train({"model": "resnet8"})
    # What Python users hand over for these fields becomes the text config.json keeps.
    import numpy as np
    import torchvision

    config = TrainConfig(model="resnet18", out=tmp_path / "r", data_dir=tmp_path, device=torch.device("cpu"),
                         seed=np.int64(4), weights=torchvision.models.ResNet18_Weights.DEFAULT)
    assert (config.out, config.data_dir, config.device) == (str(tmp_path / "r"), str(tmp_path), "cpu")
    assert type(config.seed) is int and config.seed == 4 and config.weights == "IMAGENET1K_V1"
    assert type(TrainConfig(lr=np.float64(0.1)).lr) is float
    assert TrainConfig(epochs=2).epochs == 2 and type(TrainConfig(epochs=2).epochs) is int
    with pytest.raises(WeightsError, match="weights of another model"):
        TrainConfig(model="resnet50", weights=torchvision.models.ResNet18_Weights.DEFAULT)


def test_devices_by_name_index_or_torch_device():
    from resnetlab.devices import pick_device

    assert pick_device(torch.device("cpu")) == pick_device("cpu") == torch.device("cpu")
    for wrong in ("gpu", "cpu:0", "cuda:x", "cuda:", "cuda:\u00b2"):  # a superscript two passes str.isdigit
        with pytest.raises(ValueError, match=f"unknown device '{wrong}'; choose from .*cuda:N"):
            pick_device(wrong)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda:1 was asked for, but PyTorch sees no CUDA GPU"):
            pick_device("cuda:1")
    else:
        count = torch.cuda.device_count()
        with pytest.raises(ValueError, match=f"this machine has {count} CUDA GPU"):
            pick_device(f"cuda:{count}")


def test_stop_at_a_step_that_never_comes_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="stop_at must be a step after 0"):
        train(tiny(tmp_path), stop_at=0)
    assert not (tmp_path / "run").exists()
    import numpy as np

    with pytest.raises(Interrupted):
        train(tiny(tmp_path), stop_at=np.int64(6))  # a NumPy step count is a step count
    before = (tmp_path / "run" / runs.CHECKPOINT).read_bytes()
    for stop_at in (2, 6):
        with pytest.raises(ValueError, match=r"stop_at must be a step after 6 \(the run stands at step 6\)"):
            resume(tmp_path / "run", device="cpu", progress=False, stop_at=stop_at)
    assert (tmp_path / "run" / runs.CHECKPOINT).read_bytes() == before


def test_resume_refuses_a_data_folder_that_does_not_exist_and_keeps_the_config(tmp_path):
    with pytest.raises(Interrupted):
        train(tiny(tmp_path), stop_at=6)
    config = (tmp_path / "run" / runs.CONFIG).read_text()
    from resnetlab.data import DataError

    with pytest.raises(DataError, match="nowhere is not a folder"):
        resume(tmp_path / "run", device="cpu", progress=False, data_dir=str(tmp_path / "nowhere"))
    assert (tmp_path / "run" / runs.CONFIG).read_text() == config
    # A folder without the dataset: another copy was read, but config.json would have named this one.
    (tmp_path / "photos").mkdir()
    with pytest.raises(DataError, match=f"fashion-mnist is not in --data-dir {tmp_path / 'photos'}: give the folder"):
        resume(tmp_path / "run", device="cpu", progress=False, data_dir=str(tmp_path / "photos"))
    assert (tmp_path / "run" / runs.CONFIG).read_text() == config


def test_the_result_holds_the_trained_model_ready_to_predict(tmp_path):
    result = train(tiny(tmp_path, steps=8))
    assert not result.model.training
    saved = load_file(tmp_path / "run" / runs.WEIGHTS)
    state = result.model.state_dict()
    assert saved.keys() == state.keys() and all(torch.equal(saved[k], state[k].contiguous()) for k in saved)
