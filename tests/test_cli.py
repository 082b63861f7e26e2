"""The command line as a user meets it: train, eval, predict, and one clear line for every mistake."""

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from resnetlab.cli import main

from conftest import FASHION, fails_cleanly, run

needs_fashion = pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
QUICK = ["--model", "resnet8", "--limit-train", "256", "--limit-test", "200", "--batch-size", "64",
         "--steps", "8", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One quick run shared by the tests that read it."""
    if not FASHION.exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    run_dir = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *QUICK, "--out", str(run_dir)]) == 0
    return run_dir


def test_models_lists_every_name_with_parameters(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert "269,722" in lines["resnet20"] and "25,557,032" in lines["resnet50"]
    assert {"resnet1202", "plain110", "preact_resnet1001", "signs_resnet50", "preact_resnet152"} <= set(lines)
    assert "IMAGENET1K_V1, IMAGENET1K_V2" in lines["resnet50"] and "IMAGENET1K" not in lines["resnet56"]


def test_summary_prints_keras_totals(capsys):
    code, out, _ = run(capsys, "summary", "signs_resnet50")
    assert code == 0 and "Total params: 23,600,006" in out and "Multiply-accumulates" in out
    # One-channel images asked for: the named net is built for them (conv1 loses 2 x 144 weights).
    code, out, _ = run(capsys, "summary", "resnet20", "--input-size", "1", "28", "28")
    assert code == 0 and "Total params: 270,810" in out and "for one 1x28x28 input" in out
    # A side that would ask the allocator for 120 GB is refused by name.
    fails_cleanly(capsys, "summary", "resnet20", "--input-size", "3", "100000", "100000",
                  match="--input-size is channels, height and width, each at least 1 and the sides at most 8,192 pixels")
    # Keras's order: refused in words, not built as a 64-channel net that then fails inside torch.
    fails_cleanly(capsys, "summary", "signs_resnet50", "--input-size", "64", "64", "3",
                  match="--input-size is channels first, as PyTorch holds images: 3 64 64, not 64 64 3")



@needs_fashion
def test_train_says_which_recipe_it_trains_with(tmp_path, capsys):
    """Chosen by the model where no --recipe is given (signs_resnet50's is the notebook's): said first."""
    code, out, err = run(capsys, "train", *QUICK, "--out", tmp_path / "run")
    assert code == 0, err
    assert out.splitlines()[0] == ("resnet8, recipe fast: sgd (momentum 0.9, Nesterov) lr 0.1, batch 64, 8 steps, onecycle, "
                                   "wd 0.0005, pad 2 + crop + flip, label smoothing 0.1")

@needs_fashion
def test_train_eval_predict(trained, tmp_path, capsys):
    config = json.loads((trained / "config.json").read_text())
    assert config["model"] == "resnet8" and config["train_examples"] == 256

    code, out, _ = run(capsys, "eval", trained, "--device", "cpu")
    assert code == 0 and "accuracy" in out and "top-5" in out
    report = json.loads((trained / "eval.json").read_text())
    assert report["examples"] == 10_000
    assert len(report["confusion_matrix"]) == 10 and sum(map(sum, report["confusion_matrix"])) == 10_000
    assert report["error"] == pytest.approx(1 - report["accuracy"])
    matrix = np.array(report["confusion_matrix"])  # rows: the true class, as many as the test set has of each
    assert matrix.sum(1).tolist() == [1000] * 10 and report["accuracy"] == pytest.approx(np.trace(matrix) / 10_000)
    assert Image.open(trained / "confusion.png").size[0] > 200

    # The user's own images: any size and colour mode.
    rgb = tmp_path / "big.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8)).save(rgb)
    rgba = tmp_path / "alpha.png"
    Image.new("RGBA", (30, 30), (255, 0, 0, 128)).save(rgba)
    code, out, _ = run(capsys, "predict", trained, rgb, rgba, "--top-k", "2", "--device", "cpu")
    assert code == 0
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(rgb)) and lines[0].count("%") == 2

    code, out, _ = run(capsys, "plot", trained)
    assert code == 0
    with Image.open(trained / "curves.png") as image:
        assert image.format == "PNG"
    import csv

    with open(trained / "curves.csv", newline="") as f:
        plotted = list(csv.DictReader(f))
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert [int(r["step"]) for r in plotted] == [m["step"] for m in metrics] == [4, 8]  # 256 images, batches of 64
    assert [float(r["train_loss"]) for r in plotted] == pytest.approx([m["train_loss"] for m in metrics])
    assert [float(r["test_error"]) for r in plotted] == pytest.approx([100 * (1 - m["test_acc"]) for m in metrics])
    # The axis the figure is drawn against: matplotlib's SVG keeps each text as a comment beside its glyphs.
    assert "<!-- iterations -->" in (trained / "curves.svg").read_text()
    code, out, _ = run(capsys, "plot", trained, "--x", "epoch", "-o", trained / "by-epoch")
    svg = (trained / "by-epoch.svg").read_text()
    assert code == 0 and "<!-- epochs -->" in svg and "<!-- iterations -->" not in svg


def test_unknown_names_and_bad_values(capsys, tmp_path):
    fails_cleanly(capsys, "train", "--model", "resnet21", "--out", tmp_path / "a", match="unknown model 'resnet21'")
    fails_cleanly(capsys, "train", "--recipe", "quick", "--out", tmp_path / "b", match="unknown recipe 'quick'")
    fails_cleanly(capsys, "train", "--dataset", "imagenet", "--out", tmp_path / "c", match="imagenet")
    fails_cleanly(capsys, "train", "--epochs", "-1", "--out", tmp_path / "d", match="epochs must be positive")
    fails_cleanly(capsys, "train", "--seed", "-1", "--out", tmp_path / "e", match="seed (--seed) must be from 0 to 2**32 - 1")
    fails_cleanly(capsys, "summary", "resnet5O", match="did you mean")
    fails_cleanly(capsys, "eval", tmp_path / "nothing", match="not a run directory")
    assert not (tmp_path / "a").exists()  # nothing written for a bad request


@needs_fashion
def test_corrupt_dataset_files(capsys, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for f in FASHION.glob("*.gz"):
        shutil.copy(f, data / f.name)
    raw = gzip.decompress((data / "train-images-idx3-ubyte.gz").read_bytes())
    (data / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    fails_cleanly(capsys, "train", *QUICK, "--data-dir", data, "--out", tmp_path / "r", match="train-images-idx3-ubyte")


@needs_fashion
def test_predict_errors(trained, tmp_path, capsys):
    not_image = tmp_path / "notes.png"
    not_image.write_text("this is not an image")
    fails_cleanly(capsys, "predict", trained, not_image, match="notes.png")
    fails_cleanly(capsys, "predict", trained, tmp_path / "missing.png", match="missing.png")


@needs_fashion
def test_weights_of_another_model_are_refused(trained, tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", *QUICK, "--model", "resnet14", "--out", str(other)]) == 0
    capsys.readouterr()
    mixed = tmp_path / "mixed"
    shutil.copytree(trained, mixed)
    shutil.copy(other / "model.safetensors", mixed / "model.safetensors")
    fails_cleanly(capsys, "eval", mixed, "--device", "cpu", match="does not hold resnet8 weights")
    shutil.copy(other / "checkpoint.pt", mixed / "checkpoint.pt")
    fails_cleanly(capsys, "train", "--resume", mixed, "--device", "cpu", match="resnet14")


@needs_fashion
def test_existing_run_is_never_overwritten(trained, capsys):
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in trained.iterdir() if p.is_file()}
    fails_cleanly(capsys, "train", *QUICK, "--out", trained, match="already holds a run")
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in trained.iterdir() if p.is_file()}
    assert before == after


def test_debug_shows_the_traceback(capsys):
    with pytest.raises(Exception, match="unknown model"):
        main(["--debug", "summary", "resnet5O"])


def test_the_seed_notebook_workflow_on_signs_files(tmp_path, capsys):
    """signs_resnet50 with the notebook's Adam recipe on SIGNS h5 files, then a prediction."""
    h5py = pytest.importorskip("h5py")
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("test", 12)):
        with h5py.File(tmp_path / f"{split}_signs.h5", "w") as f:
            f[f"{split}_set_x"] = rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8)
            f[f"{split}_set_y"] = (np.arange(n) % 6).astype(np.int64)
            f["list_classes"] = np.arange(6)
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--model", "signs_resnet50", "--dataset", "signs", "--data-dir", tmp_path,
                         "--recipe", "signs-adam", "--steps", "2", "--device", "cpu", "--no-progress", "--out", run_dir)
    assert code == 0, err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["recipe"]["optimizer"] == "adam" and config["recipe"]["batch_size"] == 32
    assert (config["channels"], config["image_size"], config["classes"]) == (3, 64, ["0", "1", "2", "3", "4", "5"])
    photo = tmp_path / "hand.jpg"
    Image.fromarray(rng.integers(0, 256, (120, 90, 3), dtype=np.uint8)).save(photo)
    code, out, _ = run(capsys, "predict", run_dir, photo, "--device", "cpu")
    assert code == 0 and out.startswith(str(photo)) and out.count("%") == 3
    # Without --model: train's default, with a word on the notebook's net (a student expects that one).
    code, out, err = run(capsys, "train", "--dataset", "signs", "--data-dir", tmp_path, "--steps", "1", "--batch-size", "16", "--device", "cpu",
                         "--no-progress", "--out", tmp_path / "default")
    assert code == 0 and "note: resnet20 is train's default model; the notebook's net for SIGNS is --model signs_resnet50" in out, err
    assert "note: resnet20" not in run(capsys, "train", "--model", "resnet20", "--dataset", "signs", "--data-dir", tmp_path, "--batch-size", "16",
                                       "--steps", "1", "--device", "cpu", "--no-progress", "--out", tmp_path / "given")[1]


