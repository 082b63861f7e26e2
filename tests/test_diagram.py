"""Architecture diagrams: what the DOT source says, and that the SVG and PNG files are real."""

import html
import re
import xml.etree.ElementTree as ET

import pytest
import torch
from PIL import Image

from resnetlab import create_model
from resnetlab.diagram import draw_model, model_graph

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def models():
    """Each model built once: ResNet-152 takes a second to initialise."""
    names = ("resnet20", "resnet18", "resnet50", "preact_resnet164", "plain20", "resnet152")
    return {name: create_model(name) for name in names}


def svg_nodes(path):
    """The text of every node drawn in an SVG written by Graphviz (it is XML: parse it)."""
    root = ET.parse(path).getroot()
    groups = [g for g in root.iter(f"{SVG}g") if g.get("class") == "node"]
    return ["\n".join(t.text or "" for t in g.iter(f"{SVG}text")) for g in groups]


def svg_text(path):
    return "\n".join(t.text or "" for t in ET.parse(path).getroot().iter(f"{SVG}text"))


def rows(source, node):
    """The rows of one node's label in the DOT source, top to bottom."""
    label = re.search(rf"\t{node} \[label=<(.*?)>\]\n", source).group(1)
    return [html.unescape(re.sub(r"<[^>]+>", "", cell)) for cell in re.findall(r"<TD[^>]*>(.*?)</TD>", label)]


def count(source, pattern):
    return len(re.findall(pattern, source))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet20", ["0.27 M trainable parameters", "stem (cifar)", "3×3 conv, 16", "option A shortcut", "zero-pad to 32 ch", "× 3", "fc, 10 classes"]),
        ("resnet18", ["7×7 conv, 64, /2", "3×3 max pool, /2", "projection shortcut", "1×1 conv, 128, /2", "fc, 1000 classes"]),
        ("resnet50", ["1×1 conv, 64", "3×3 conv, 128, /2", "1×1 conv, 2048", "× 5", "global avg pool"]),
        ("preact_resnet164", ["164-layer pre-activation ResNet", "× 17", "1×1 conv, 256"]),
        ("plain20", ["20-layer plain net", "3×3 conv, 64, /2"]),
        ("resnet152", ["152-layer ResNet", "× 35", "× 7"]),
    ],
)
def test_svg_and_png_hold_the_model(models, tmp_path, name, expected):
    svg = draw_model(models[name], tmp_path / f"{name}.svg", title=name)
    text = svg_text(svg)
    for label in expected:
        assert label in text, label

    png = draw_model(models[name], tmp_path / f"{name}.png")
    with Image.open(png) as image:
        assert image.format == "PNG"
        width, height = image.size
    # A column of blocks: narrow and tall, and (collapsed) never absurdly so.
    assert 300 < width < 900 and 1000 < height < 6000


def test_shortcut_kinds_follow_the_shortcut_option(models):
    a = model_graph(models["resnet20"]).source
    assert count(a, "option A shortcut") == 2 and "projection" not in a
    assert count(a, "identity") == 3  # one a run of identical blocks: layer1.0-2, layer2.1-2, layer3.1-2
    b = model_graph(models["resnet18"], collapse=False).source
    assert count(b, "projection shortcut") == 3 and "option A" not in b
    assert count(b, "identity") == 5
    assert count(b, "style=dotted") == 6  # into and out of each projection, as the paper draws them


def test_block_layers_in_order(models):
    post = model_graph(models["resnet20"]).source
    assert rows(post, "layer1_0_0") == ["stage 1: × 3   layer1.0–2", "3×3 conv, 16", "BN", "ReLU"]
    assert rows(post, "layer1_0_1") == ["3×3 conv, 16", "BN"]
    assert rows(post, "layer2_0_0") == ["stage 2: layer2.0", "3×3 conv, 32, /2", "BN", "ReLU"]
    assert "layer1_0_1 -> layer1_0_add" in post and "layer1_0_add -> layer1_0_relu" in post

    pre = model_graph(models["preact_resnet164"]).source
    # The first unit's BN-ReLU stands alone: the projection reads its output (2016 paper).
    assert rows(pre, "layer1_0_0") == ["stage 1: layer1.0", "BN", "ReLU"]
    assert rows(pre, "layer1_0_1") == ["1×1 conv, 16"]
    assert "layer1_0_0 -> layer1_0_shortcut" in pre
    assert rows(pre, "layer1_1_0") == ["× 17   layer1.1–17", "BN", "ReLU", "1×1 conv, 16"]
    assert rows(pre, "layer1_1_2") == ["BN", "ReLU", "1×1 conv, 64"]
    assert "stem_conv -> layer1_0_shortcut" not in pre
    assert rows(pre, "final_bn") == ["BN", "ReLU"]
    assert "_relu" not in pre  # nothing after the addition


