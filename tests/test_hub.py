"""hubconf.py as torch.hub users meet it: torchvision's entry-point conventions and help texts."""

import inspect
from pathlib import Path

import pytest
import torch

REPO = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def hubconf():
    from torch import hub

    return hub._import_module(hub.MODULE_HUBCONF, str(Path(REPO) / "hubconf.py"))


def test_entry_points_take_weights_and_progress_as_torchvision_s_do(hubconf):
    signature = inspect.signature(hubconf.resnet50)
    assert signature.parameters["weights"].default is None
    assert signature.parameters["weights"].kind is inspect.Parameter.KEYWORD_ONLY
    assert signature.parameters["progress"].default is True
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())


def test_help_names_each_model_s_own_weights(hubconf):
    """torch.hub.help prints the docstring: it says which tags this model takes, or that it has none."""
    doc = hubconf.resnet50.__doc__
    assert doc.startswith("ResNet-50 (2015 paper")
    for words in ("weights", "IMAGENET1K_V1", "IMAGENET1K_V2", "KERAS", "DEFAULT", "progress", "num_classes"):
        assert words in doc, (words, doc)
    assert "no published weights" in hubconf.resnet20.__doc__
    assert "IMAGENET1K" not in hubconf.resnet20.__doc__
    assert "resnet74" in hubconf.create_model.__doc__


def test_load_from_a_local_checkout():
    model = torch.hub.load(REPO, "resnet20", source="local", num_classes=7, in_chans=1, progress=False)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 7)
    deeper = torch.hub.load(REPO, "create_model", "resnet74", source="local", weights=None)
    assert len(deeper.layer1) == 12


def test_an_entry_point_loads_the_weights_it_is_given(tmp_path):
    torch.manual_seed(0)
    import resnetlab

    saved = resnetlab.create_model("resnet20", num_classes=7)
    torch.save(saved.state_dict(), tmp_path / "mine.pth")
    loaded = torch.hub.load(REPO, "resnet20", source="local", weights=str(tmp_path / "mine.pth"), progress=False)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), saved.state_dict().values()))
    assert loaded.num_classes == 7  # the file's classifier comes with it
