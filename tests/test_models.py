"""The named models: the papers' parameter counts and multiply-adds, torchvision parity, the registry."""

import warnings

import numpy as np
import pytest
import torch
import torchvision

from resnetlab import ResNet, UnknownModelError, cifar_resnet, count_parameters, create_model, list_models
from resnetlab.blocks import BasicBlock, Bottleneck
from resnetlab.model_summary import count_macs, non_trainable_count

CIFAR_PARAMS = {
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
    "resnet1202": 19_421_274,
}
IMAGENET_PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}
# The 2015 paper's Table 1, in multiply-adds (it calls them FLOPs), stride on the first 1x1.
PAPER_GMACS = {"resnet18": 1.8, "resnet34": 3.6, "resnet50": 3.8, "resnet101": 7.6, "resnet152": 11.3}


def on_meta(name: str, **kwargs) -> torch.nn.Module:
    """Build without allocating weights: counting needs only shapes."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


@pytest.mark.parametrize("name, expected", {**CIFAR_PARAMS, **IMAGENET_PARAMS}.items())
def test_parameter_counts(name, expected):
    assert count_parameters(on_meta(name)) == expected


@pytest.mark.parametrize("name, paper", [("preact_resnet164", 1.7e6), ("preact_resnet1001", 10.2e6),
                                         ("resnet164", 1.7e6), ("resnet1001", 10.2e6)])
def test_bottleneck_cifar_parameter_counts_match_2016_paper(name, paper):
    """The 2016 paper's counts (to 0.1 M) are those of the convolutions and the classifier: with the batch
    norms' scales and shifts, ResNet-1001 has 10.33 M (the 2015 paper's Table 6 counts include them)."""
    model = on_meta(name)
    assert count_parameters(model) == pytest.approx(paper, rel=0.02)
    weighted = sum(p.numel() for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for p in m.parameters())
    assert round(weighted / 1e5) == round(paper / 1e5)
    assert all(isinstance(b, Bottleneck) for b in model.blocks())  # Table 3's nets, not 6n+2 basic-block ones
    assert model.preact == name.startswith("preact")


@pytest.mark.parametrize("name", ["resnet200", "preact_resnet200"])
def test_resnet200_has_200_layers(name):
    model = on_meta(name)
    assert 2 + sum(len(b.convs) for b in model.blocks()) == 200 and model.preact == name.startswith("preact")


def test_resnet200_is_torchvision_layout():
    torch.manual_seed(200)
    reference = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, [3, 24, 36, 3]).eval()
    ours = create_model("resnet200").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    assert count_parameters(ours) == 64_673_832
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-5)


def test_signs_resnet50_counts_like_keras():
    m = on_meta("signs_resnet50")
    assert count_parameters(m) == 23_546_886
    assert non_trainable_count(m) == 53_120
    assert count_parameters(m) + non_trainable_count(m) == 23_600_006
    assert create_model("signs_resnet50")(torch.randn(2, 3, 64, 64)).shape == (2, 6)


def test_signs_resnet50_starts_as_keras_initialises_it():
    torch.manual_seed(0)
    m = create_model("signs_resnet50", mixing="gate")
    # Glorot uniform: bound sqrt(6 / (fan_in + fan_out)), fans counting the kernel's k*k positions.
    for conv, fan_in, fan_out in ((m.conv1, 3 * 49, 64 * 49), (m.layer4[0].conv3, 512, 2048), (m.fc, 2048, 6)):
        bound = (6 / (fan_in + fan_out)) ** 0.5
        weight = conv.weight.detach()
        assert weight.abs().max() <= bound and weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
        assert torch.count_nonzero(conv.bias) == 0
    # Keras's BatchNormalization(momentum=0.99) keeps 0.99 of its moving statistics: PyTorch's 0.01.
    assert {bn.momentum for bn in m.modules() if isinstance(bn, torch.nn.BatchNorm2d)} == {0.01}
    assert torch.all(m.layer1[0].gate.bias == -6)  # the gate's own start, not Keras's zero bias
    assert create_model("resnet50").bn1.momentum == 0.1  # torchvision's nets keep PyTorch's
    # Short runs of the notebook's net can take PyTorch's momentum, whose running statistics settle sooner.
    assert {bn.momentum for bn in create_model("signs_resnet50", bn_momentum=0.1).modules()
            if isinstance(bn, torch.nn.BatchNorm2d)} == {0.1}
    assert create_model("resnet20", bn_momentum=None).bn1.momentum is None  # a cumulative average, as PyTorch's None
    with pytest.raises(ValueError, match="bn_momentum is the share of each batch's statistics"):
        create_model("resnet20", bn_momentum=1.5)


@pytest.mark.parametrize("name, gmacs", PAPER_GMACS.items())
def test_paper_multiply_adds(name, gmacs):
    macs = count_macs(on_meta(name, stride_in_1x1=True), (3, 224, 224))
    assert macs / 1e9 == pytest.approx(gmacs, rel=0.02)


def test_torchvision_stride_multiply_adds():
    assert count_macs(on_meta("resnet50"), (3, 224, 224)) / 1e9 == pytest.approx(4.09, abs=0.01)


@pytest.mark.parametrize("depth", [18, 34, 50, 101, 152])
def test_torchvision_state_dict_loads_and_matches(depth):
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")().eval()
    ours = create_model(f"resnet{depth}").eval()
    # The same keys in the same order: converters that pair tensors by position work too.
    assert [(k, v.shape) for k, v in ours.state_dict().items()] == [(k, v.shape) for k, v in reference.state_dict().items()]
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert (ours(x) - reference(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("name, kwargs", [("resnet18", {}), ("resnet50", {}), ("resnet50", {"zero_init_residual": True}),
                                          ("resnet34", {"num_classes": 10})])
def test_the_same_seed_gives_torchvisions_initial_weights(name, kwargs):
    """Kaiming normal on the fan-out for convs, BN at 1 and 0, PyTorch's default fc, drawn in the same
    order: a comparison with torchvision from scratch starts from the very same network."""
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(**kwargs).state_dict()
    torch.manual_seed(0)
    ours = create_model(name, **kwargs).state_dict()
    assert all(torch.equal(ours[k], v) for k, v in reference.items())


def test_a_frozen_backbone_counts_only_its_head_as_trainable():
    """The fine-tuner's count: requires_grad=False takes a weight out of the trainable count, not the total."""
    model = create_model("resnet18", num_classes=10)
    for p in model.parameters():
        p.requires_grad = False
    model.reset_classifier(10)
    assert count_parameters(model) == 512 * 10 + 10
    assert count_parameters(model, trainable_only=False) == 11_181_642  # torchvision's resnet18 with a 10-class fc


