"""Keras export: what the files hold, read back without Keras; models and configs it cannot write; and
Keras itself answering as PyTorch for the shortcut options and layout test_keras.py does not export."""

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

import resnetlab
from resnetlab.blocks import BasicBlock
from resnetlab.keras_export import export_keras

HERE = Path(__file__).parent


def config_for(model, name: str = "resnet20", side: int = 32, **changes) -> dict:
    channels = model.conv1.in_channels
    return {"model": name, "image_size": side, "channels": channels, "mean": [0.4] * channels, "std": [0.3] * channels,
            "classes": [f"c{i}" for i in range(model.num_classes)], **changes}


def test_both_formats_hold_the_weights_and_the_classes(tmp_path):
    model = resnetlab.create_model("resnet20", num_classes=4)
    export_keras(model, config_for(model), tmp_path / "m.keras")
    export_keras(model, config_for(model), tmp_path / "m.h5")

    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        assert set(z.namelist()) == {"metadata.json", "config.json", "model.weights.h5"}
        assert json.loads(z.read("metadata.json"))["resnetlab"] == {"model": "resnet20", "classes": ["c0", "c1", "c2", "c3"]}
        config = json.loads(z.read("config.json"))["config"]
        with h5py.File(z.open("model.weights.h5")) as f:
            dense = np.asarray(f["layers/dense/vars/0"])
    assert config["layers"][0]["config"]["batch_shape"] == [None, 32, 32, 3]
    np.testing.assert_array_equal(dense, model.fc.weight.detach().t().numpy())

    with h5py.File(tmp_path / "m.h5") as f:
        assert json.loads(f.attrs["resnetlab"])["classes"] == ["c0", "c1", "c2", "c3"]
        layers = json.loads(f.attrs["model_config"])["config"]["layers"]
        last = layers[-1]["name"]
        assert layers[-1]["config"]["activation"] == "softmax"
        np.testing.assert_array_equal(f[f"model_weights/{last}/{last}/bias:0"], model.fc.bias.detach().numpy())


@pytest.mark.parametrize("name, momentum, epsilon", [("resnet20", 0.9, 1e-5), ("signs_resnet50", 0.99, 1e-3)])
def test_batch_norms_keep_their_momentum_and_epsilon_in_kerass_terms(tmp_path, name, momentum, epsilon):
    """PyTorch's momentum is the new batch's share, Keras's the old statistics': 0.1 becomes 0.9 (0.01, the
    notebook's, 0.99), so that fine-tuning in Keras moves the statistics as training here did."""
    model = resnetlab.create_model(name)
    export_keras(model, config_for(model, name, 64 if name == "signs_resnet50" else 32), tmp_path / "m.keras")
    with zipfile.ZipFile(tmp_path / "m.keras") as z:
        layers = json.loads(z.read("config.json"))["config"]["layers"]
    norms = [layer["config"] for layer in layers if layer["class_name"] == "BatchNormalization"]
    assert len(norms) == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    assert all((c["momentum"], c["epsilon"]) == pytest.approx((momentum, epsilon)) for c in norms)


def test_a_half_precision_model_is_written_in_float32(tmp_path):
    """A model trained or kept in bfloat16 writes the float32 weights Keras files hold."""
    model = resnetlab.create_model("resnet20").to(torch.bfloat16)
    export_keras(model, config_for(model), tmp_path / "m.h5")
    with h5py.File(tmp_path / "m.h5") as f:
        last = json.loads(f.attrs["model_config"])["config"]["layers"][-1]["name"]
        kernel = f[f"model_weights/{last}/{last}/kernel:0"]
        assert kernel.dtype == np.float32
        np.testing.assert_array_equal(kernel, model.fc.weight.detach().float().t().numpy())


