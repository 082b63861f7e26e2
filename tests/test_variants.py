"""The 2016 paper's ablations: the five activation orders (Figure 4) and the shortcut mixings (Figure 2)."""

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import resnetlab
from resnetlab.blocks import MIXINGS, ORDERS, BasicBlock, Bottleneck
from resnetlab.cli import main
from resnetlab.diagram import model_graph
from resnetlab.models import count_parameters

FASHION = Path("/usr/share/datasets/fashion-mnist")


def randomised(block: torch.nn.Module) -> torch.nn.Module:
    """A block in eval mode with BN statistics and affine parameters away from 0 and 1, so every BN matters."""
    torch.manual_seed(0)
    for m in block.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.5, 0.5)
    return block.eval()


def reference(b: BasicBlock, x: torch.Tensor) -> torch.Tensor:
    """Each order of Figure 4 written out by hand for a basic block with an identity shortcut."""
    r = F.relu
    return {
        "post": lambda: r(b.bn2(b.conv2(r(b.bn1(b.conv1(x))))) + x),
        "bn_after_add": lambda: r(b.bn2(b.conv2(r(b.bn1(b.conv1(x)))) + x)),
        "relu_before_add": lambda: r(b.bn2(b.conv2(r(b.bn1(b.conv1(x)))))) + x,
        "relu_preact": lambda: b.bn2(b.conv2(r(b.bn1(b.conv1(r(x)))))) + x,
        "preact": lambda: b.conv2(r(b.bn2(b.conv1(r(b.bn1(x)))))) + x,
    }[b.order]()


@pytest.mark.parametrize("order", ORDERS)
def test_each_activation_order_computes_its_figure(order):
    block = randomised(BasicBlock(8, 8, order=order))
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        torch.testing.assert_close(block(x), reference(block, x), rtol=0, atol=0)


def test_orders_are_distinct_networks_with_equal_parameter_counts():
    x = torch.randn(2, 8, 6, 6)
    outputs = []
    for order in ORDERS:
        torch.manual_seed(1)  # the same weights in every order: only where BN and ReLU sit differs
        block = randomised(BasicBlock(8, 8, order=order))
        with torch.no_grad():
            outputs.append(block(x))
    for i in range(len(outputs)):
        for j in range(i):
            assert not torch.allclose(outputs[i], outputs[j]), (ORDERS[i], ORDERS[j])
    # Moving BN and ReLU moves no weights: every order of ResNet-110 and ResNet-164 has the paper's 1.7M
    # (Table 3); the orders whose BNs follow their convs have exactly the same count, full pre-activation
    # differs by the sizes of BNs that read a block's input instead.
    for name in ("resnet110", "resnet164"):  # names that leave the order free (preact_* fix it)
        counts = {o: count_parameters(resnetlab.create_model(name, order=o)) for o in ORDERS}
        assert {round(c / 1e6, 1) for c in counts.values()} == {1.7}
        assert len({c for o, c in counts.items() if o != "preact"}) == 1


@pytest.mark.parametrize("order", ORDERS)
def test_bottleneck_orders_run_and_preact_is_the_preact_flag(order):
    block = Bottleneck(16, 8, stride=2, order=order)
    assert block(torch.randn(2, 16, 8, 8)).shape == (2, 32, 4, 4)
    assert block.preact == (order == "preact")
    assert Bottleneck(16, 8, preact=True).order == "preact"


def test_relu_preact_net_ends_with_a_relu():
    model = resnetlab.create_model("resnet20", order="relu_preact").eval()
    assert model.final_relu and (model.forward_features(torch.randn(2, 3, 32, 32)) >= 0).all()