def test_cifar_models_classify_small_images():
    for name in ["resnet20", "plain20", "preact_resnet110", "preact_resnet164"]:
        m = create_model(name)
        assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10), name
    m = create_model("resnet20", num_classes=10, in_chans=1)
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_generic_cifar_constructor_builds_any_valid_depth():
    assert len(cifar_resnet(74).blocks()) == 36
    assert len(cifar_resnet(83, block="bottleneck", preact=True).blocks()) == 27
    assert len(create_model("resnet74").blocks()) == 36
    assert not create_model("plain74").residual
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(21)


def test_plain_models_have_no_shortcuts():
    m = create_model("plain56")
    assert all(b.downsample is None and not b.residual for b in m.blocks())
    assert count_parameters(m) == CIFAR_PARAMS["resnet56"]  # option A adds no parameters


@pytest.mark.parametrize("name", ["resnet110", "preact_resnet164", "resnet50"])
def test_gradient_reaches_the_first_layer(name):
    m = create_model(name, num_classes=10)
    size = 64 if name == "resnet50" else 32
    m(torch.randn(4, 3, size, size)).logsumexp(1).sum().backward()
    assert m.conv1.weight.grad is not None and m.conv1.weight.grad.abs().sum() > 0


def test_zero_init_residual():
    m = create_model("resnet50", zero_init_residual=True)
    assert all(torch.count_nonzero(b.bn3.weight) == 0 for b in m.blocks())


def test_list_models_has_every_family():
    names = set(list_models())
    expected = {
        *CIFAR_PARAMS, *IMAGENET_PARAMS, "plain20", "plain32", "plain44", "plain56", "plain110",
        "preact_resnet110", "preact_resnet164", "preact_resnet1001", "signs_resnet50",
        *(f"preact_resnet{d}" for d in (18, 34, 50, 101, 152)),
    }
    assert expected <= names
    assert list_models("resnet*")[:3] == ["resnet18", "resnet20", "resnet32"]


def test_unknown_model_lists_close_names():
    with pytest.raises(UnknownModelError, match="resnet50"):
        create_model("resnet05")
    with pytest.raises(UnknownModelError, match="did you mean"):
        create_model("resent20")