def test_what_cannot_be_written_is_refused_in_words(tmp_path):
    model = resnetlab.create_model("resnet20")
    with pytest.raises(ValueError, match="ends in .keras .* not m.onnx"):
        export_keras(model, config_for(model), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="not mixing='gate'"):
        export_keras(resnetlab.create_model("resnet20", mixing="gate"), config_for(model), tmp_path / "m.keras")
    with pytest.raises(ValueError, match="Keras export writes a classifier; a backbone .* has none"):
        export_keras(resnetlab.create_model("resnet20", features_only=True), config_for(model), tmp_path / "m.keras")

    class Squeezed(BasicBlock):  # a researcher's own unit: written as BasicBlock, it would be another net
        pass

    with pytest.raises(ValueError, match="not Squeezed blocks"):
        export_keras(resnetlab.create_model("resnet20", block=Squeezed), config_for(model), tmp_path / "m.keras")
    with pytest.raises(ValueError, match="Keras export writes a classifier; a backbone .* has none"):
        export_keras(resnetlab.create_model("resnet20", num_classes=0), config_for(model), tmp_path / "m.keras")
    # A config that does not describe the model would write a file Keras cannot load, or mislabel its outputs.
    with pytest.raises(ValueError, match="the model takes 3-channel images; the config says 1"):
        export_keras(model, config_for(model, channels=1, mean=[0.4], std=[0.3]), tmp_path / "m.keras")
    with pytest.raises(ValueError, match="the model has 10 classes; the config names 2"):
        export_keras(model, config_for(model, classes=["a", "b"]), tmp_path / "m.keras")
    with pytest.raises(ValueError, match="3 channels need 3 means and standard deviations"):
        export_keras(model, config_for(model, mean=[0.4]), tmp_path / "m.keras")
    assert not list(tmp_path.iterdir())


def test_keras_answers_as_pytorch_for_shortcut_options_b_and_c_and_the_papers_bottleneck(tmp_path):
    """Projection shortcuts where the shape changes (B) and everywhere (C), pre-activation with B, and the
    paper's ResNet-50 (stride on the first 1x1, conv biases, Keras's epsilon) at an odd size."""
    if importlib.util.find_spec("keras") is None:  # not imported here: Keras would pick its backend for the tests' process
        pytest.skip("Keras 3 is not installed (pip install keras)")
    cases = {"b": ("resnet20", {"shortcut": "B"}, 32), "c": ("resnet20", {"shortcut": "C"}, 32),
             "preact_b": ("preact_resnet110", {"shortcut": "B"}, 32),
             "paper50": ("resnet50", {"stride_in_1x1": True, "bias": True, "bn_eps": 1.001e-5, "num_classes": 5}, 33)}
    g = torch.Generator().manual_seed(0)
    expected = {}
    for key, (name, kwargs, side) in cases.items():
        torch.manual_seed(1)
        model = resnetlab.create_model(name, **kwargs).eval()
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # statistics far from their start
            bn.running_mean.uniform_(-0.3, 0.3, generator=g)
            bn.running_var.uniform_(0.5, 2, generator=g)
            bn.weight.data.uniform_(0.5, 1.5, generator=g)
        x = torch.rand(2, 3, side, side, generator=g)
        with torch.no_grad():
            scale = model((x - 0.4) / 0.3).std()  # logits of order one, so that the softmax compares them
            model.fc.weight /= scale
            model.fc.bias /= scale
            expected[key] = torch.softmax(model((x - 0.4) / 0.3), 1).numpy()
        for suffix in (".keras", ".h5"):
            export_keras(model, config_for(model, name, side), tmp_path / f"{key}{suffix}")
        np.savez(tmp_path / f"{key}.npz", x=x.permute(0, 2, 3, 1).numpy())
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import keras_notebook; keras_notebook.predict_files({str(tmp_path)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    for key, probs in expected.items():
        for suffix in (".keras", ".h5"):
            np.testing.assert_allclose(np.load(tmp_path / f"{key}{suffix}.npy"), probs, rtol=1e-4, atol=1e-6, err_msg=key + suffix)
