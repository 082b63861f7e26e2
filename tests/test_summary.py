"""The Keras-style summary: rows, totals, multiply-adds."""

import pytest
import torch

from resnetlab import create_model
from resnetlab.summary import summary


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
    with pytest.raises(ValueError, match=r"channel count and image sides must be positive, not \(3, 0, 32\)"):
        summary(create_model("resnet20"), (3, 0, 32), print_fn=None)


def test_the_table_ends_at_the_shape_the_net_returns():
    backbone = create_model("resnet20", num_classes=0)
    rows = summary(backbone, (3, 32, 32), print_fn=None).rows
    assert rows[-1].output_shape == tuple(backbone(torch.zeros(1, 3, 32, 32)).shape) == (1, 64)
    assert [r.name for r in rows[-2:]] == ["avgpool", "flatten"] and rows[-1].params == 0
    classifier = summary(create_model("resnet20"), (3, 32, 32), print_fn=None).rows
    assert classifier[-1].name == "fc" and "flatten" not in [r.name for r in classifier]