def test_debug_flag_works_after_the_command(capsys):
    with pytest.raises(Exception, match="unknown model"):
        main(["summary", "resnet5O", "--debug"])


CUDA_OOM = ("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB of which 1.25 GiB "
            "is free. Process 12 has 77.85 GiB memory in use. Of the allocated memory 76.10 GiB is allocated by PyTorch. "
            "If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True")


def test_running_out_of_memory_says_how_much_and_which_flag_needs_less(capsys, monkeypatch):
    import torch

    from resnetlab import cli

    code, _, err = run(capsys, "summary", "resnet20", "--num-classes", str(10**11))  # a 25.6 TB classifier
    assert code == 2 and err == "error: out of memory (tried to allocate 25,600.0 GB): a smaller --input-size (or --num-classes) needs less\n"

    def too_big(args):
        raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    def a_little_too_big(args):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 26214400 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setitem(cli.COMMANDS, "summary", a_little_too_big)
    code, _, err = run(capsys, "summary", "resnet20")
    assert err == "error: out of memory (tried to allocate 26 MB): a smaller --input-size (or --num-classes) needs less\n"

    monkeypatch.setitem(cli.COMMANDS, "train", too_big)
    code, _, err = run(capsys, "train", "--steps", "1")
    assert code == 2 and err == ("error: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.11 GiB "
                                 "of which 1.25 GiB is free: a smaller --batch-size (or --image-size) needs less\n")