def test_torch_hub_entry_points():
    """Every registered model loads through torch.hub from a checkout, with create_model's arguments."""
    import importlib.util
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("hubconf", repo / "hubconf.py")
    hubconf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hubconf)
    # What torch.hub.list shows: the module's public callables.
    entries = {name for name in dir(hubconf) if callable(getattr(hubconf, name)) and not name.startswith("_")}
    assert entries == set(list_models()) | {"create_model"}
    assert "CIFAR" in hubconf.resnet56.__doc__
    model = torch.hub.load(str(repo), "resnet56", source="local", num_classes=7, in_chans=1)
    assert model.fc.out_features == 7 and model.conv1.in_channels == 1
    model = torch.hub.load(str(repo), "create_model", "resnet74", source="local")  # a depth no entry names
    assert len(model.blocks()) == 36


def test_list_models_with_published_weights():
    assert list_models(pretrained=True) == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]
    assert list_models("resnet1??", pretrained=True) == ["resnet101", "resnet152"]  # not resnet110: no weights


def test_list_models_takes_several_patterns_and_exclusions_as_timms_does():
    assert list_models(["plain1*", "plain2*"]) == ["plain18", "plain20", "plain110"]
    assert list_models("preact*", exclude_filters="*1*") == ["preact_resnet34", "preact_resnet50", "preact_resnet200"]


def test_num_classes_zero_is_reset_classifier_zero():
    """timm's num_classes=0: no classifier, the pooled features out, as reset_classifier(0) gives."""
    torch.manual_seed(0)
    headless = create_model("resnet18", num_classes=0).eval()
    assert headless.num_classes == 0 and isinstance(headless.get_classifier(), torch.nn.Identity)
    assert not any(k.startswith("fc.") for k in headless.state_dict())
    reset = create_model("resnet18").eval()
    reset.load_state_dict(headless.state_dict(), strict=False)
    reset.reset_classifier(0)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        pooled = headless(x)
        assert pooled.shape == (2, 512)
        torch.testing.assert_close(pooled, reset(x))
        torch.testing.assert_close(pooled, headless.forward_head(headless.forward_features(x)))


def test_numpy_numbers_and_any_sequence_are_taken_as_plain_ints():
    m = create_model("resnet20", num_classes=np.int64(7), in_chans=np.int32(1))
    assert type(m.num_classes) is int and m.num_classes == 7 and m.fc.out_features == 7 and m.conv1.in_channels == 1
    m = ResNet(BasicBlock, np.array([1, 2]), widths=range(8, 24, 8), num_classes=3, stem="cifar", gate_bias=np.float32(-2))
    assert [len(s) for s in m.stages()] == [1, 2] and m.num_features == 16
    assert m(torch.randn(1, 3, 8, 8)).shape == (1, 3)
    for bad in ({"num_classes": True}, {"num_classes": 2.0}, {"layers": "11"}, {"layers": np.array([1.0, 2.0])}):
        with pytest.raises(TypeError, match="must be"):  # the wrong kind of value, as Python names it
            ResNet(**{"block": BasicBlock, "layers": [1, 1], "widths": [8, 16], **bad})


def test_torchvisions_positional_num_classes_is_explained():
    with pytest.raises(TypeError, match="third argument is widths.*num_classes=10 by keyword"):
        ResNet(BasicBlock, [2, 2, 2, 2], 10)



def test_a_block_is_named_or_given_as_its_class():
    """ResNet takes "basic"/"bottleneck" as cifar_resnet and create_model do, and builds the same net."""
    torch.manual_seed(0)
    by_name = ResNet("bottleneck", [1, 1], widths=[8, 16], num_classes=3)
    torch.manual_seed(0)
    by_class = ResNet(Bottleneck, [1, 1], widths=[8, 16], num_classes=3)
    assert all(torch.equal(a, b) for a, b in zip(by_name.state_dict().values(), by_class.state_dict().values()))
    assert isinstance(ResNet("basic", [1], widths=[8]).layer1[0], BasicBlock)
    with pytest.raises(ValueError, match="block must be one of 'basic', 'bottleneck', got 'Basic'"):
        ResNet("Basic", [1], widths=[8])
    with pytest.raises(TypeError, match="block must be BasicBlock, Bottleneck .* not 3"):
        ResNet(3, [1], widths=[8])
@pytest.mark.parametrize("name, option, message", [
    ("resnet18", {"layers": [1, 1, 1, 1]}, "resnet18 fixes layers; .*ResNet\\(block, layers"),
    ("resnet18", {"block": "bottleneck"}, "resnet18 fixes block"),
    ("resnet20", {"stem": "imagenet"}, "resnet20 fixes stem"),
    ("resnet74", {"layers": [1, 1, 1]}, "resnet74 fixes layers"),
    ("signs_resnet50", {"block": BasicBlock}, "signs_resnet50 fixes block"),
    ("preact_resnet18", {"preact": False}, "fixes preact=True; use create_model\\('resnet18', preact=False\\)"),
    ("preact_resnet18", {"order": "post"}, "fixes order='preact'; use create_model\\('resnet18', order='post'\\)"),
    ("plain18", {"residual": True}, "fixes residual=False; use create_model\\('resnet18', residual=True\\)"),
    ("plain20", {"residual": True}, "fixes residual=False; use create_model\\('resnet20', residual=True\\)"),
])
def test_what_a_name_fixes_is_refused_in_one_line(name, option, message):
    with pytest.raises(ValueError, match=message):
        on_meta(name, **option)