def test_shortcut_widths_scales_and_the_bn_after_the_addition_are_where_the_block_has_them():
    """Option A pads to the stage's width; constant scaling (2016, Fig. 2b) puts its first factor on the
    shortcut and its second on F(x); BN after addition (Fig. 4b) moves the last BN past the sum."""
    assert re.findall(r"zero-pad to (\d+) ch", model_graph(create_model("resnet20")).source) == ["32", "64"]
    scaled = model_graph(create_model("resnet20", mixing="scale", scales=[0.5, 1.0])).source
    assert rows(scaled, "layer1_0_1") == ["3×3 conv, 16", "BN", "× 1"]
    shortcut = re.search(r"\tlayer1_0_shortcut \[label=<(.*?)> group", scaled).group(1)
    assert re.findall(r"<TD[^>]*>(.*?)</TD>", shortcut) == ["× 0.5"]
    after = model_graph(create_model("resnet20", order="bn_after_add")).source
    assert rows(after, "layer1_0_1") == ["3×3 conv, 16"] and rows(after, "layer1_0_relu") == ["BN", "ReLU"]


def test_expanded_on_the_command_line_draws_every_block(tmp_path):
    from resnetlab.cli import main

    assert main(["diagram", "resnet20", "--expand", "-o", str(tmp_path / "all.svg")]) == 0
    text = svg_text(tmp_path / "all.svg")
    assert "layer1.2" in text and "× 3" not in text


def test_the_head_and_backbones_are_drawn_as_they_compute():
    relu_preact = model_graph(create_model("resnet20", order="relu_preact")).source
    assert rows(relu_preact, "final_bn") == ["ReLU"]  # the ReLU after the last stage, with no BN before it
    stem = model_graph(create_model("resnet18", features_only=True, out_indices=[0])).source
    assert "stem_conv -> out" in stem and "stem_pool" not in stem  # map 0 is taken before the max pool
    backbone = model_graph(create_model("resnet18", features_only=True, out_indices=[1, 2])).source
    assert "9-layer ResNet" in backbone  # the stem conv and eight branch convs; no fc
    assert "18-layer ResNet" in model_graph(create_model("resnet18")).source


def test_a_unit_of_the_users_own_is_named_with_what_it_adds(models):
    """A subclass's new layers and its own F(x) are invisible to the stock options the drawing reads:
    they are said on the block, so the figure never passes off another net as the stock one."""
    from torch import nn

    from resnetlab.blocks import BasicBlock
    from resnetlab.models import cifar_resnet

    class SEBlock(BasicBlock):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(self.convs[-1].out_channels, 4, 1), nn.Sigmoid())

        def _branch(self, x):
            out, preacted = super()._branch(x)
            return out * self.se(out)[:, :1], preacted

    class Renamed(BasicBlock):  # a subclass that changes nothing drawn still says whose class it is
        pass

    class Mixed(BasicBlock):
        def _mix(self, s, branch, x):
            return s + 2 * branch

    source = model_graph(cifar_resnet(20, block=SEBlock)).source
    assert rows(source, "layer1_0_0")[0] == "stage 1: × 3   layer1.0–2  SEBlock"
    assert rows(source, "layer1_0_1") == ["3×3 conv, 16", "BN", "+ se: Sequential", "own _branch(): drawn as BasicBlock's"]
    assert rows(model_graph(cifar_resnet(20, block=Renamed)).source, "layer1_0_1") == ["3×3 conv, 16", "BN"]
    assert "Renamed" in model_graph(cifar_resnet(20, block=Renamed)).source
    assert rows(model_graph(cifar_resnet(20, block=Mixed)).source, "layer1_0_1")[-1] == "own _mix(): drawn as BasicBlock's"
    assert "own " not in model_graph(models["resnet20"]).source and "+ " not in model_graph(models["resnet50"]).source


def test_map_sides_are_labelled_for_an_image_size_and_drawing_changes_nothing():
    model = create_model("resnet50").train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    source = model_graph(model, image_size=(224, 224)).source
    assert "input, 3 channels, 224×224" in source and "stem (imagenet), out 56×56" in source
    assert [f"stage {i} ({side}×{side})" in source for i, side in ((1, 56), (2, 28), (3, 14), (4, 7))] == [True] * 4
    # One forward pass read the sides: in eval mode, so the batch norms' statistics are as they were.
    assert model.training and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert "stage 3 (8×8)" in model_graph(create_model("resnet20"), image_size=(32, 32)).source
    assert "×" not in model_graph(create_model("resnet20")).source.split("stage 1")[1].split(":")[0]  # no size: none said


def test_plain_nets_have_no_add_and_no_shortcut(models):
    source = model_graph(models["plain20"], collapse=False).source
    assert "⊕" not in source and "identity" not in source and "shortcut" not in source
    assert count(source, r"_relu \[") == 9  # the ReLU after each block stays


def test_collapse_keeps_resnet152_small(models, tmp_path):
    small = svg_nodes(draw_model(models["resnet152"], tmp_path / "small.svg"))
    full = svg_nodes(draw_model(models["resnet152"], tmp_path / "full.svg", collapse=False))
    assert len(small) < 60 and len(full) > 250
    assert sum("⊕" in n for n in small) == 8  # the first block of each stage and one "× N" block
    assert sum("⊕" in n for n in full) == 50


def test_expanded_draws_every_block(models):
    source = model_graph(models["resnet20"], collapse=False).source
    assert count(source, "⊕") == 9 and "× " not in source
    assert "layer3.2" in source


def test_unsupported_suffix_is_a_clear_error(models, tmp_path):
    with pytest.raises(ValueError, match=r"\.svg or \.png"):
        draw_model(models["resnet20"], tmp_path / "net.jpg")
    assert not (tmp_path / "net.jpg").exists()