def test_a_program_started_with_ctrl_c_ignored_keeps_it_ignored():
    """A background job (`resnetlab train ... &` from a script) starts with SIGINT ignored: run() leaves it so."""
    script = ("import atexit, signal, sys\n"
              "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
              "from resnetlab import cli\n"
              "atexit.register(lambda: print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN))\n"
              "sys.argv = ['resnetlab', 'models', 'resnet20']\n"
              "cli.run()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.endswith("True\n"), done.stdout + done.stderr


def test_a_ctrl_c_in_the_tear_down_ends_the_program_without_a_traceback():
    """The second Ctrl-C of an impatient user often lands in the interpreter's exit (torch's finalizers)."""
    script = ("import atexit, os, signal, sys\n"
              # As from a terminal: a background job (cmd &) starts with Ctrl-C ignored, and keeps it so.
              "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
              "from resnetlab import cli\n"
              "atexit.register(lambda: os.kill(os.getpid(), signal.SIGINT))\n"
              "sys.argv = ['resnetlab', 'models', 'resnet20']\n"
              "cli.run()\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == -2 and "resnet20" in done.stdout and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize(("rank", "said"), [("0", "stopped at step 3; continue with: resnetlab train --resume"), ("1", "")])
def test_a_stopped_run_is_reported_by_process_0_alone(rank, said, tmp_path, capsys, monkeypatch):
    """Under torchrun every process is stopped; one line, not one a process."""
    from resnetlab import cli
    from resnetlab.train import Interrupted

    def stopped(args):
        raise Interrupted(tmp_path, 3)

    monkeypatch.setitem(cli.COMMANDS, "models", stopped)
    monkeypatch.setenv("RANK", rank)
    code, out, err = run(capsys, "models")
    assert code == 130 and (said in err if said else err == ""), err


@needs_fashion
def test_resume_refuses_flags_it_would_ignore(trained, capsys):
    fails_cleanly(capsys, "train", "--resume", trained, "--epochs", "9", match="drop --epochs")
    # Written out, even with the default value (the run is resnet8; resnet20 is train's default model).
    fails_cleanly(capsys, "train", "--resume", trained, "--model", "resnet20", match="drop --model")
    fails_cleanly(capsys, "train", "--resume", trained, "--eval-every=1", match="drop --eval-every")
    # Abbreviated, as argparse allows, even to the default value (the run is on fashion-mnist, train's default).
    fails_cleanly(capsys, "train", "--resume", trained, "--datas", "fashion-mnist", match="drop --dataset (only")
    fails_cleanly(capsys, "train", "--resume", trained, "--limit-tr=256", "--ep", "9", match="drop --limit-train, --epochs (only")
    code, out, err = run(capsys, "train", "--resume", trained, "--dev", "cpu", "--no-prog")  # flags that may change
    assert code == 0 and "had already finished" in out, err


@pytest.mark.parametrize(("arg", "message"), [
    (["--recipe-arg", "nesterov=maybe"], "nesterov must be true or false, not 'maybe'"),
    (["--recipe-arg", "momentum=abc"], "momentum must be a number, not 'abc'"),
    (["--recipe-arg", "milestones=[0.3,abc]"], "milestones must be a list (a number each)"),
    (["--lr", "nan"], "lr must be positive and finite, got nan"),
    (["--weight-decay", "-1"], "weight-decay must be zero or more"),
    (["--epochs", "2"], "as steps or as epochs, not both"),
    (["--model-arg", "zero_init_residual=maybe"], "zero_init_residual must be true or false"),
    (["--model-arg", "scales=(0.5,)"], "scales must be a list of 2"),
    (["--model-arg", "shortcut_dropout=2"], "shortcut_dropout is a probability below 1"),
    (["--model-arg", "num_classes=5"], "num_classes comes from the dataset"),
    (["--limit-train", "50"], "batch size 64 (recipe fast) is larger than the 50 training examples; give --batch-size 50 or less"),
])
def test_options_of_the_wrong_kind_fail_before_anything_is_written(tmp_path, capsys, arg, message):
    fails_cleanly(capsys, "train", *QUICK, *arg, "--out", tmp_path / "run", match=message)
    assert not (tmp_path / "run").exists()


def test_options_are_read_as_json_or_as_python_writes_them(capsys):
    """`False` is false (not the text "False", which Python would take as true), `(0.5, 1)` a pair."""
    from resnetlab.cli import _key_value

    assert _key_value("stride_in_1x1=False") == ("stride_in_1x1", False)
    assert _key_value("flip=false") == ("flip", False)
    assert _key_value("scales=(0.5, 1)") == ("scales", [0.5, 1])
    assert _key_value("order=bn_after_add") == ("order", "bn_after_add")
    _, paper, _ = run(capsys, "summary", "resnet50", "--model-arg", "stride_in_1x1=True")
    _, torchvision_layout, _ = run(capsys, "summary", "resnet50", "--model-arg", "stride_in_1x1=False")
    assert "4,089,184,256" in torchvision_layout and "4,089,184,256" not in paper  # torchvision's 4.09 G multiply-adds


@needs_fashion
def test_progress_bars_show_on_a_terminal_and_stay_out_of_piped_logs(tmp_path, capsys, monkeypatch):
    quick = [a for a in QUICK if a != "--no-progress"]
    code, out, err = run(capsys, "train", *quick, "--out", tmp_path / "piped")
    assert code == 0 and "\r" not in err and "img/s" not in err, err
    assert "epoch 2/2" in out  # the per-epoch lines stay
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, _, err = run(capsys, "train", *quick, "--out", tmp_path / "terminal")
    assert code == 0 and "\r" in err and "img/s" in err, err


@needs_fashion
def test_recipe_args_reach_the_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", *QUICK, "--recipe-arg", "schedule=cosine", "--recipe-arg", "label_smoothing=0.2",
                         "--out", run_dir)
    assert code == 0, err
    recipe = json.loads((run_dir / "config.json").read_text())["recipe"]
    assert (recipe["schedule"], recipe["label_smoothing"]) == ("cosine", 0.2)
    fails_cleanly(capsys, "train", *QUICK, "--recipe-arg", "colour=red", "--out", tmp_path / "other", match="no field colour")
    assert not (tmp_path / "other").exists()


def test_folder_training_takes_workers_and_resume_may_change_them(tmp_path, capsys):
    for c, red in (("a", 200), ("b", 0)):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(8):
            Image.new("RGB", (12, 12), (red, i * 30, 0)).save(tmp_path / "photos" / c / f"{i}.png")
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--model", "resnet8", "--dataset", f"folder:{tmp_path / 'photos'}", "--image-size", 12,
                         "--workers", 0, "--steps", 4, "--batch-size", 4, "--device", "cpu", "--no-progress", "--out", run_dir)
    assert code == 0, err
    code, out, err = run(capsys, "train", "--resume", run_dir, "--workers", 1, "--no-progress")
    assert code == 0 and f"run directory: {run_dir}" in out, err
    fails_cleanly(capsys, "train", "--resume", run_dir, "--image-size", 16, match="only --device, --workers and --data-dir")