def test_mixings_combine_shortcut_and_branch_as_figure_2():
    x = torch.randn(2, 8, 6, 6)
    branch = {}

    def keep(module, inputs, output):
        branch["F"] = output

    results = {}
    for mixing in MIXINGS:
        block = randomised(BasicBlock(8, 8, mixing=mixing, scales=(0.5, 1.0), gate_bias=-1.0))
        block.init_gate()
        block.bn2.register_forward_hook(keep)
        with torch.no_grad():
            out = block(x)
            f = branch["F"]
            g = torch.sigmoid(block.gate(x)) if block.gate is not None else None
        expected = {
            "add": x + f,
            "scale": 0.5 * x + 1.0 * f,
            "gate": (1 - g) * x + g * f if g is not None else None,
            "shortcut_gate": (1 - g) * x + f if g is not None else None,
            "dropout": x + f,  # eval mode: dropout is the identity
        }[mixing]
        torch.testing.assert_close(out, F.relu(expected), rtol=0, atol=1e-6)
        results[mixing] = count_parameters(block)
    # A gate is one 1x1 conv with bias: in x out weights + out biases.
    assert results["gate"] - results["add"] == 8 * 8 + 8 == results["shortcut_gate"] - results["add"]
    assert results["scale"] == results["dropout"] == results["add"]


def test_gate_bias_starts_where_asked_and_a_closed_gate_passes_the_shortcut():
    model = resnetlab.create_model("resnet20", mixing="gate", gate_bias=-50.0)
    biases = {float(b.gate.bias.detach().unique()) for b in model.blocks()}
    assert biases == {-50.0}
    block = randomised(model.layer1[0])
    x = torch.rand(2, 16, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(x))  # g = sigmoid(-50): the branch is shut out


def test_dropout_on_the_shortcut_in_training():
    block = BasicBlock(8, 8, mixing="dropout", shortcut_dropout=0.5).train()
    for m in block.modules():  # branch silenced, so the output is the dropped-out shortcut alone
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.zeros_(m.weight)
    torch.manual_seed(0)
    out = block(torch.ones(1, 8, 16, 16))
    values = set(out.unique().tolist())
    assert values == {0.0, 2.0}  # dropped, or kept and scaled by 1/(1-p)
    assert 0.4 < (out == 0).float().mean() < 0.6


def test_bad_variant_names_are_refused():
    with pytest.raises(ValueError, match="order must be one of"):
        BasicBlock(8, 8, order="sideways")
    with pytest.raises(ValueError, match="mixing must be one of"):
        resnetlab.create_model("resnet20", mixing="multiply")


def test_diagram_draws_each_order_and_mixing():
    dot = model_graph(resnetlab.create_model("resnet20", order="bn_after_add")).source
    assert "bn after add" in dot
    dot = model_graph(resnetlab.create_model("resnet20", mixing="gate")).source
    assert "σ(1×1 conv + b)" in dot and "× g" in dot and "gate shortcut" in dot


def test_cli_model_args_reach_the_model(tmp_path, capsys):
    out = tmp_path / "gate.svg"
    assert main(["diagram", "resnet20", "--model-arg", "mixing=gate", "--model-arg", "gate_bias=-6", "-o", str(out)]) == 0
    assert "gate shortcut" in out.read_text()
    capsys.readouterr()
    assert main(["summary", "resnet110", "--model-arg", "order=relu_preact"]) == 0
    assert f"{count_parameters(resnetlab.create_model('resnet110')):,}" in capsys.readouterr().out  # same weights
    assert main(["summary", "resnet20", "--model-arg", "order=sideways"]) == 2
    assert "order must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit:  # argparse's own usage error
        main(["summary", "resnet20", "--model-arg", "order"])
    assert exit.value.code == 2 and "expected KEY=VALUE" in capsys.readouterr().err


@pytest.mark.skipif(not FASHION.exists(), reason="Debian's dataset-fashion-mnist is not installed")
def test_a_variant_trains_and_comes_back_from_its_run(tmp_path, capsys):
    import json

    from resnetlab.runs import load_model

    out = tmp_path / "run"
    assert main(["train", "--model", "resnet8", "--model-arg", "mixing=shortcut_gate", "--model-arg", "order=relu_preact",
                 "--limit-train", "128", "--limit-test", "64", "--batch-size", "64", "--steps", "2", "--device", "cpu",
                 "--no-progress", "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["model_kwargs"]["mixing"] == "shortcut_gate" and config["model_kwargs"]["order"] == "relu_preact"
    model, _ = load_model(out)
    assert model.order == "relu_preact" and all(b.gate is not None for b in model.blocks())
