"""The Keras-style summary: rows, totals, multiply-adds."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resnetlab import create_model
from resnetlab.model_summary import summary


def test_signs_summary_totals_match_keras():
    lines = []
    s = summary(create_model("signs_resnet50"), (3, 64, 64), "signs_resnet50", print_fn=lines.append)
    text = lines[0]
    assert "Total params: 23,600,006" in text
    assert "Trainable params: 23,546,886" in text
    assert "Non-trainable params: 53,120" in text
    # The rows add up to the total, as in Keras.
    assert sum(r.params for r in s.rows) == 23_600_006
    assert s.rows[-1].name == "fc" and s.rows[-1].output_shape == (1, 6)
    # A REPL shows the returned summary after the printed table: one line, not the rows again.
    assert repr(s) == f"ModelSummary('signs_resnet50', 3x64x64, {len(s.rows)} rows, 23,600,006 params, {s.macs:,} MACs)"


def test_summary_rows_follow_execution_with_shapes_and_adds():
    s = summary(create_model("resnet20"), (3, 32, 32), print_fn=None)
    names = [r.name for r in s.rows]
    assert names[:3] == ["conv1", "bn1", "relu"]
    adds = [r for r in s.rows if r.kind == "add"]
    assert len(adds) == 9
    assert adds[-1].output_shape == (1, 64, 8, 8)
    assert s.trainable == 269_722
    assert s.macs == 40_551_040  # 3x32x32 input, counted by torch.utils.flop_counter


def test_summary_feeds_the_models_dtype():
    """A bfloat16 model gets a bfloat16 input, and the same count as in float32."""
    s = summary(create_model("resnet20").to(torch.bfloat16), (3, 32, 32), print_fn=None)
    assert s.macs == 40_551_040 and s.rows[-1].output_shape == (1, 10)


def test_summary_leaves_the_model_as_it_was():
    """Training mode, each module's own (a batch norm kept frozen in eval mode), and every buffer."""
    model = create_model("resnet20").train()
    model.bn1.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    summary(model, (3, 32, 32), print_fn=None)
    assert model.training and not model.bn1.training and model.layer1[0].bn1.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("name, paper", [("resnet18", 1.8e9), ("resnet34", 3.6e9), ("resnet50", 3.8e9),
                                         ("resnet101", 7.6e9), ("resnet152", 11.3e9)])
def test_imagenet_multiply_adds_are_the_papers_and_parameters_torchvisions(name, paper):
    """The 2015 paper's Table 1 (its bottleneck nets stride on the first 1x1; torchvision's, on the 3x3,
    add 0.23 G to ResNet-50) and torchvision's parameter counts."""
    import torchvision

    with torch.device("meta"):
        expected_params = sum(p.numel() for p in getattr(torchvision.models, name)().parameters())
    s = summary(create_model(name, stride_in_1x1=name not in ("resnet18", "resnet34")), (3, 224, 224), print_fn=None)
    assert s.macs == pytest.approx(paper, rel=0.02)
    assert s.trainable == expected_params
    assert s.rows[-1].output_shape == (1, 1000) and s.total == sum(r.params for r in s.rows)


@pytest.mark.parametrize("name, paper", [("resnet20", 0.27e6), ("resnet56", 0.85e6), ("resnet110", 1.7e6)])
def test_cifar_parameters_are_the_papers(name, paper):
    """The 2015 paper's Table 6 (resnet1202's 19.4M is checked by `resnetlab models`' tests' counts)."""
    assert summary(create_model(name), (3, 32, 32), print_fn=None).trainable == pytest.approx(paper, rel=0.02)