class _Exploit:
    """Unpickling this would create a file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@needs_fashion
def test_a_checkpoint_that_carries_code_is_refused_without_running_it(trained, tmp_path, capsys):
    import pickle

    mixed = tmp_path / "evil"
    shutil.copytree(trained, mixed)
    marker = tmp_path / "code-ran"
    (mixed / "checkpoint.pt").write_bytes(pickle.dumps({"model_name": "resnet8", "x": _Exploit(marker)}, protocol=2))
    fails_cleanly(capsys, "train", "--resume", mixed, "--device", "cpu", match="holds Python objects a training checkpoint "
                  "does not, which are not loaded (loading them could run code): not a checkpoint resnetlab wrote; the run's "
                  "model.safetensors")
    assert not marker.exists()


def test_python_dash_m_runs_the_same_command_line():
    import subprocess
    import sys

    ok = subprocess.run([sys.executable, "-m", "resnetlab", "models", "resnet20"], capture_output=True, text=True)
    assert ok.returncode == 0 and "269,722" in ok.stdout
    bad = subprocess.run([sys.executable, "-m", "resnetlab", "summary", "resnet9000x"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.startswith("error: ") and "Traceback" not in bad.stderr


@needs_fashion
def test_data_describes_a_named_dataset(capsys):
    assert main(["data", "fashion-mnist"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["train", "60,000", "images", "1x28x28", "uint8"]
    assert lines[2].split() == ["test", "10,000", "images", "1x28x28", "uint8"]
    assert lines[3].startswith("  10 classes, 6,000 training images each: T-shirt/top, Trouser")


@needs_fashion
def test_data_export_writes_a_folder_that_trains_with_the_same_pixels_and_labels(tmp_path, capsys):
    import torch

    from resnetlab.data import get_dataset

    out = tmp_path / "fm"
    assert main(["data", "fashion-mnist", "--export", str(out), "--limit-train", "40", "--limit-test", "15"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote 55 images to {out}")
    original = get_dataset("fashion-mnist", "train")
    exported = get_dataset(f"folder:{out}", "train")  # stored size and colours: 1x28x28
    assert exported.classes[0] == "0-T-shirt-top" and exported.classes[9] == "9-Ankle boot"
    assert len(exported) == 40 and sorted(p.name for p in tmp_path.iterdir()) == ["fm"]  # nothing partial left
    for path, label in exported.samples:
        n = int(path.stem)  # the image's place in the split
        assert label == int(original.labels[n])
        assert torch.equal(exported[exported.samples.index((path, label))][0], original.images[n])
    assert len(get_dataset(f"folder:{out}", "val")) == 15
    fails_cleanly(capsys, "data", "fashion-mnist", "--export", str(out), match="already exists; give a new folder")
    fails_cleanly(capsys, "data", f"folder:{out}", "--export", str(tmp_path / "again"), match="already a folder")
    fails_cleanly(capsys, "data", "fashion-mnist", "--limit-train", "5", match="go with --export")
    # Five images cannot hold all ten classes, and a folder dataset needs images in every class folder.
    (tmp_path / "few.partial").mkdir()
    (tmp_path / "few.partial" / "notes.txt").write_text("mine")
    fails_cleanly(capsys, "data", "fashion-mnist", "--export", str(tmp_path / "few"), "--limit-train", "5",
                  match="would hold none of class 1-Trouser, 2-Pullover, 4-Coat, 5-Sandal, 6-Shirt, ...: export more (--limit-train)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.partial", "fm"]
    assert (tmp_path / "few.partial" / "notes.txt").read_text() == "mine"  # a folder named like a partial export is left


def test_a_reader_that_stops_early_is_no_error():
    """`resnetlab models | head -1`: the listing goes on after the reader has gone; no error, no traceback."""
    # Unbuffered, as on a terminal: buffered, the whole listing (a few KB) fits the pipe before the reader goes.
    proc = subprocess.Popen([sys.executable, "-m", "resnetlab", "models"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout.readline().startswith(b"model ")
    proc.stdout.close()  # while the listing is still counting parameters, model by model
    assert proc.stderr.read() == b"" and proc.wait() == 1


def test_predict_a_folder_into_a_csv(trained_run, tmp_path, capsys):
    """Folders are expanded (subfolders too), decoded by workers a batch at a time, and the CSV holds
    what the printed answers say; a file that cannot be read is named, after the batches before it."""
    from resnetlab.data import load_split

    photos = tmp_path / "photos"
    (photos / "more").mkdir(parents=True)
    test = load_split("fashion-mnist", "test", None, limit=70, seed=0)
    for i, image in enumerate(test.images):
        Image.fromarray(image[0].numpy()).save(photos / ("more" if i % 2 else "") / f"{i:02d}.png")
    code, out, err = run(capsys, "predict", trained_run, photos, "--workers", "0", "--top-k", "2", "--device", "cpu")
    assert code == 0, err
    printed = [line.split(": ", 1) for line in out.splitlines()]
    assert len(printed) == 70 and printed[0][0] == str(photos / "00.png") and printed[35][0] == str(photos / "more" / "01.png")

    table = tmp_path / "answers.csv"
    code, out, err = run(capsys, "predict", trained_run, photos, "--workers", "2", "--top-k", "2", "--device", "cpu", "--csv", table)
    assert code == 0 and out.strip() == f"70 images classified: {table}", err
    import csv

    rows = list(csv.DictReader(table.open()))
    assert [r["path"] for r in rows] == [p for p, _ in printed]
    # --csv -: the same rows on standard output, for a pipe; the count goes to standard error.
    code, out, err = run(capsys, "predict", trained_run, photos, "--workers", "0", "--top-k", "2", "--device", "cpu", "--csv", "-")
    assert code == 0 and err.strip() == "70 images classified: -" and not Path("-").exists()
    assert list(csv.DictReader(out.splitlines())) == rows
    for row, (_, ranked) in zip(rows, printed):
        # The line's 28.2% may stand for the CSV's 0.281953: each rounded once from the same number, so
        # rounding the CSV's six decimals again is not the test; agreeing within the line's 0.05% is.
        (name_1, shown_1), (name_2, shown_2) = (part.rsplit(" ", 1) for part in ranked.split("  "))
        assert (name_1, name_2) == (row["class_1"], row["class_2"])
        for shown, saved in ((shown_1, row["probability_1"]), (shown_2, row["probability_2"])):
            assert abs(float(shown.rstrip("%")) / 100 - float(saved)) <= 0.0005 + 1e-6, (shown, saved)

    # Damaged photos among the others: each is named, every other image answered, and the run fails at the end.
    (photos / "more" / "zz.jpg").write_bytes(b"not a JPEG")  # the last file, in the second batch of 64
    (photos / "05a.png").write_bytes(b"")  # in the first batch
    code, out, err = run(capsys, "predict", trained_run, photos, "--device", "cpu", "--csv", table)
    lines = err.splitlines()
    assert code == 2 and len(lines) == 3, err
    assert "05a.png is not a readable image" in lines[0] and "zz.jpg is not a readable image" in lines[1]
    assert lines[2] == "error: 2 of the 72 images could not be classified (each named above); the other 70 were classified"
    assert [r["path"] for r in csv.DictReader(table.open())] == [p for p, _ in printed]
    code, out, err = run(capsys, "predict", trained_run, photos, "--device", "cpu", "--workers", "0", "--top-k", "2")
    assert code == 2 and [line.split(": ", 1) for line in out.splitlines()] == printed
    (photos / "05a.png").unlink()

    # No answer at all (a missing file, a bad first file): a CSV already there is left as it was.
    table.write_text("precious\n")
    for bad in (tmp_path / "missing.png", photos / "more" / "zz.jpg"):
        fails_cleanly(capsys, "predict", trained_run, bad, "--csv", table, match=bad.name)
        assert table.read_text() == "precious\n"

    # More classes asked for than the model has: every row has as many columns as the header.
    code, out, err = run(capsys, "predict", trained_run, photos / "00.png", "--top-k", "12", "--csv", table)
    assert code == 0, err
    rows = list(csv.reader(table.open()))
    assert len(rows[0]) == len(rows[1]) == 1 + 2 * 10


def test_a_run_on_a_relative_folder_is_evaluated_from_anywhere_and_another_folder_in_full(tmp_path, monkeypatch, capsys):
    """A run names its folder absolutely; `eval --dataset folder:OTHER` scores every image of OTHER,
    and the run's own folder only the tenth its training held out."""
    from conftest import noise_photos

    noise_photos(tmp_path / "work" / "photos", ["a", "b"], 20, lambda i: (12, 12))
    noise_photos(tmp_path / "other", ["a", "b"], 7, lambda i: (10, 14), seed=1)
    monkeypatch.chdir(tmp_path / "work")
    code, _, err = run(capsys, "train", "--dataset", "folder:photos", "--image-size", "8", "--model", "resnet8",
                       "--steps", "2", "--batch-size", "8", "--device", "cpu", "--out", "run", "--no-progress")
    assert code == 0, err
    monkeypatch.chdir(tmp_path)
    for argv, count in ((["work/run"], 4), (["work/run", "--dataset", "folder:work/photos"], 4),
                        (["work/run", "--dataset", f"folder:{tmp_path / 'other'}"], 14)):
        code, out, err = run(capsys, "eval", *argv, "--device", "cpu")
        assert code == 0, err
        assert f"({count} test images, one view: the whole image at 8x8)" in out.splitlines()[0]
    code, _, err = run(capsys, "train", "--resume", "work/run", "--device", "cpu", "--no-progress")
    assert code == 0, err
    # A folder whose classes are named otherwise would be scored against the wrong ones.
    shutil.copytree(tmp_path / "other", tmp_path / "renamed")
    (tmp_path / "renamed" / "a").rename(tmp_path / "renamed" / "z")
    fails_cleanly(capsys, "eval", "work/run", "--dataset", f"folder:{tmp_path / 'renamed'}", "--device", "cpu",
                  match="class folders are not the run's classes ('b' where the run has 'a'); name them as the run's (a, b) "
                        "or as `resnetlab data --export` does (0-a, 1-b)")

    # The folder moves (another machine, another disk): --data-dir tells a resume where, if it is the same data.
    (tmp_path / "work" / "photos").rename(tmp_path / "moved")
    fails_cleanly(capsys, "eval", "work/run", "--device", "cpu", match="eval RUN --data-dir NEW")
    code, out, err = run(capsys, "eval", "work/run", "--data-dir", tmp_path / "moved", "--device", "cpu")
    assert code == 0, err
    assert "(4 test images," in out.splitlines()[0], "the images training held out, not all 40"
    fails_cleanly(capsys, "train", "--resume", "work/run", "--data-dir", tmp_path / "other", match="not the same data")
    # The same classes and counts, but an image of each class swapped with one of the other: other data.
    shutil.copytree(tmp_path / "moved", tmp_path / "swapped")
    a, b = (sorted((tmp_path / "swapped" / c).iterdir())[0] for c in ("a", "b"))
    a.rename(tmp_path / "swapped" / "b" / f"from-a-{a.name}")
    b.rename(tmp_path / "swapped" / "a" / f"from-b-{b.name}")
    fails_cleanly(capsys, "train", "--resume", "work/run", "--data-dir", tmp_path / "swapped", match="other images or labels")
    code, _, err = run(capsys, "train", "--resume", "work/run", "--data-dir", tmp_path / "moved", "--no-progress")
    assert code == 0, err
    code, out, err = run(capsys, "eval", "work/run", "--device", "cpu")  # the run now names the new place
    assert code == 0 and f"folder:{tmp_path / 'moved'}" in out, err


