"""Scoring a run on a test set: the numbers against a hand computation, the model's state, the report."""

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import resnetlab
from resnetlab.cli import main
from resnetlab.evaluate import EvalReport, EvalResult, eval_mode, evaluate
from resnetlab.runs import load_model
from resnetlab.train import TrainConfig, train

from conftest import fails_cleanly


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray, split: str) -> None:
    """One split as the MNIST family's gzipped IDX files."""
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / f"{split}-images-idx3-ubyte.gz", "wb") as f:
        f.write(struct.pack(">IIII", 0x803, *images.shape) + images.astype(np.uint8).tobytes())
    with gzip.open(folder / f"{split}-labels-idx1-ubyte.gz", "wb") as f:
        f.write(struct.pack(">II", 0x801, len(labels)) + labels.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def idx_run(tmp_path_factory):
    """A run of a few steps on small Fashion-MNIST-shaped files (203 test images: a partial last batch of 256)."""
    root = tmp_path_factory.mktemp("evaluate")
    rng = np.random.default_rng(0)
    for split, n in (("train", 128), ("t10k", 203)):
        labels = rng.integers(0, 10, n)
        images = rng.integers(0, 60, (n, 28, 28)) + 19 * labels[:, None, None]  # learnable: brightness is the class
        write_idx(root / "data", images, labels, split)
    run_dir = root / "run"
    train(TrainConfig(model="resnet8", data_dir=str(root / "data"), batch_size=32, steps=4, device="cpu",
                      out=str(run_dir), progress=False))
    return run_dir


def test_the_numbers_are_a_hand_computations_and_the_model_is_left_as_it_was():
    """Loss, accuracy, top-5 and confusion of 23 examples in batches of 10 (the last one partial), by hand;
    the model runs in eval mode without gradients, and its buffers and training mode are kept."""
    torch.manual_seed(0)
    logits, labels = torch.randn(23, 7), torch.randint(0, 7, (23,))
    seen = []

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.bn = nn.BatchNorm1d(7, eps=1e-12)  # not 0, which torch 2.11 refuses

        def forward(self, x):
            seen.append((self.training, torch.is_grad_enabled()))
            return self.bn(x)  # running statistics 0 and 1: the logits themselves

    model = Model().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = evaluate(model, [(logits[i:i + 10], labels[i:i + 10]) for i in range(0, 23, 10)], num_classes=7)

    assert set(seen) == {(False, False)} and model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert result.count == 23
    assert result.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-6)
    pred = logits.argmax(1)
    assert result.accuracy == pytest.approx((pred == labels).float().mean().item())
    assert result.top5 == pytest.approx((logits.topk(5, 1).indices == labels[:, None]).any(1).float().mean().item())
    confusion = np.zeros((7, 7), dtype=int)
    np.add.at(confusion, (labels.numpy(), pred.numpy()), 1)
    assert result.confusion == confusion.tolist()
    assert result.per_class_accuracy() == pytest.approx([row[i] / row.sum() for i, row in enumerate(confusion)])


def test_eval_mode_gives_back_each_modules_own_mode():
    """A model fine-tuned with some layers kept in eval mode (frozen batch norms) keeps them so after evaluation."""
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5)).train()
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False, True]
    evaluate(model, [(torch.randn(3, 4), torch.tensor([0, 1, 2]))], num_classes=4)
    assert [m.training for m in model.modules()] == [True, True, False, True]


def test_a_model_with_another_class_count_is_named_not_a_shape_error():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 10))
    batches = [(torch.zeros(3, 4), torch.tensor([0, 1, 2]))]
    with pytest.raises(ValueError, match=r"the model gives \(10,\) scores an image, not one for each of the 5 classes"):
        evaluate(model, batches, num_classes=5)
    assert evaluate(model, batches, num_classes=10).count == 3


def test_a_class_with_no_test_images_has_no_accuracy_rather_than_zero():
    """--limit-test can leave classes out: their accuracy is unknown (null in eval.json), not 0%, and the
    hardest classes listed for a many-class set are among those that were tested."""
    result = EvalResult(loss=1.0, accuracy=0.5, top5=None, confusion=[[1, 1, 0], [0, 0, 0], [0, 0, 0]])
    assert result.per_class_accuracy() == [0.5, None, None]
    report = EvalReport("run", "cifar10", ["a", "b", "c"], result, [])
    assert report.to_dict()["per_class_accuracy"] == {"a": 0.5, "b": None, "c": None}
    assert json.loads(json.dumps(report.to_dict()))["per_class_accuracy"]["b"] is None
    lines = report.text().splitlines()
    assert "  a  50.00%" in lines and "  b  no test images" in lines

    k = 30
    confusion = np.zeros((k, k), dtype=int)
    confusion[np.arange(12), np.arange(12)] = 2
    confusion[np.arange(12), (np.arange(12) + 1) % k] = np.arange(12) % 3  # class i: 2 right, i % 3 wrong
    many = EvalReport("run", "folder:x", [f"c{i}" for i in range(k)],
                      EvalResult(1.0, 0.8, 0.9, confusion.tolist()), [])
    text = many.text()
    assert "no test images" not in text and "c20" not in text
    assert "lowest per-class accuracies" in text and "  c2   50.00%" in text


