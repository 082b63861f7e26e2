"""The backbone API timm users reach for: feature maps by stage, features_only, the classifier's hooks."""

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from resnetlab import create_model


def test_intermediates_equal_torchvisions_feature_extractor():
    """resnet50's stem and stage outputs are those torchvision's feature extractor takes from its own resnet50."""
    ours = create_model("resnet50").eval()
    theirs = torchvision.models.resnet50()
    theirs.load_state_dict(ours.state_dict())
    nodes = {"relu": "stem", "layer1": "1", "layer2": "2", "layer3": "3", "layer4": "4"}
    extractor = create_feature_extractor(theirs.eval(), return_nodes=nodes)
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = list(extractor(x).values())
        got = ours.forward_intermediates(x, intermediates_only=True)  # all five, as timm's
    assert len(got) == 5
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("name, side", [("resnet18", 96), ("resnet50", 96), ("plain34", 96), ("preact_resnet50", 96),
                                        ("resnet20", 32), ("preact_resnet164", 32), ("signs_resnet50", 64)])
def test_feature_info_describes_the_maps(name, side):
    model = create_model(name).eval()
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        final, maps = model.forward_intermediates(x, norm=True)
        assert [(m.shape[1], side // m.shape[-1]) for m in maps] == [(i["num_chs"], i["reduction"]) for i in model.feature_info]
        # With norm, the deepest map is what the classifier pools: a pre-activation net's after its final BN-ReLU.
        torch.testing.assert_close(maps[-1], model.forward_features(x))
        torch.testing.assert_close(final, model.forward_features(x))
        torch.testing.assert_close(model.forward_head(maps[-1]), model(x))
        raw = model.forward_intermediates(x, [-1], intermediates_only=True)[0]  # without norm, the last stage's sum
        assert torch.equal(raw, maps[-1]) != model.final_relu


def test_features_only_is_a_backbone_that_loads_a_classifiers_weights(tmp_path):
    full = create_model("resnet18").eval()
    path = tmp_path / "resnet18.pth"
    torch.save(full.state_dict(), path)
    backbone = create_model("resnet18", features_only=True, out_indices=(2, 4), weights=str(path)).eval()
    assert not any(k.startswith("fc.") for k in backbone.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        got = backbone(x)
        expected = full.forward_intermediates(x, (2, -1), intermediates_only=True)
    assert [m.shape[1] for m in got] == [128, 512] == backbone.feature_info.channels()
    assert backbone.feature_info.reduction() == [8, 32] and backbone.feature_info.module_name() == ["layer2", "layer4"]
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="from 0 \\(the stem\\) to 4"):
        create_model("resnet18", features_only=True, out_indices=(1, 5))
    with pytest.raises(ValueError, match="distinct"):
        full.forward_intermediates(x, (1, 1))
    with pytest.raises(ValueError, match="no classifier to reset"):
        backbone.reset_classifier(5)


def test_forward_intermediates_takes_timms_indices():
    """None: all five maps; n: the last n; negative indices count from the end; the final map comes first."""
    model = create_model("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        final, every = model.forward_intermediates(x)
        assert [m.shape[1] for m in every] == [64, 64, 128, 256, 512] and torch.equal(final, every[-1])
        for indices, expected in ((2, [3, 4]), ([-1], [4]), ([0, -2], [0, 3]), (5, [0, 1, 2, 3, 4])):
            got = model.forward_intermediates(x, indices, intermediates_only=True)
            assert len(got) == len(expected) and all(torch.equal(g, every[i]) for g, i in zip(got, expected))
        final, [stem, first] = model.forward_intermediates(x, [0, 1], stop_early=True)
        assert torch.equal(final, every[1])  # stopped after layer1


def test_a_backbone_keeps_no_stage_past_its_deepest_map(tmp_path):
    """timm's pruning: out_indices=(0, 2) of resnet50 has no layer3 or layer4, and published-style
    weights of the whole net load into it; its maps are the full net's."""
    full = create_model("resnet50").eval()
    path = tmp_path / "resnet50.pth"
    torch.save(full.state_dict(), path)
    backbone = create_model("resnet50", features_only=True, out_indices=(0, 2), weights=str(path)).eval()
    assert not any(k.startswith(("layer3.", "layer4.", "fc.")) for k in backbone.state_dict())
    assert sum(p.numel() for p in backbone.parameters()) < 1.5e6  # of resnet50's 25.6 million
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(backbone(x), full.forward_intermediates(x, (0, 2), intermediates_only=True)):
            torch.testing.assert_close(a, b)
    default = create_model("resnet18", features_only=True)
    assert default.feature_info.out_indices == (0, 1, 2, 3, 4)  # timm's default: the stem's map and every stage's
    full_preact = create_model("preact_resnet18").eval()
    with torch.no_grad():  # statistics of their own, so that the final BN is no identity
        full_preact.final_bn.running_mean.uniform_(-1, 1)
        full_preact.final_bn.running_var.uniform_(0.5, 2)
    torch.save(full_preact.state_dict(), tmp_path / "preact.pth")
    preact = create_model("preact_resnet18", features_only=True, out_indices=(1, 4), weights=str(tmp_path / "preact.pth")).eval()
    with torch.no_grad():  # a pre-activation net's last map as its classifier sees it (after the final BN-ReLU)
        torch.testing.assert_close(preact(x)[-1], full_preact.forward_features(x))


def test_reset_classifier():
    model = create_model("resnet20").eval()
    x = torch.randn(2, 3, 32, 32)
    model.reset_classifier(0)
    with torch.no_grad():
        pooled = model(x)
        assert pooled.shape == (2, model.num_features) and torch.equal(pooled, model.forward_head(model.forward_features(x), pre_logits=True))
    model.reset_classifier(7, "avg")  # timm's second argument, the papers' pooling
    assert model(x).shape == (2, 7) and model.get_classifier() is model.fc and model.num_classes == 7
    with pytest.raises(ValueError, match="pool by averaging.*forward_features"):
        model.reset_classifier(0, "")  # timm's way to the unpooled map
    assert model.num_classes == 7, "a refused reset changes nothing"


def test_a_backbone_is_drawn_ending_in_its_maps_and_is_not_trained():
    from resnetlab.diagram import model_graph
    from resnetlab.train import TrainConfig, train

    source = model_graph(create_model("resnet18", features_only=True, out_indices=(1, 4))).source
    assert "feature maps of layer1, layer4" in source and "classes" not in source
    with pytest.raises(ValueError, match="features_only builds a backbone without a classifier"):
        train(TrainConfig(model="resnet8", model_kwargs={"features_only": True}, steps=1, device="cpu", progress=False))


def test_a_pruned_backbone_refuses_the_stages_it_left_out():
    backbone = create_model("resnet18", features_only=True, out_indices=(1,)).eval()
    x = torch.randn(1, 3, 64, 64)
    assert backbone.num_classes == 0 and backbone.get_classifier() is None
    with torch.no_grad():
        maps = backbone.forward_intermediates(x, intermediates_only=True)  # every map it has: the stem's and layer1's
        assert [m.shape[1] for m in maps] == [i["num_chs"] for i in backbone.feature_info] == [64, 64]
        for indices in ([4], [-1], 1, [1, 2]):  # 1: the last map, layer4's
            with pytest.raises(ValueError, match="stage [24] was left out of this backbone \\(out_indices=\\(1,\\)\\); "
                                                 "build it with out_indices that include"):
                backbone.forward_intermediates(x, indices)
        with pytest.raises(ValueError, match="stage 4 was left out"):
            backbone.forward_features(x)
        with pytest.raises(ValueError, match="backbone has no head"):
            backbone.forward_head(maps[-1])


def test_indices_may_be_numpy_integers_ranges_and_arrays():
    model = create_model("resnet18").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model.forward_intermediates(x, [3, 4], intermediates_only=True)
        for indices in (np.int64(2), np.array([3, 4]), range(3, 5), (np.int32(-2), np.int64(-1))):
            got = model.forward_intermediates(x, indices, intermediates_only=True)
            assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, expected))
    for out_indices in (np.arange(1, 4), range(1, 4)):
        backbone = create_model("resnet18", features_only=True, out_indices=out_indices)
        assert backbone.out_indices == (1, 2, 3) and all(type(i) is int for i in backbone.out_indices)
    with pytest.raises(ValueError, match="feature indices are a whole number"):
        model.forward_intermediates(x, "12")


@pytest.mark.parametrize("features_only", [True, False])
def test_feature_info_names_the_modules_whose_outputs_the_maps_are(features_only):
    """torchvision's feature extractor, given feature_info's module names, takes what the backbone returns,
    a pre-activation net's last map after its final BN-ReLU included."""
    model = create_model("preact_resnet18", features_only=features_only).eval()
    extractor = create_feature_extractor(model, return_nodes=model.feature_info.module_name())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x) if features_only else model.forward_intermediates(x, norm=True, intermediates_only=True)
        got = list(extractor(x).values())
    assert model.feature_info.module_name()[-1] == "final_act" and len(got) == len(expected) == 5
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b)