@pytest.mark.parametrize("name", ["preact_resnet164", "preact_resnet18", "signs_resnet50", "plain20", "resnet50"])
def test_every_layout_takes_one_grey_channel_and_channels_last(name):
    """Pre-activation, plain and Keras-layout nets, built for grey images and laid out channels-last."""
    model = create_model(name, in_chans=1, num_classes=3).to(memory_format=torch.channels_last)
    side = 64 if name == "signs_resnet50" else 32
    s = summary(model, (1, side, side), print_fn=None)
    assert s.rows[0].output_shape[:2] == (1, model.conv1.out_channels)
    assert s.rows[-1].output_shape == (1, 3) and s.total == sum(r.params for r in s.rows)
    adds = [r for r in s.rows if r.kind == "add"]
    assert len(adds) == (0 if name.startswith("plain") else len(list(model.blocks())))


def test_an_input_the_model_cannot_take_is_refused_in_words():
    with pytest.raises(ValueError, match=r"resnet20 takes 3-channel images, not 1 \(build it with in_chans=1\)"):
        summary(create_model("resnet20"), (1, 32, 32), title="resnet20", print_fn=None)
    with pytest.raises(ValueError, match=r"input_size is \(C, H, W\), channels first: \(3, 64, 64\), not \(64, 64, 3\)"):
        summary(create_model("signs_resnet50"), (64, 64, 3), print_fn=None)  # Keras's order
    with pytest.raises(ValueError, match=r"channel count and image sides must be positive, not \(3, 0, 32\)"):
        summary(create_model("resnet20"), (3, 0, 32), print_fn=None)


def test_the_table_ends_at_the_shape_the_net_returns():
    backbone = create_model("resnet20", num_classes=0)
    rows = summary(backbone, (3, 32, 32), print_fn=None).rows
    assert rows[-1].output_shape == tuple(backbone(torch.zeros(1, 3, 32, 32)).shape) == (1, 64)
    assert [r.name for r in rows[-2:]] == ["avgpool", "flatten"] and rows[-1].params == 0
    classifier = summary(create_model("resnet20"), (3, 32, 32), print_fn=None).rows
    assert [r.name for r in classifier[-3:]] == ["avgpool", "flatten", "fc"]
    assert [r.kind for r in classifier].count("flatten") == 1


def test_block_functions_have_rows_in_the_order_they_run():
    """The ReLUs and the addition that blocks call as functions, once each, the stem's nn.ReLU once;
    post-activation: bn, add, relu; pre-activation: bn, relu, conv, ..., add."""
    post = summary(create_model("resnet50"), (3, 64, 64), print_fn=None).rows
    assert [r.name for r in post if r.name.startswith("layer4.2.")][-4:] == [
        "layer4.2.conv3", "layer4.2.bn3", "layer4.2.add", "layer4.2.relu"]
    assert [(r.name, r.kind) for r in post if r.kind in ("ReLU", "relu")][:3] == [
        ("relu", "ReLU"), ("layer1.0.relu1", "relu"), ("layer1.0.relu2", "relu")]
    assert sum(r.kind == "relu" for r in post) == 3 * 16 and sum(r.kind == "ReLU" for r in post) == 1
    block = [(r.name.removeprefix("layer2.0."), r.output_shape) for r in post if r.name.startswith("layer2.0.")]
    assert block[6:] == [("conv3", (1, 512, 8, 8)), ("bn3", (1, 512, 8, 8)), ("downsample.0", (1, 512, 8, 8)),
                         ("downsample.1", (1, 512, 8, 8)), ("add", (1, 512, 8, 8)), ("relu", (1, 512, 8, 8))]
    pre = summary(create_model("preact_resnet18"), (3, 32, 32), print_fn=None).rows
    assert [r.name.removeprefix("layer2.0.") for r in pre if r.name.startswith("layer2.0.")] == [
        "bn1", "relu1", "conv1", "bn2", "relu2", "conv2", "downsample.0", "add"]
    assert [r.name for r in pre[-5:]] == ["final_bn", "final_act", "avgpool", "flatten", "fc"]
    after = summary(create_model("resnet20", order="bn_after_add"), (3, 32, 32), print_fn=None).rows
    assert [r.name.removeprefix("layer1.0.") for r in after if r.name.startswith("layer1.0.")] == [
        "conv1", "bn1", "relu1", "conv2", "add", "bn2", "relu"]