def test_options_that_repeat_a_name_or_leave_it_free_still_build():
    assert on_meta("preact_resnet18", preact=True, order="preact").preact
    assert not on_meta("plain20", residual=False).residual
    assert on_meta("resnet18", order="preact").preact  # resnet18 leaves the order free
    assert [len(s) for s in on_meta("resnet110", block="bottleneck").stages()] == [12, 12, 12]  # and CIFAR nets the block
    with pytest.raises(TypeError, match="no resnet18 option depht") as error:
        on_meta("resnet18", depht=18)
    options = str(error.value).split("the options are ")[1].split(", ")
    assert "widths" in options and not {"block", "layers"} & set(options)


def test_options_that_would_do_nothing_or_build_an_empty_stage_are_refused():
    with pytest.raises(ValueError, match="every stage needs at least one block and one plane"):
        ResNet(BasicBlock, [2, 0, 2, 2])
    with pytest.raises(ValueError, match="out_indices chooses a backbone's feature maps: give features_only=True too"):
        create_model("resnet18", out_indices=[1, 2])
    assert create_model("resnet18", layers=(2, 2, 2, 2)).num_stages == 4  # what resnet18 fixes, as a tuple


def test_contradicting_preact_and_order_is_refused():
    with pytest.raises(ValueError, match="contradicts order='relu_preact'"):
        ResNet(BasicBlock, [1, 1], widths=[8, 16], preact=True, order="relu_preact")
    assert ResNet(BasicBlock, [1, 1], widths=[8, 16], preact=True, order="preact").preact


def test_the_keras_layout_says_which_image_size_it_takes():
    model = create_model("signs_resnet50", layers=[1, 1, 1, 1], widths=[4, 4, 4, 4]).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 6)
        with pytest.raises(ValueError, match="takes 64x64 images"):
            model(torch.randn(1, 3, 224, 224))
        # 96x96 leaves a 3x3 map, which the 2x2 pool would have read a corner of without a word.
        with pytest.raises(ValueError, match="takes 64x64 images"):
            model(torch.randn(1, 3, 96, 96))
        with pytest.raises(ValueError, match="takes 64x64 images"):
            create_model("signs_resnet50", layers=[1, 1, 1, 1], widths=[4, 4, 4, 4], num_classes=0)(torch.randn(1, 3, 128, 128))
    # torch.fx traces the check (as a torch._assert: no branch on a shape), and the traced net answers as the net.
    from torchvision.models.feature_extraction import create_feature_extractor

    traced = create_feature_extractor(model, return_nodes={"fc": "logits"})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(traced(x)["logits"], model(x))
    with pytest.raises(AssertionError, match="takes 64x64 images"), torch.no_grad():  # the traced check: torch._assert's
        traced(torch.randn(1, 3, 96, 96))
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes"):  # other models keep fc's own message
        create_model("resnet18").forward_head(torch.randn(1, 256, 7, 7))


@pytest.mark.parametrize("name, kwargs, size", [
    ("resnet20", {"num_classes": 10}, 32), ("preact_resnet18", {}, 64), ("signs_resnet50", {}, 64),
    ("resnet18", {"features_only": True, "out_indices": [1, 3]}, 64),
])
def test_trace_export_and_compile_give_the_eager_outputs(name, kwargs, size):
    """README's promise: torch.jit.trace, torch.export and torch.compile (one whole graph) take every kind of net."""
    torch.manual_seed(0)
    model = create_model(name, **kwargs).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        expected = model(x)
        trace = torch.jit.trace(model, x, strict=False)
        traced = trace(x)
        exported = torch.export.export(model, (x,)).module()(x)
        compiled = torch.compile(model, backend="aot_eager", fullgraph=True)(x)
    for got in (traced, exported, compiled):
        for a, b in zip(got if isinstance(got, (list, tuple)) else [got], expected if isinstance(expected, list) else [expected]):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # A TracerWarning from the models' own code would mean a branch the trace froze.
    assert [str(w.message) for w in caught if "resnetlab" in w.filename] == []
    if name == "signs_resnet50":  # the trace keeps the 2x2 check: a 4x4 map (128x128 image) is refused, not pooled
        with pytest.raises(RuntimeError, match=r"shape '\[1, 2048, 2, 2\]' is invalid"), torch.no_grad():
            trace(torch.randn(1, 3, 128, 128))