@needs_fashion
def test_small_mistakes_get_one_clear_line(trained, tmp_path, capsys):
    (tmp_path / "afile.txt").write_text("keep me")
    fails_cleanly(capsys, "train", *QUICK, "--out", tmp_path / "afile.txt", match="is a file")
    assert (tmp_path / "afile.txt").read_text() == "keep me"
    fails_cleanly(capsys, "eval", tmp_path / "afile.txt", match="not a run directory (a file)")
    fails_cleanly(capsys, "summary", tmp_path, match="is a folder but not a run directory")
    fails_cleanly(capsys, "summary", tmp_path / "nosuch", match="nosuch is not a run directory (it does not exist)")
    # A run's model is built as its config says: 0 classes (no classifier) was ignored, being falsy.
    fails_cleanly(capsys, "summary", trained, "--num-classes", "0", match="is a run directory: its config.json says")
    fails_cleanly(capsys, "export", trained, "--format", "onnx", "-o", tmp_path / "model.h5", match="names a Keras file")
    fails_cleanly(capsys, "summary", "resnet21", match="6n+2 layers")
    fails_cleanly(capsys, "summary", "resnet20", "--model-arg", "colour=red", match="option colour; the options are")
    code, out, _ = run(capsys, "models", "resnet74")
    assert code == 0 and "resnet74: 1,144,666 parameters" in out  # 6*12+2 layers, built by depth