def test_printed_and_written_results_agree_with_a_hand_computation_on_the_first_n(idx_run, tmp_path, capsys):
    """--limit-test N of a named dataset is its first N test images."""
    assert main(["eval", str(idx_run), "--limit-test", "77", "--device", "cpu", "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    written = json.loads((tmp_path / "eval.json").read_text())

    model, config = load_model(idx_run)
    data = Path(config["data_dir"] or "")
    with gzip.open(data / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 1, 28, 28)[:77]
    with gzip.open(data / "t10k-labels-idx1-ubyte.gz") as f:
        labels = torch.from_numpy(np.frombuffer(f.read()[8:], np.uint8)[:77].astype(np.int64))
    mean, std = (torch.tensor(config[k])[:, None, None] for k in ("mean", "std"))
    with torch.no_grad():
        logits = model((torch.from_numpy(images.copy()).float() / 255 - mean) / std)
    accuracy = (logits.argmax(1) == labels).float().mean().item()
    assert written["examples"] == 77 and sum(map(sum, written["confusion_matrix"])) == 77
    assert written["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert written["accuracy"] == pytest.approx(accuracy)
    assert written["error"] == pytest.approx(1 - accuracy)
    assert "(77 test images, one view: the whole image at 28x28)" in printed
    assert f"accuracy {written['accuracy']:.2%}  error {written['error']:.2%}  loss {written['loss']:.4f}" in printed
    assert f"top-5 accuracy {written['top5_accuracy']:.2%}" in printed
    for name, value in written["per_class_accuracy"].items():
        assert any(line.split() == [*name.split(), f"{value:.2%}"] for line in printed.splitlines() if value is not None)



def test_a_run_tested_on_its_first_n_says_so_when_eval_scores_all(idx_run, tmp_path, capsys):
    """eval scores the whole test set unless told: a run trained with --limit-test recorded scores of fewer
    images, and the difference between the two is said, with the flag that scores the run's own."""
    data_dir = load_model(idx_run)[1]["data_dir"]
    run = train(TrainConfig(model="resnet8", data_dir=data_dir, batch_size=32, steps=4, limit_test=50, device="cpu",
                            out=str(tmp_path / "run"), progress=False))
    assert main(["eval", str(run.run_dir), "--device", "cpu", "--out", str(tmp_path / "all")]) == 0
    said = capsys.readouterr().out
    assert "(203 test images" in said
    assert "note: the run was tested on 50 of these 203 test images (metrics.jsonl): --limit-test 50 scores the same ones" in said
    assert main(["eval", str(run.run_dir), "--limit-test", "50", "--device", "cpu", "--out", str(tmp_path / "own")]) == 0
    assert "--limit-test 50 scores" not in capsys.readouterr().out
    written = json.loads((tmp_path / "own" / "eval.json").read_text())
    assert written["accuracy"] == run.test_accuracy and written["step"] == 4  # the run's own number, of its last weights
    assert written["versions"] == {"resnetlab": resnetlab.__version__, "torch": torch.__version__}


def test_the_training_split_is_scored_on_the_images_the_run_trained_on(idx_run, tmp_path, capsys):
    """--split train: the run's training images, unaugmented (its limit_train's first N), by hand; written
    beside the test set's files, not over them."""
    model, config = load_model(idx_run)
    data = Path(config["data_dir"])
    with gzip.open(data / "train-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read()[16:], np.uint8).reshape(-1, 1, 28, 28)
    with gzip.open(data / "train-labels-idx1-ubyte.gz") as f:
        labels = torch.from_numpy(np.frombuffer(f.read()[8:], np.uint8).astype(np.int64))
    mean, std = (torch.tensor(config[k])[:, None, None] for k in ("mean", "std"))
    with torch.no_grad():
        logits = model((torch.from_numpy(images.copy()).float() / 255 - mean) / std)
    hits = logits.argmax(1) == labels

    limited = tmp_path / "limited"  # the same data, trained on its first 100 images
    train(TrainConfig(model="resnet8", data_dir=str(data), batch_size=32, steps=1, limit_train=100, device="cpu",
                      out=str(limited), progress=False))
    capsys.readouterr()
    for run, extra, n in ((idx_run, [], 128), (idx_run, ["--limit-test", "50"], 50), (limited, [], 100),
                          (limited, ["--limit-test", "120"], 100)):  # never images it did not train on
        out = tmp_path / f"out-{run.name}-{n}"
        assert main(["eval", str(run), "--split", "train", *extra, "--device", "cpu", "--out", str(out)]) == 0
        written = json.loads((out / "eval-train.json").read_text())
        assert written["split"] == "train" and written["examples"] == n and written["reference"] is None
        assert sorted(p.name for p in out.iterdir() if not p.name.startswith("confusion-train.")) == ["eval-train.json"]
        assert f"({n} training images, one view" in capsys.readouterr().out
        if run == idx_run:
            assert written["accuracy"] == pytest.approx(hits[:n].float().mean().item())
    fails_cleanly(capsys, "eval", "--pretrained", "resnet18", "--dataset", f"folder:{tmp_path}", "--split", "train",
                  "--device", "cpu", match="--split train scores a run's training images")
    fails_cleanly(capsys, "eval", idx_run, "--split", "train", "--dataset", "mnist", "--data-dir", data, "--device", "cpu",
                  match="--split train scores the images the run trained on, which are fashion-mnist's, not mnist's")

def test_a_named_dataset_with_other_classes_is_refused(idx_run, capsys):
    """A Fashion-MNIST run tested on MNIST (same size, same count, other classes) would score shoes as digits."""
    data = load_model(idx_run)[1]["data_dir"]
    fails_cleanly(capsys, "eval", idx_run, "--dataset", "mnist", "--data-dir", data, "--device", "cpu",
                  match="mnist's classes are not the run's ('0' where the run has 'T-shirt/top')")


def test_bad_inputs_are_one_line(idx_run, tmp_path, capsys):
    fails_cleanly(capsys, "eval", tmp_path / "nowhere", "--device", "cpu", match="is not a run directory")
    fails_cleanly(capsys, "eval", idx_run, "--limit-test", "0", "--device", "cpu", match="--limit-test must be positive")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for name in ("config.json", "model.safetensors"):
        (damaged / name).write_bytes((idx_run / name).read_bytes())
    (damaged / "model.safetensors").write_bytes(b"not a model")
    fails_cleanly(capsys, "eval", damaged, "--device", "cpu", match="is damaged or not a safetensors file")
    (tmp_path / "eval.json").write_text("{}")
    for source in ([idx_run], ["--pretrained", "resnet18", "--dataset", f"folder:{tmp_path}"]):
        fails_cleanly(capsys, "eval", *source, "--out", tmp_path / "eval.json", "--device", "cpu",
                      match=f"--out {tmp_path / 'eval.json'} is a file, not a folder: eval.json and the confusion "
                            "matrix are written into it")


def test_a_run_is_tested_on_its_own_named_dataset_whatever_it_calls_the_classes(idx_run, tmp_path, capsys):
    """An imported model given its own class names (SIGNS's digits as "zero", "one", ...) is tested on its dataset."""
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    config = json.loads((idx_run / "config.json").read_text())
    config["classes"] = [f"class {i}" for i in range(10)]
    (renamed / "config.json").write_text(json.dumps(config))
    (renamed / "model.safetensors").write_bytes((idx_run / "model.safetensors").read_bytes())
    assert main(["eval", str(renamed), "--device", "cpu"]) == 0
    assert "  class 0" in capsys.readouterr().out


def test_views_scored_until_an_error_leave_no_workers_behind(tmp_path):
    """The error's traceback, which a notebook keeps (sys.last_value), must not keep the decoding workers
    of the pass it stopped: a sweep collecting its failures ran out of processes and file descriptors."""
    import multiprocessing

    from conftest import noise_photos

    from resnetlab.data import get_dataset
    from resnetlab.evaluate import evaluate_views

    class Failing(nn.Module):
        def forward(self, x):
            raise ValueError("a bad argument found late")

    noise_photos(tmp_path, ("a", "b"), 40, lambda i: (20, 20))
    folder = get_dataset(f"folder:{tmp_path}", "train", image_size=16, val_fraction=0.0)
    before = set(multiprocessing.active_children())
    with pytest.raises(ValueError, match="found late") as kept:
        evaluate_views(Failing(), folder, [0.5] * 3, [0.25] * 3, 2, "scales", scales=[16], workers=2)
    assert set(multiprocessing.active_children()) - before == set()
    assert kept.value is not None  # still held, as the notebook holds it
