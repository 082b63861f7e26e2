"""Keras models in the seed notebook's layout, read into signs_resnet50: predictions equal Keras's."""

import hashlib
import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab
from resnetlab.keras_weights import KERAS_APPLICATIONS, KerasError, read_keras
from resnetlab.pretrained import WeightsError
from resnetlab.runs import load_model

from conftest import FASHION, fails_cleanly, run

HERE = Path(__file__).parent
TF_KERAS2 = HERE / "fixtures" / "notebook_tf_keras2.h5"  # written by fixtures/make_keras_fixture.py
SMALL = {"layers": [1, 2, 1, 1], "widths": [4, 8, 16, 32]}


@pytest.fixture(scope="module")
def keras3(tmp_path_factory) -> Path:
    """Files that Keras 3 itself writes (see keras_notebook.write_keras3_files)."""
    if importlib.util.find_spec("keras") is None:  # not imported here: Keras would pick its backend for the tests' process
        pytest.skip("Keras 3 is not installed (pip install keras)")
    out = tmp_path_factory.mktemp("keras3")
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import keras_notebook; keras_notebook.write_keras3_files({str(out)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    return out


def probabilities(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    """The model's softmax for uint8 (N, H, W, C) images scaled to 0-1, as the notebook feeds them."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        return torch.softmax(model.eval()(x), 1).numpy()


def logits_of(keras, images: np.ndarray) -> np.ndarray:
    """What resnetlab's model read from a Keras file answers for uint8 (N, H, W, C) images, normalised
    as the run would normalise them."""
    model = resnetlab.create_model(keras.model, **keras.model_kwargs)
    model.load_state_dict(keras.state_dict)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(keras.mean)[:, None, None], torch.tensor(keras.std)[:, None, None]
    with torch.no_grad():
        return model.eval()((x - mean) / std).numpy()


def test_a_tf_keras2_file_predicts_what_keras_predicts():
    """The format of the notebook's own resnet50.h5: layers named conv2d_N, a block's shortcut listed
    between its main-path layers, batch norms called with training=True."""
    expected = np.load(TF_KERAS2.with_suffix(".npz"))
    keras = read_keras(TF_KERAS2)
    assert keras.model_kwargs == {"layers": [1, 2, 1, 1], "widths": [2, 4, 8, 16]}
    assert keras.image_size == 64 and keras.keras_version == str(expected["keras_version"])
    assert len(keras.batch_stats) == 5 * 3 + 4  # every block's BN and every shortcut's; not the stem's
    model = resnetlab.create_model("signs_resnet50", **keras.model_kwargs)
    model.load_state_dict(keras.state_dict)
    np.testing.assert_allclose(probabilities(model, expected["images"]), expected["probs"], rtol=1e-4, atol=1e-7)
    # The check bites: the first block's last conv and its shortcut conv have the same shape here,
    # and swapping them (with their batch norms) moves the answers far beyond the tolerance.
    state = dict(keras.state_dict)
    for last, shortcut in (("conv3", "downsample.0"), ("bn3", "downsample.1")):
        for name in ("weight", "bias"):
            a, b = f"layer1.0.{last}.{name}", f"layer1.0.{shortcut}.{name}"
            assert state[a].shape == state[b].shape
            state[a], state[b] = state[b], state[a]
    model.load_state_dict(state)
    assert not np.allclose(probabilities(model, expected["images"]), expected["probs"], rtol=1e-2, atol=1e-4)


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_keras3_files_predict_what_keras_predicts(keras3, suffix):
    expected = np.load(keras3 / "predictions.npz")
    model = resnetlab.create_model("signs_resnet50", weights=str(keras3 / f"small{suffix}"), **SMALL)
    np.testing.assert_allclose(probabilities(model, expected["images"]), expected["small_probs"], rtol=1e-4, atol=1e-7)


def test_the_full_size_notebook_model(keras3):
    """The notebook's ResNet50 itself: signs_resnet50 with no arguments, Keras's parameter count."""
    expected = np.load(keras3 / "predictions.npz")
    keras = read_keras(keras3 / "full.keras")
    assert keras.model_kwargs == {}
    assert sum(t.numel() for k, t in keras.state_dict.items() if not k.endswith("num_batches_tracked")) == expected["full_count"] == 23_600_006
    model = resnetlab.create_model("signs_resnet50", weights=str(keras3 / "full.keras"))
    np.testing.assert_allclose(probabilities(model, expected["images"]), expected["full_probs"], rtol=1e-4, atol=1e-7)


def test_an_import_whose_config_cannot_be_written_leaves_no_weights_behind(tmp_path, capsys, monkeypatch):
    """Weights without their config.json are no run, and the same import into that folder refused them."""
    from resnetlab import runs

    def full_disk(path, data):
        raise runs.RunError(f"could not write {path} (No space left on device); is the disk full? Nothing was written")

    monkeypatch.setattr(runs, "write_json", full_disk)
    fails_cleanly(capsys, "import", TF_KERAS2, "--out", tmp_path / "run", match="config.json (No space left on device)")
    assert not any((tmp_path / "run").iterdir())
    monkeypatch.undo()
    assert run(capsys, "import", TF_KERAS2, "--out", tmp_path / "run")[0] == 0  # once there is room


def test_import_writes_a_run_that_eval_predict_and_export_take(tmp_path, capsys):
    """resnetlab import, then the commands every run takes: predict's probabilities are Keras's, and
    eval's loss on SIGNS-format files is Keras's cross-entropy."""
    expected = np.load(TF_KERAS2.with_suffix(".npz"))
    images, probs = expected["images"], expected["probs"]
    run_dir = tmp_path / "notebook"
    code, out, err = run(capsys, "import", TF_KERAS2, "--out", run_dir)
    assert code == 0, err
    assert "19 of its batch norms were called with training=True" in out

    paths = []
    for i, image in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    code, out, err = run(capsys, "predict", run_dir, *paths, "--top-k", "6", "--device", "cpu")
    assert code == 0, err
    for line, p in zip(out.splitlines(), probs, strict=True):
        shown = dict(zip(line.split()[1::2], line.split()[2::2]))
        assert set(shown) == {str(c) for c in range(6)}
        for c in range(6):  # Keras's float sums and PyTorch's round apart near x.x5%: within the printed digit
            assert abs(float(shown[str(c)].rstrip("%")) - 100 * p[c]) <= 0.05 + 1e-4, (c, shown[str(c)], p[c])

    labels = np.array([0, 2, 3])
    for split in ("train", "test"):
        with h5py.File(tmp_path / f"{split}_signs.h5", "w") as f:
            f[f"{split}_set_x"], f[f"{split}_set_y"], f["list_classes"] = images, labels, np.arange(6)
    code, out, err = run(capsys, "eval", run_dir, "--data-dir", tmp_path, "--device", "cpu")
    assert code == 0, err
    report = json.loads((run_dir / "eval.json").read_text())
    assert report["loss"] == pytest.approx(-np.log(probs[np.arange(3), labels]).mean(), abs=1e-5)
    assert report["accuracy"] == pytest.approx((probs.argmax(1) == labels).mean())
    # Imported with --data-dir, as a trained run records where its data is: eval needs no --data-dir then.
    code, out, err = run(capsys, "import", TF_KERAS2, "--out", tmp_path / "told", "--data-dir", tmp_path)
    assert code == 0, err
    code, out, err = run(capsys, "eval", tmp_path / "told", "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "told" / "eval.json").read_text())["loss"] == report["loss"]
    code, out, err = run(capsys, "import", TF_KERAS2, "--out", tmp_path / "nowhere", "--data-dir", tmp_path / "none")
    assert code == 2 and "--data-dir " in err and "is not a folder" in err and not (tmp_path / "nowhere" / "config.json").exists()

    pytest.importorskip("onnxruntime")
    from resnetlab.export import MIN_TORCH, exporter_ready

    if not exporter_ready():
        pytest.skip(f"the rest exports to ONNX, which needs torch {MIN_TORCH} or later")
    code, out, err = run(capsys, "export", run_dir)  # checks ONNX Runtime's output against PyTorch's
    assert code == 0, err


def test_fine_tuning_from_a_keras_file_scales_inputs_as_the_notebook(tmp_path, capsys, keras3):
    images = np.load(keras3 / "predictions.npz")["images"]
    for split in ("train", "test"):
        with h5py.File(tmp_path / f"{split}_signs.h5", "w") as f:
            f[f"{split}_set_x"], f[f"{split}_set_y"], f["list_classes"] = np.repeat(images, 4, 0), np.arange(12) % 6, np.arange(6)
    code, out, err = run(capsys, "train", "--model", "signs_resnet50", "--model-arg", "layers=[1,2,1,1]",
                         "--model-arg", "widths=[4,8,16,32]", "--weights", keras3 / "small.keras", "--dataset", "signs",
                         "--data-dir", tmp_path, "--steps", "1", "--batch-size", "4", "--device", "cpu", "--no-progress", "--out", tmp_path / "run")
    assert code == 0, err
    model, config = load_model(tmp_path / "run")
    assert config["mean"] == [0.0] * 3 and config["std"] == [1.0] * 3


def test_files_that_cannot_be_read(tmp_path, keras3, capsys):
    with pytest.raises(KerasError, match="weights without the model's graph.*model.save"):
        read_keras(keras3 / "small.weights.h5")
    with pytest.raises(KerasError, match="layer 'conv2d[_0-9]*' is a Conv2D .*where ZeroPadding2D"):
        read_keras(keras3 / "other.keras")
    signs = tmp_path / "train_signs.h5"
    with h5py.File(signs, "w") as f:
        f["train_set_x"] = np.zeros((1, 64, 64, 3), np.uint8)
    with pytest.raises(KerasError, match="not a Keras model"):
        read_keras(signs)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(TF_KERAS2.read_bytes()[:5000])
    with pytest.raises(KerasError, match="not a model file saved whole by Keras"):
        read_keras(broken)
    with pytest.raises(WeightsError, match=r"small.keras \(Keras: signs_resnet50 .*layers.*\) does not hold signs_resnet50 "
                                           r"weights.*it fits create_model\('signs_resnet50', layers="):
        resnetlab.create_model("signs_resnet50", weights=str(keras3 / "small.keras"))
    with pytest.raises(WeightsError, match="epsilon 0.001: build the model with bn_eps=0.001"):
        resnetlab.create_model("signs_resnet50", weights=str(keras3 / "small.keras"), bn_eps=1e-5, **SMALL)

    run_dir = tmp_path / "run"
    assert run(capsys, "import", TF_KERAS2, "--out", run_dir)[0] == 0
    weights = (run_dir / "model.safetensors").read_bytes()
    code, out, err = run(capsys, "import", keras3 / "small.keras", "--out", run_dir)
    assert code == 2 and err.count("\n") == 1 and "already holds a run" in err
    assert (run_dir / "model.safetensors").read_bytes() == weights
    code, out, err = run(capsys, "import", broken, "--out", tmp_path / "new")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and not (tmp_path / "new").exists()
    code, out, err = run(capsys, "import", TF_KERAS2, "--out", tmp_path / "named", "--classes", "a,b")
    assert code == 2 and "2 class names given for a model with 6 outputs" in err
    for flags, message in ((["--classes", "a,a,b,c,d,e"], "distinct and not empty"),
                           (["--dataset", "bogus"], "unknown dataset 'bogus'"),
                           (["--dataset", f"folder:{tmp_path / 'nowhere'}"], "nowhere does not exist")):
        code, out, err = run(capsys, "import", TF_KERAS2, "--out", tmp_path / "refused", *flags)
        assert code == 2 and err.count("\n") == 1 and message in err and not (tmp_path / "refused").exists()
    # A model without a checkpoint says how to train it further, not "train again with --out".
    code, out, err = run(capsys, "train", "--resume", run_dir)
    assert code == 2 and "--weights " + str(run_dir / "model.safetensors") in err


def test_a_model_of_other_than_one_or_three_channels_is_refused(keras3, tmp_path, capsys):
    """A 4-channel Keras Applications model was imported with a mean of 4 values and a std of 3, and a
    4-channel notebook model as a run that predict feeds RGB; both layouts are refused by name."""
    code = (f"import os, sys; sys.path.insert(0, {str(HERE)!r}); os.environ['KERAS_BACKEND'] = 'torch'\n"
            "import keras, keras_notebook\n"
            f"keras.applications.ResNet50(weights=None, input_shape=(32, 32, 4), classes=3).save({str(tmp_path / 'app.keras')!r})\n"
            f"keras_notebook.ResNet50(keras, input_shape=(64, 64, 4), width=4, layers=(1, 2, 1, 1)).save({str(tmp_path / 'nb.keras')!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    for name in ("app.keras", "nb.keras"):
        with pytest.raises(KerasError, match=f"{name}: the model takes images of 4 channels; .* 1 \\(grayscale\\) or 3 \\(RGB\\)"):
            read_keras(tmp_path / name)
    code, out, err = run(capsys, "import", tmp_path / "app.keras", "--out", tmp_path / "run")
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1 and "4 channels" in err
    assert not (tmp_path / "run").exists()


def rezipped(source: Path, out: Path, edit) -> Path:
    """``source``, a .keras archive, written to ``out`` with ``edit(name, data)`` applied to each member."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            dst.writestr(item, edit(item.filename, src.read(item)))
    return out


def test_a_lambda_layer_is_refused_without_its_bytecode_and_odd_json_is_named(tmp_path, keras3):
    def lambda_first(name: str, data: bytes) -> bytes:
        if name != "config.json":
            return data
        config = json.loads(data)
        layer = next(e for e in config["config"]["layers"] if e["class_name"] == "ZeroPadding2D")
        # As Keras stores `Lambda(lambda t: t * 2)`: the function's marshalled bytecode.
        layer["class_name"] = "Lambda"
        layer["config"] = {"name": layer["config"]["name"], "function": {"class_name": "__lambda__",
                           "config": {"code": "4wEAAAAAAAAAAAAAAAIAAAATAAAA8wwAAACXAHwAZAF6BQAAUwA="}}}
        return json.dumps(config).encode()

    lambda_file = rezipped(keras3 / "small.keras", tmp_path / "lambda.keras", lambda_first)
    with pytest.raises(KerasError, match="is a Lambda") as err:
        read_keras(lambda_file)
    assert "4wEAAAAA" not in str(err.value) and "__lambda__" not in str(err.value)
    listed = rezipped(keras3 / "small.keras", tmp_path / "list.keras",
                      lambda name, data: b"[]" if name == "metadata.json" else data)
    with pytest.raises(KerasError, match=r"list.keras is not a model file saved whole by Keras \(AttributeError"):
        read_keras(listed)


def test_damaged_or_edited_weights_are_refused_in_one_line(tmp_path):
    """A NaN among the weights, or a tensor whose shape the config does not give (checked on shapes alone,
    before a layer of the config's size is built)."""
    for name, spoil in (("nan", lambda k: k.__setitem__((0, 0, 0, 0), np.nan)), ("wider", None)):
        copy = tmp_path / f"{name}.h5"
        copy.write_bytes(TF_KERAS2.read_bytes())
        with h5py.File(copy, "r+") as f:
            kernel_path = next(p for p in _datasets(f["model_weights"]) if p.endswith("kernel:0") and f["model_weights"][p].ndim == 4)
            kernel = f["model_weights"][kernel_path][...]
            del f["model_weights"][kernel_path]
            if spoil:
                spoil(kernel)
            else:
                kernel = np.concatenate([kernel, kernel[..., :1]], axis=-1)  # one filter more than the config says
            f["model_weights"][kernel_path] = kernel
        with pytest.raises(KerasError, match="not finite numbers" if spoil else "in the file, but the model its config describes"):
            read_keras(copy)


def _datasets(group) -> list[str]:
    """Every dataset's path under an h5py group."""
    found = []
    group.visititems(lambda name, item: found.append(name) if isinstance(item, h5py.Dataset) else None)
    return found


@pytest.fixture()
def keras_home(keras3, tmp_path, monkeypatch) -> Path:
    """Keras's cache with the ResNet50 weights file in it, as keras.applications leaves it."""
    models = tmp_path / "keras" / "models"
    models.mkdir(parents=True)
    stand_in = keras3 / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    (models / stand_in.name).symlink_to(stand_in)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    # The stand-in is no published file: the cache takes a file whose MD5 is the one Keras checks.
    monkeypatch.setitem(KERAS_APPLICATIONS, "resnet50", (stand_in.name, hashlib.md5(stand_in.read_bytes()).hexdigest()))
    return models


def test_keras_applications_weights_predict_what_keras_predicts(keras3, keras_home):
    """resnet50 with weights="KERAS": the paper's layout with conv biases, fed RGB pixels normalised as
    Keras's BGR "caffe" preprocessing does, answers as keras.applications.ResNet50."""
    from resnetlab.pretrained import load_published

    expected = np.load(keras3 / "predictions.npz")
    model, config = load_published("resnet50:KERAS")
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[0].conv2.stride == (1, 1)  # stride on the 1x1
    assert model.conv1.bias is not None and model.bn1.eps == 1.001e-5
    assert config["classes"][:2] == ["tench", "goldfish"] and config["published_by"] == "Keras Applications"
    # Measured as the released Caffe models were: the centre 224 crop of the image resized to 256 (shorter side).
    assert (config["resize_size"], config["image_size"]) == (256, 224)
    x = torch.from_numpy(expected["photos"]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(config["mean"])[:, None, None], torch.tensor(config["std"])[:, None, None]
    logits = expected["applications_logits"]
    tolerance = dict(rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    with torch.no_grad():
        np.testing.assert_allclose(model((x - mean) / std).numpy(), logits, **tolerance)
        # The check bites: conv1's colour filters left in Keras's BGR order give other answers.
        model.conv1.weight.copy_(model.conv1.weight.flip(1))
        assert not np.allclose(model((x - mean) / std).numpy(), logits, **tolerance)


def test_keras_applications_weights_fine_tune_and_download(keras3, keras_home, tmp_path, monkeypatch, capsys):
    code, out, err = run(capsys, "models")
    assert any(line.startswith("resnet50 ") and "KERAS" in line for line in out.splitlines())
    grey = resnetlab.create_model("resnet50", num_classes=10, in_chans=1, weights="KERAS")
    assert grey.conv1.weight.shape[1] == 1 and grey.fc.out_features == 10
    if FASHION.exists():  # a run records the layout, so that eval and predict rebuild the same network
        code, out, err = run(capsys, "train", "--model", "resnet50", "--weights", "KERAS", "--limit-train", "64",
                             "--limit-test", "64", "--batch-size", "32", "--steps", "1", "--device", "cpu",
                             "--no-progress", "--out", tmp_path / "run")
        assert code == 0, err
        model, config = load_model(tmp_path / "run")
        assert config["model_kwargs"]["stride_in_1x1"] and model.conv1.bias is not None and model.bn1.eps == 1.001e-5

    # Not in Keras's cache (an older Keras's file of the same name is another file): downloaded into
    # torch's, and a file with another MD5 is refused and removed.
    older = tmp_path / "older" / "models" / "resnet50_weights_tf_dim_ordering_tf_kernels.h5"
    older.parent.mkdir(parents=True)
    older.write_bytes(b"another release's ResNet50")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "older"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    fetched = []

    def fake_download(url, dst, hash_prefix=None, progress=True):
        fetched.append(url)
        Path(dst).write_bytes(b"not the published file")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.raises(WeightsError, match="arrived damaged or changed.*MD5"):
        resnetlab.create_model("resnet50", weights="KERAS")
    assert fetched == ["https://storage.googleapis.com/tensorflow/keras-applications/resnet/resnet50_weights_tf_dim_ordering_tf_kernels.h5"]
    assert not any((tmp_path / "hub").rglob("*.h5*"))
    with pytest.raises(WeightsError, match="Keras Applications publish ImageNet weights for resnet50, resnet101, resnet152, not resnet18"):
        resnetlab.create_model("resnet18", weights="KERAS")


def test_a_fine_tuned_keras_applications_model_imports_as_resnet50(keras3, tmp_path, capsys):
    """keras.applications.ResNet50(include_top=False) + global pooling + dropout + Dense(5), any image
    size, fed through Keras's caffe preprocessing: a resnet50 run whose logits are Keras's."""
    expected = np.load(keras3 / "predictions.npz")
    run_dir = tmp_path / "tuned"
    (tmp_path / "photos").mkdir()
    code, out, err = run(capsys, "import", keras3 / "tuned.keras", "--out", run_dir, "--dataset", f"folder:{tmp_path / 'photos'}")
    assert code == 0, err
    assert "resnet50" in out and "preprocess_input" in out
    model, config = load_model(run_dir)
    assert config["model"] == "resnet50" and config["image_size"] == 224
    assert config["model_kwargs"] == {"num_classes": 5, "in_chans": 3, "stride_in_1x1": True, "bias": True, "bn_eps": 1.001e-5}
    x = torch.from_numpy(expected["images"]).permute(0, 3, 1, 2).float() / 255
    mean, std = torch.tensor(config["mean"])[:, None, None], torch.tensor(config["std"])[:, None, None]
    logits = expected["tuned_logits"]
    with torch.no_grad():
        np.testing.assert_allclose(model((x - mean) / std).numpy(), logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())

    paths = []
    for i, image in enumerate(expected["images"]):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    code, out, err = run(capsys, "predict", run_dir, *paths, "--device", "cpu")
    assert code == 0 and len(out.splitlines()) == 3, err

    other = tmp_path / "no-dataset"
    code, out, err = run(capsys, "import", keras3 / "tuned.keras", "--out", other, "--image-size", "64")
    assert code == 0 and "resize them to 64" in out, err
    assert load_model(other)[1]["image_size"] == 64  # any size: the user's choice of side
    code, out, err = run(capsys, "eval", other, "--device", "cpu")
    assert code == 2 and "names no dataset to test on" in err and "--dataset" in err
    code, out, err = run(capsys, "import", TF_KERAS2, "--out", tmp_path / "fixed", "--image-size", "32")
    assert code == 2 and "takes 64x64 images only" in err and not (tmp_path / "fixed").exists()


@pytest.mark.parametrize("name, suffix", [("nested", ".keras"), ("nested", ".h5"), ("sequential", ".keras")])
def test_a_base_model_called_as_one_layer(keras3, name, suffix):
    """keras.io's transfer learning, ``base(preprocess_input(augmentation(inputs)), training=False)`` and a
    head, and a Sequential of the base and a head that rescales its own input: the nested models' layers
    are read as the model's own, preprocess_input's ops and the rescaling become the run's normalisation
    of 0-1 RGB pixels, and the logits are Keras's for 0-255 pixels."""
    expected = np.load(keras3 / "predictions.npz")
    keras = read_keras(keras3 / f"{name}{suffix}")
    assert keras.model == "resnet50" and keras.model_kwargs["num_classes"] == {"nested": 4, "sequential": 3}[name]
    assert "0-255 prepared by the model's own layers" in keras.fed
    if name == "nested":  # the caffe preprocessing: BGR less the ImageNet mean, as for the published weights
        np.testing.assert_allclose(keras.mean, resnetlab.keras_weights.KERAS_APPLICATIONS_MEAN, rtol=1e-6)
        np.testing.assert_allclose(keras.std, resnetlab.keras_weights.KERAS_APPLICATIONS_STD, rtol=1e-6)
    logits = expected[f"{name}_logits"]
    np.testing.assert_allclose(logits_of(keras, expected["images"]), logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())


def _model_config(path: Path) -> dict:
    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["model_config"])


def _all_layers(config: dict) -> list[dict]:
    """A model config's layers, nested models' among them."""
    layers = []
    for entry in config["config"]["layers"]:
        layers.append(entry)
        if "layers" in entry.get("config", {}):
            layers += _all_layers(entry)
    return layers


@pytest.mark.parametrize("name", ["nested", "inline"])
def test_preprocess_input_in_a_tf_keras2_model(keras3, name):
    """TensorFlow's transfer learning tutorial in tf.keras 2 (TensorFlow <= 2.15): ``preprocess_input`` inside
    the model, which tf.keras 2 saves as TFOpLambda layers (``x[..., ::-1]`` as ``tf.__operators__.getitem``,
    the mean as ``tf.nn.bias_add``), then the base called as one layer after an augmentation Sequential, or
    built on it (``ResNet50(input_tensor=...)``). The reversal flips conv1's colour filters, the mean becomes
    the run's normalisation, and the logits are Keras's for 0-255 pixels."""
    expected = np.load(keras3 / "predictions.npz")
    path = keras3 / f"{name}_tf_keras2.h5"
    ops = {e["name"]: e for e in _all_layers(_model_config(path)) if e["class_name"].endswith("OpLambda")}
    assert ops["tf.__operators__.getitem"]["class_name"] == "SlicingOpLambda"  # the file is tf.keras 2's, not Keras 3's
    assert ops["tf.nn.bias_add"]["inbound_nodes"][0][0] == "tf.__operators__.getitem"
    keras = read_keras(path)
    assert keras.model == "resnet50" and keras.keras_version == "2.21.0"
    assert keras.model_kwargs["num_classes"] == {"nested": 4, "inline": 3}[name]
    np.testing.assert_allclose(keras.mean, resnetlab.keras_weights.KERAS_APPLICATIONS_MEAN, rtol=1e-6)
    np.testing.assert_allclose(keras.std, resnetlab.keras_weights.KERAS_APPLICATIONS_STD, rtol=1e-6)
    logits = expected[f"{name}_logits"]
    tolerance = dict(rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    np.testing.assert_allclose(logits_of(keras, expected["images"]), logits, **tolerance)
    # The check bites: conv1's colour filters left in the BGR order the model's own reversal feeds them.
    keras.state_dict["conv1.weight"] = keras.state_dict["conv1.weight"].flip(1)
    assert not np.allclose(logits_of(keras, expected["images"]), logits, **tolerance)


@pytest.mark.parametrize("function, arguments, shown", [
    ("reverse", {"axis": [-1], "name": None}, "TFOpLambda"),  # a channel reversal, but not as preprocess_input writes it
    ("math.square", {"name": None}, "TFOpLambda"),
    ("nn.bias_add", {"bias": [1.0, 2.0, 3.0], "data_format": "NCHW"}, "TFOpLambda"),  # channels first
    ("__operators__.getitem", {"slice_spec": [{"class_name": "__ellipsis__"}, {"start": 0, "stop": 1, "step": None}]}, "ops.GetItem"),
])
def test_other_tensorflow_functions_in_a_tf_keras2_model_are_refused(keras3, tmp_path, capsys, function, arguments, shown):
    """Any TFOpLambda that is not preprocess_input's or arithmetic with a constant: one line naming the layer."""
    path = tmp_path / "model.h5"
    path.write_bytes((keras3 / "arithmetic_tf_keras2.h5").read_bytes())
    config = _model_config(path)
    first = config["config"]["layers"][2]  # x / 255.0, after the cast to float
    assert first["name"] == "tf.math.truediv"
    name = f"tf.{function}"
    first.update(name=name, config={**first["config"], "name": name, "function": function},
                 inbound_nodes=[first["inbound_nodes"][0][:3] + [arguments]])
    config["config"]["layers"][3]["inbound_nodes"][0][0] = name
    if function == "__operators__.getitem":
        first["class_name"] = "SlicingOpLambda"
    with h5py.File(path, "r+") as f:
        f.attrs["model_config"] = json.dumps(config)
    code, out, err = run(capsys, "import", path, "--out", tmp_path / "run")
    assert code == 2 and err.count("\n") == 1 and f"its layer {name!r} is a {shown}" in err, err
    assert not (tmp_path / "run").exists()


def test_the_published_weights_file_is_pointed_to_its_tag(keras3):
    with pytest.raises(KerasError, match="Keras Applications' weights alone.*weights='KERAS'"):
        read_keras(keras3 / "resnet50_weights_tf_dim_ordering_tf_kernels.h5")


def test_rescaling_and_augmentation_inside_the_model(keras3):
    """RandomFlip (inactive when predicting), Rescaling (a scale per channel, an offset) and an adapted
    Normalization between the input and the stem: they become the run's normalisation of 0-1 pixels,
    and the answers are Keras's."""
    expected = np.load(keras3 / "predictions.npz")
    keras = read_keras(keras3 / "rescaled.keras")
    # Rescaling gives x / s - 1 of 0-255 pixels, then Normalization (x - m) / sqrt(v): for 0-1 pixels,
    # mean = s (1 + m) / 255 and std = s sqrt(v) / 255.
    s, (m, v) = np.array([127.5, 100, 60]), expected["normalization"]
    np.testing.assert_allclose(keras.mean, s * (1 + m) / 255, rtol=1e-5)
    np.testing.assert_allclose(keras.std, s * np.sqrt(v) / 255, rtol=1e-5)
    probs = torch.softmax(torch.from_numpy(logits_of(keras, expected["images"])), 1).numpy()
    np.testing.assert_allclose(probs, expected["rescaled_probs"], rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("suffix", [".keras", ".h5", "_tf_keras2.h5"])
def test_arithmetic_on_the_input_inside_the_model(keras3, suffix):
    """``1 - (cast(x, float32) / 255 - 0.5) * [2, 3, 4]`` written as operations on the input tensor (Keras 3's
    ops, or tf.keras 2's TFOpLambda layers, ``1 - x`` among them as ``_CONSTANT_VALUE`` less x): a
    normalisation of 0-1 pixels with a negative scale, and the answers are Keras's."""
    expected = np.load(keras3 / "predictions.npz")
    keras = read_keras(keras3 / f"arithmetic{suffix}")
    # The model sees 1 - a (x - 0.5) for x in 0-1 and a = 2, 3, 4: (x - mean) / std with
    # std = -1 / a and mean = 0.5 + 1 / a.
    a = np.array([2.0, 3.0, 4.0])
    np.testing.assert_allclose(keras.std, -1 / a, rtol=1e-6)
    np.testing.assert_allclose(keras.mean, 0.5 + 1 / a, rtol=1e-6)
    probs = torch.softmax(torch.from_numpy(logits_of(keras, expected["images"])), 1).numpy()
    np.testing.assert_allclose(probs, expected["arithmetic_probs"], rtol=1e-4, atol=1e-7)



def test_an_imported_model_with_a_negative_input_scale_is_a_run_that_predicts(keras3, tmp_path, capsys):
    """Its negative std is no damage: the imported run loads and predicts as Keras does."""
    from PIL import Image

    expected = np.load(keras3 / "predictions.npz")
    assert run(capsys, "import", keras3 / "arithmetic.keras", "--out", tmp_path / "run")[0] == 0
    Image.fromarray(expected["images"][0]).save(tmp_path / "0.png")
    code, out, err = run(capsys, "predict", tmp_path / "run", tmp_path / "0.png", "--top-k", "1")
    assert code == 0, err
    assert out.split(": ")[1].split()[0] == str(int(expected["arithmetic_probs"][0].argmax()))


def test_summary_and_diagram_of_an_imported_run(keras3, tmp_path, capsys):
    """A run directory in place of a model name: the summary counts what Keras's count_params counts."""
    expected = np.load(keras3 / "predictions.npz")
    run_dir = tmp_path / "small"
    assert run(capsys, "import", keras3 / "small.keras", "--out", run_dir)[0] == 0
    code, out, err = run(capsys, "summary", run_dir)
    assert code == 0, err
    assert f"Total params: {int(expected['small_count']):,}" in out and "for one 3x64x64 input" in out
    code, out, err = run(capsys, "diagram", run_dir)
    assert code == 0 and (run_dir / "model.svg").read_text().startswith("<?xml"), err
    code, out, err = run(capsys, "summary", run_dir, "--num-classes", "3")
    assert code == 2 and "is a run directory" in err


def keras_answers(folder: Path) -> None:
    """Keras 3 loads every .keras file in ``folder`` and answers for its images (keras_notebook.predict_files)."""
    if importlib.util.find_spec("keras") is None:
        pytest.skip("Keras 3 is not installed (pip install keras)")
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import keras_notebook; keras_notebook.predict_files({str(folder)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_export_to_keras_predicts_what_pytorch_predicts(tmp_path):
    """The notebook's layout, a CIFAR net with option A shortcuts, ResNet-18 and ResNet-50 (strided 3x3 convs,
    padded max pool), a plain net, the 2016 paper's pre-activation nets (CIFAR, basic and bottleneck; ImageNet,
    whose max pool sees values before any ReLU, at an odd size so that its padding shows on both sides), each as
    .keras and as Keras 2's .h5: keras.models.load_model reads each
    file and answers as PyTorch does. (tf.keras 2.21 reads the .h5 files too, checked by hand.)"""
    from resnetlab.keras_export import export_keras

    cases = {"signs": ("signs_resnet50", SMALL, 3, 64), "resnet20": ("resnet20", {"in_chans": 1}, 1, 28),
             "resnet18": ("resnet18", {"num_classes": 7}, 3, 64), "resnet50": ("resnet50", {"num_classes": 5}, 3, 64),
             "plain20": ("plain20", {}, 3, 32), "preact_resnet110": ("preact_resnet110", {}, 3, 32),
             "preact_resnet164": ("preact_resnet164", {"num_classes": 4}, 3, 32), "preact_resnet18": ("preact_resnet18", {}, 3, 65)}
    expected = {}
    g = torch.Generator().manual_seed(0)
    for key, (name, kwargs, channels, side) in cases.items():
        torch.manual_seed(1)  # the same weights whichever tests ran before
        model = resnetlab.create_model(name, **kwargs).eval()
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics far from their start
            bn.running_mean.uniform_(-0.3, 0.3, generator=g)
            bn.running_var.uniform_(0.5, 2, generator=g)
            bn.weight.data.uniform_(0.5, 1.5, generator=g)
        x = torch.rand(3, channels, side, side, generator=g)
        with torch.no_grad():
            # Logits of order one: an untrained deep net's are huge, and a softmax of those is 0s and a 1
            # that two nearly equal logits could hand to either class.
            scale = model((x - 0.4) / 0.3).std()
            model.fc.weight /= scale
            model.fc.bias /= scale
            expected[key] = torch.softmax(model((x - 0.4) / 0.3), 1).numpy()
        assert expected[key].max() < 0.999, key
        config = {"model": name, "image_size": side, "channels": channels, "mean": [0.4] * channels,
                  "std": [0.3] * channels, "classes": [str(i) for i in range(model.num_classes)]}
        export_keras(model, config, tmp_path / f"{key}.keras")
        export_keras(model, config, tmp_path / f"{key}.h5")
        np.savez(tmp_path / f"{key}.npz", x=x.permute(0, 2, 3, 1).numpy())
    keras_answers(tmp_path)
    for key, probs in expected.items():
        for suffix in (".keras", ".h5"):
            np.testing.assert_allclose(np.load(tmp_path / f"{key}{suffix}.npy"), probs, rtol=1e-4, atol=1e-6, err_msg=key + suffix)


def test_a_notebook_model_goes_to_keras_and_back(tmp_path, capsys):
    """import, export --format keras (.keras and .h5), import again: the same network, weight for weight."""
    first = tmp_path / "first"
    assert run(capsys, "import", TF_KERAS2, "--out", first, "--classes", "zero,one,two,three,four,five")[0] == 0
    a, config_a = load_model(first)
    for exported in ("model.keras", "model.h5"):
        code, out, err = run(capsys, "export", first, "-o", first / exported)
        assert code == 0 and "keras.models.load_model reads it" in out, err
        # The statistics a notebook's own model, given these weights by load_weights, must be fed with.
        mean, std = (", ".join(f"{v:.4g}" for v in config_a[k]) for k in ("mean", "std"))
        assert f"normalises with mean ({mean}) and std ({std})" in out and "(x - mean) / std" in out
        second = tmp_path / exported
        code, out, err = run(capsys, "import", first / exported, "--out", second)
        assert code == 0 and "pixels 0-1 prepared by the model's own" in out, err  # its Normalization holds the statistics
        b, config_b = load_model(second)
        for key, tensor in a.state_dict().items():
            if not key.endswith("num_batches_tracked"):
                torch.testing.assert_close(b.state_dict()[key], tensor, msg=f"{exported}: {key}")
        assert config_b["mean"] == pytest.approx(config_a["mean"]) and config_b["std"] == pytest.approx(config_a["std"])
        assert config_b["classes"] == ["zero", "one", "two", "three", "four", "five"]  # carried in the file
    with pytest.raises(ValueError, match="not order='bn_after_add'"):
        from resnetlab.keras_export import export_keras

        export_keras(resnetlab.create_model("resnet20", order="bn_after_add"), {"image_size": 32, "channels": 3, "mean": [0] * 3,
                                                                                "std": [1] * 3, "model": "resnet20"}, tmp_path / "p.keras")