@needs_fashion
def test_a_home_folder_in_an_option_is_expanded(trained, tmp_path, monkeypatch, capsys):
    """--out=~/x reaches the program unexpanded (the shell expands ~ only at a word's start)."""
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "eval", trained, "--device", "cpu", "--limit-test", "50", "--out=~/evaluated")
    assert code == 0, err
    assert (tmp_path / "evaluated" / "eval.json").is_file() and not (tmp_path / "~").exists()


@needs_fashion
def test_eval_out_keeps_the_runs_own_evaluation_and_plot_out_writes_only_there(trained, tmp_path, capsys):
    assert run(capsys, "eval", trained, "--device", "cpu")[0] == 0
    before = (trained / "eval.json").read_bytes(), (trained / "confusion.png").read_bytes()
    code, out, err = run(capsys, "eval", trained, "--device", "cpu", "--limit-test", "50", "--out", tmp_path / "small")
    assert code == 0, err
    assert json.loads((tmp_path / "small" / "eval.json").read_text())["examples"] == 50
    code, out, err = run(capsys, "plot", trained, "-o", tmp_path / "curves")
    assert code == 0, err
    assert ((trained / "eval.json").read_bytes(), (trained / "confusion.png").read_bytes()) == before


@needs_fashion
def test_a_metrics_row_cut_short_by_a_kill_is_left_out(trained, tmp_path):
    from resnetlab.runs import read_metrics

    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    rows = read_metrics(run_dir)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "step"')  # the kill came mid-write
    assert read_metrics(run_dir) == rows
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write("\n")  # a whole line that is not JSON is still an error
    with pytest.raises(ValueError, match="not valid JSON"):
        read_metrics(run_dir)


