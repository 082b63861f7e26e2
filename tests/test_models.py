"""The named models: the papers' parameter counts and multiply-adds, torchvision parity, the registry."""

import pytest
import torch
import torchvision

from resnetlab import UnknownModelError, cifar_resnet, count_parameters, create_model, list_models
from resnetlab.blocks import Bottleneck
from resnetlab.summary import count_macs, non_trainable_count

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
