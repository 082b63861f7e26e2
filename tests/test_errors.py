"""Every error resnetlab raises for a problem the user can fix derives from ResnetlabError, so that
one ``except`` catches them; each is raised here by a real call."""

import pytest

import resnetlab
from resnetlab import ResnetlabError
from resnetlab.data import DataError, get_dataset
from resnetlab.keras_weights import KerasError, read_keras
from resnetlab.pretrained import WeightsError, pretrained_info
from resnetlab.runs import RunError, load_model
from resnetlab.train import Diverged, Interrupted


def test_each_kind_of_error_is_caught_as_a_resnetlab_error(tmp_path):
    not_keras = tmp_path / "model.h5"
    not_keras.write_bytes(b"not an HDF5 file")
    calls = {
        resnetlab.UnknownModelError: lambda: resnetlab.create_model("resnet5"),
        RunError: lambda: load_model(tmp_path / "no-such-run"),
        DataError: lambda: get_dataset(f"folder:{tmp_path / 'no-such-folder'}"),
        WeightsError: lambda: pretrained_info("resnet50", "IMAGENET1K_V9"),
        KerasError: lambda: read_keras(not_keras),
    }
    for kind, call in calls.items():
        with pytest.raises(ResnetlabError) as caught:
            call()
        assert type(caught.value) is kind, f"{kind.__name__}: got {type(caught.value).__name__}: {caught.value}"
    # A diverged run (raised in test_train) too; code that caught these by their older bases still does.
    assert issubclass(Diverged, ResnetlabError) and issubclass(Diverged, RuntimeError)
    assert issubclass(resnetlab.UnknownModelError, ValueError)
    assert not issubclass(Interrupted, ResnetlabError)  # a run stopped on request did not fail


def test_every_kind_is_at_the_top_of_the_package_too():
    """README: "subclasses of resnetlab.ResnetlabError (DataError, RunError, ...)": reachable as written."""
    kinds = {"DataError": DataError, "RunError": RunError, "WeightsError": WeightsError, "KerasError": KerasError,
             "Diverged": Diverged, "UnknownModelError": resnetlab.UnknownModelError}
    for name, kind in kinds.items():
        assert getattr(resnetlab, name) is kind and name in resnetlab.__all__
        assert issubclass(kind, ResnetlabError)