def test_a_mistyped_option_gets_the_commands_usage_and_the_nearest_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "runs/r20", "shoe.png", "--topk", "5"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("usage: resnetlab predict") and err.rstrip().endswith("--topk 5 (did you mean --top-k?)")
    with pytest.raises(SystemExit):
        main(["train", "--modle", "resnet20"])
    assert "resnetlab train: error: unrecognized arguments: --modle resnet20 (did you mean --model?)" in capsys.readouterr().err


def _fashion_pngs(folder: Path, count: int) -> list[Path]:
    from resnetlab.data import load_split

    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{chr(ord('a') + i)}.png" for i in range(count)]
    for path, image in zip(paths, load_split("fashion-mnist", "test", None, limit=count, seed=0).images):
        Image.fromarray(image[0].numpy()).save(path)
    return paths


def test_predict_refuses_a_csv_that_would_overwrite_an_image(trained_run, tmp_path, capsys):
    """`predict RUN --csv *.png`: the shell gives --csv the first image, which once became CSV text."""
    a, b = _fashion_pngs(tmp_path, 2)
    before = a.read_bytes()
    fails_cleanly(capsys, "predict", trained_run, "--csv", a, b, "--device", "cpu", match=f"--csv {a} names an image file")
    odd = tmp_path / "scan.data"  # an image by its content, given by name: not to be written over either
    odd.write_bytes(before)
    fails_cleanly(capsys, "predict", trained_run, odd, "--csv", odd, "--device", "cpu", match="names an image file")
    assert a.read_bytes() == before and odd.read_bytes() == before and not list(tmp_path.glob("*.csv"))


def test_an_interrupted_predict_leaves_the_old_csv_whole(trained_run, tmp_path, capsys, monkeypatch):
    import resnetlab.predict

    images = _fashion_pngs(tmp_path / "photos", 3)
    table = tmp_path / "answers.csv"
    table.write_text("precious\n")
    real = resnetlab.predict.iter_predictions

    def interrupted(*args, **kwargs):
        answers = real(*args, **kwargs)
        yield next(answers)  # one answer written, then Ctrl-C
        raise KeyboardInterrupt

    monkeypatch.setattr(resnetlab.predict, "iter_predictions", interrupted)
    assert run(capsys, "predict", trained_run, *images, "--device", "cpu", "--csv", table)[0] == 130
    assert table.read_text() == "precious\n" and not list(tmp_path.glob(".*.tmp"))
    monkeypatch.undo()
    code, out, err = run(capsys, "predict", trained_run, *images, "--device", "cpu", "--csv", table)
    assert code == 0 and out == f"3 images classified: {table}\n", err
    assert len(table.read_text().splitlines()) == 4


def test_every_train_flag_reaches_the_trainer(monkeypatch, capsys, tmp_path):
    """Each flag lands in its TrainConfig field (the trainer's own tests take it from there)."""
    from types import SimpleNamespace

    import resnetlab.train

    given = []

    def fake_train(config):
        given.append(config)
        return SimpleNamespace(test=SimpleNamespace(accuracy=0.5), test_accuracy=0.5, steps=3, seconds=1.0,
                               run_dir=config.out, history=[])

    monkeypatch.setattr(resnetlab.train, "train", fake_train)
    assert main(["train", "--model", "resnet32", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path),
                 "--recipe", "he2016", "--steps", "3", "--batch-size", "16", "--lr", "0.05", "--weight-decay", "0.001",
                 "--limit-train", "64", "--limit-test", "32", "--image-size", "32", "--device", "cpu", "--seed", "7", "--data-seed", "5",
                 "--out", str(tmp_path / "r"), "--compile", "--no-cuda-graph", "--deterministic", "--eval-every", "2",
                 "--no-progress", "--workers", "0", "--model-arg", "order=preact", "--recipe-arg", "flip=false"]) == 0
    config = given[0]
    assert (config.model, config.dataset, config.data_dir, config.recipe) == ("resnet32", "fashion-mnist", str(tmp_path), "he2016")
    assert (config.steps, config.batch_size, config.lr, config.weight_decay) == (3, 16, 0.05, 0.001)
    assert (config.limit_train, config.limit_test, config.image_size, config.device, config.seed) == (64, 32, 32, "cpu", 7)
    assert config.data_seed == 5
    assert (config.out, config.compile, config.cuda_graph, config.deterministic) == (str(tmp_path / "r"), True, False, True)
    assert (config.eval_every, config.progress, config.workers) == (2, False, 0)
    assert config.model_kwargs == {"order": "preact"} and config.recipe_overrides == {"flip": False}
    assert "test accuracy 50.00%" in capsys.readouterr().out