# Keras's layer classes as resnetlab's rows name them; Activation is checked to be a ReLU.
KERAS_KINDS = {"Conv2D": {"Conv2d"}, "BatchNormalization": {"BatchNorm2d"}, "Activation": {"ReLU", "relu"},
               "Add": {"add"}, "MaxPooling2D": {"MaxPool2d"}, "AveragePooling2D": {"AvgPool2d"},
               "Flatten": {"flatten"}, "Dense": {"Linear"}}
# Keras's layers with no row, and why: they have no computation of their own here.
KERAS_ONLY = {"InputLayer": "the input itself, which computes nothing",
              "ZeroPadding2D": "the stem conv's own padding=3 (Keras pads, then convolves without padding)"}


def keras_layers_as_run(width: int, layers: tuple[int, ...]) -> None:
    """Print the seed notebook's Keras model's layers as JSON, (class, output shape without the batch,
    parameters, activation), in the order a forward pass computes them; and whether they are
    model.layers' (run in a subprocess, as tests/test_keras.py runs Keras)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import keras
    import keras_notebook

    model = keras_notebook.ResNet50(keras, width=width, layers=layers)
    order, seen = [], set()

    def visit(tensor) -> None:  # depth first from the output; Add's inputs main path first, as it was called
        layer, node_index, _ = tensor._keras_history
        if id(layer) in seen:
            return
        for t in layer._inbound_nodes[node_index].input_tensors:
            visit(t)
        seen.add(id(layer))
        order.append(layer)

    visit(model.output)
    same = sorted(id(layer) for layer in order) == sorted(id(layer) for layer in model.layers)
    print(json.dumps({"same_layers": same, "count": model.count_params(), "layers": [
        [type(layer).__name__, list(layer.output.shape[1:]), layer.count_params(),
         getattr(getattr(layer, "activation", None), "__name__", None)] for layer in order]}))


def test_rows_are_the_keras_notebook_models_layers():
    """Row for row, the notebook's Keras model (a small one: width 4, layers 1-2-1-1) and signs_resnet50 built
    alike: the same kind of layer, output shape and parameter count, but for KERAS_ONLY's layers.
    Rows follow execution, main path before shortcut; Keras's model.layers (and its summary) lists a
    convolutional block's two paths interleaved by depth (conv3, shortcut conv, bn3, shortcut BN), so
    Keras's layers are taken in the order a forward pass computes them."""
    if importlib.util.find_spec("keras") is None:  # not imported here: Keras would pick its backend for the tests' process
        pytest.skip("Keras 3 is not installed (pip install keras)")
    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import test_summary; "
            "test_summary.keras_layers_as_run(4, (1, 2, 1, 1))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "KERAS_BACKEND": "torch"})
    keras = json.loads(done.stdout.strip().splitlines()[-1])
    assert keras["same_layers"]
    assert {kind for kind, *_ in keras["layers"]} <= KERAS_KINDS.keys() | KERAS_ONLY.keys()
    expected = [(kind, tuple(shape[-1:] + shape[:-1]), params) for kind, shape, params, activation in keras["layers"]
                if kind not in KERAS_ONLY]
    assert all(activation == "relu" for kind, _, _, activation in keras["layers"] if kind == "Activation")
    model = create_model("signs_resnet50", layers=(1, 2, 1, 1), widths=(4, 8, 16, 32))
    s = summary(model, (3, 64, 64), print_fn=None)
    assert len(s.rows) == len(expected) == 67 - len(KERAS_ONLY)
    for row, (kind, shape, params) in zip(s.rows, expected):
        assert (row.kind in KERAS_KINDS[kind], row.output_shape[1:], row.params) == (True, shape, params), (row, kind)
    assert s.total == keras["count"]