def test_a_cifar_depth_past_ten_thousand_layers_is_refused_before_it_fills_memory():
    """`resnet99999998` (a typo's extra digits) would build 50 million blocks, gigabytes a second, until
    the machine runs out: refused at once, by name and by function (experiments' depths go through the
    same rule, cifar_blocks_per_stage)."""
    for build in (lambda: create_model("resnet99999998"), lambda: cifar_resnet(10_004),
                  lambda: create_model("preact_resnet100001")):
        with pytest.raises(ValueError, match=r"CIFAR nets are built up to 10,000 layers \(the papers' deepest has 1,202\)"):
            build()
    assert count_parameters(create_model("resnet1202")) == 19_421_274  # the paper's deepest (19.4M) still builds


def test_a_block_given_as_a_class_keeps_the_shortcut_of_its_kind():
    """A researcher's BasicBlock subclass in a CIFAR net: option A as the paper's basic blocks, else a
    comparison with resnet20 would also be one of shortcut options."""
    from resnetlab.blocks import BasicBlock, Bottleneck

    class Scaled(BasicBlock):
        pass

    assert count_parameters(cifar_resnet(20, block=BasicBlock)) == count_parameters(cifar_resnet(20)) == 269_722
    assert count_parameters(create_model("resnet20", block=Scaled)) == 269_722
    assert count_parameters(cifar_resnet(164, block=Bottleneck)) == count_parameters(cifar_resnet(164, block="bottleneck"))
    with pytest.raises(ValueError, match="depth 21 is not 6n\\+2 for Scaled blocks"):
        cifar_resnet(21, block=Scaled)


def test_stochastic_depth_skips_each_images_branch_with_its_blocks_chance():
    """Huang et al. 2016 with timm's rule: block k of L skips its branch, image by image, with chance
    drop_path_rate * k / (L - 1), and scales the branches it keeps by 1 / (1 - p); eval mode is untouched."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    model = create_model("resnet20", drop_path_rate=0.5)
    assert [b.drop_path for b in model.blocks()] == pytest.approx(np.linspace(0, 0.5, 9).tolist())
    torch.manual_seed(0)
    same_weights = create_model("resnet20")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same_weights.state_dict().values()))
    x = torch.randn(4, 3, 32, 32)
    assert torch.equal(model.eval()(x), same_weights.eval()(x))

    block = model.layer3[2].train()  # p = 0.5, behind an identity shortcut: out = relu(x + kept * F(x) / 0.5)
    x = torch.randn(2000, 64, 8, 8)
    with torch.no_grad():
        branch, out = block._branch(x)[0], block(x)
    skipped = torch.isclose(out, F.relu(x)).flatten(1).all(1)
    kept = torch.isclose(out, F.relu(x + branch / 0.5), atol=1e-5).flatten(1).all(1)
    assert (skipped ^ kept).all()  # each image one or the other
    assert 0.45 < skipped.float().mean() < 0.55  # 0.5 +- 4.5 binomial standard deviations
    assert not model.layer1[0].drop_path  # the first block always runs


def test_dropout_before_the_classifier_is_timms_drop_rate():
    torch.manual_seed(0)
    model = create_model("resnet20", drop_rate=0.25).train()
    features = torch.rand(500, 64, 8, 8)
    pooled = features.mean((2, 3))
    dropped = model.forward_head(features, pre_logits=True)
    zeroed = dropped == 0
    assert 0.2 < zeroed.float().mean() < 0.3
    torch.testing.assert_close(dropped[~zeroed], (pooled / 0.75)[~zeroed])
    assert torch.equal(model.eval().forward_head(features, pre_logits=True), pooled)
    for bad in ({"drop_rate": 1.0}, {"drop_path_rate": -0.1}):
        with pytest.raises(ValueError, match="is a probability below 1"):
            create_model("resnet20", **bad)
    with pytest.raises(ValueError, match="a plain net has none"):
        create_model("plain20", drop_path_rate=0.1)

    class OwnForward(BasicBlock):
        def forward(self, x):
            return super().forward(x)

    with pytest.raises(ValueError, match="which OwnForward overrides: override _branch instead"):
        cifar_resnet(20, block=OwnForward, drop_path_rate=0.1)
    assert cifar_resnet(20, block=OwnForward).layer1[0].drop_path == 0  # without it, nothing to leave out