def test_a_file_where_an_output_folder_should_be_is_said_plainly(tmp_path, capsys):
    """Python's "[Errno 17] File exists: 'x'" becomes the path, then what is wrong with it."""
    (tmp_path / "afile").write_text("mine")
    fails_cleanly(capsys, "diagram", "resnet8", "-o", tmp_path / "afile" / "d.svg",
                  match=f"{tmp_path / 'afile'} is a file, where a folder is needed. Nothing was written\n")
    assert (tmp_path / "afile").read_text() == "mine"


@needs_fashion
def test_names_that_are_not_utf8(trained, tmp_path, capsys):
    """Linux file names are bytes: a run directory or class folder whose name is no text is refused before
    anything is written (TensorBoard and config.json need text), and an image's name goes into a CSV as it came."""
    bad = os.fsdecode(b"bad\xff")
    fails_cleanly(capsys, "train", *QUICK, "--out", tmp_path / bad, match="has a name that is not text (UTF-8): give another")
    assert not (tmp_path / bad).exists()
    # Without --out the run directory is named after the dataset: refused too, before runs/ gets one.
    fails_cleanly(capsys, "train", *QUICK, "--dataset", f"folder:{tmp_path / bad}", match="has a name that is not text (UTF-8): rename it")

    for name in (bad, "cat"):
        (tmp_path / "folder" / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "folder" / name / "0.png")
    fails_cleanly(capsys, "data", f"folder:{tmp_path / 'folder'}", match="the class folder 'bad\ufffd' has a name that is not text")

    image = tmp_path / "folder" / bad / "0.png"
    code, out, err = run(capsys, "predict", trained, image, "--csv", tmp_path / "answers.csv")
    assert code == 0, err
    assert os.fsencode(image) in (tmp_path / "answers.csv").read_bytes().splitlines()[1]
    code, out, err = run(capsys, "predict", trained, image)  # on a terminal, a stand-in for the odd byte
    assert code == 0 and out.startswith(f"{tmp_path / 'folder' / 'bad'}\ufffd/0.png: "), err


def test_an_out_that_holds_a_run_is_refused_before_the_data_are_read(trained_run, tmp_path, capsys):
    """Reading the data, and their statistics' worker processes, take seconds to minutes on a big folder."""
    fails_cleanly(capsys, "train", "--dataset", f"folder:{tmp_path / 'not-here'}", "--out", trained_run, "--device", "cpu",
                  match=f"{trained_run} already holds a run; continue it with --resume")


@needs_fashion
def test_a_model_of_your_own_is_trained_and_evaluated_through_import(tmp_path):
    """A researcher's block, registered by a module of theirs: each command that builds the model needs the
    module imported first, and one that does not have it says how."""
    (tmp_path / "myblocks.py").write_text(
        "from resnetlab.blocks import BasicBlock\n"
        "from resnetlab.models import cifar_resnet, register_model\n\n\n"
        "class ScaledBlock(BasicBlock):\n"
        "    pass\n\n\n"
        "@register_model\n"
        "def scaled_resnet8(**kwargs):\n"
        "    return cifar_resnet(8, block=ScaledBlock, **kwargs)\n")

    def resnetlab_(*argv):  # in a process of its own: the registration stays out of this one's registry
        return subprocess.run([sys.executable, "-m", "resnetlab", *map(str, argv)], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)

    done = resnetlab_("--import", "myblocks", "train", "--model", "scaled_resnet8", "--steps", "4", "--limit-train", "256",
                      "--limit-test", "64", "--device", "cpu", "--no-progress", "--out", "run")
    assert done.returncode == 0, done.stderr
    done = resnetlab_("eval", "run", "--device", "cpu")
    assert done.returncode == 2 and done.stderr == (
        "error: the run's model 'scaled_resnet8' is none of resnetlab's: if your own code registers it (register_model), "
        "import that code first (resnetlab --import MODULE COMMAND ..., or import it in Python)\n")
    done = resnetlab_("--import", "myblocks", "eval", "run", "--device", "cpu")
    assert done.returncode == 0 and "accuracy" in done.stdout, done.stderr
    done = resnetlab_("--import", "my_blocks", "models")
    assert done.returncode == 2 and done.stderr == "error: --import my_blocks: No module named 'my_blocks'\n"

    # A run stopped part way names the module in the command that continues it; that command works.
    script = ("import myblocks\n"
              "from resnetlab.train import Interrupted, train\n"
              "try:\n"
              "    train(model='scaled_resnet8', steps=4, limit_train=256, limit_test=64, device='cpu', progress=False,\n"
              "          out='stopped', stop_at=2)\n"
              "except Interrupted as e:\n"
              "    print(e)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.stdout == "stopped at step 2; continue with: resnetlab --import myblocks train --resume stopped\n", done.stderr
    done = resnetlab_(*done.stdout.split("continue with: resnetlab ")[1].split())
    assert done.returncode == 0 and "(4 steps" in done.stdout, done.stderr


def test_a_runs_diagram_is_titled_by_its_folder_and_counts_its_input_channels(trained, tmp_path, capsys):
    out = tmp_path / "d.svg"
    code, _, err = run(capsys, "diagram", str(trained.resolve()), "-o", out)
    assert code == 0, err
    svg = out.read_text()
    # The figure may be shared: its title names the run's folder, not where it lies on this machine.
    assert "resnet8 (run)" in svg and str(trained.parent) not in svg
    assert "input, 1 channel, 28×28<" in svg  # Fashion-MNIST: one channel (not "1 channels"), the run's side
    assert "stage 3 (7×7)" in svg
