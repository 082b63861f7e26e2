"""torch.hub entry points, one per model: ``torch.hub.load(REPO, "resnet50", weights="DEFAULT")``.

Each takes the keyword arguments of ``resnetlab.create_model`` (weights, num_classes, in_chans,
features_only, the 2016 paper's variants, ...).
"""

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent / "src"))  # the package, when the checkout is not installed

from resnetlab.models import create_model as _create_model  # noqa: E402
from resnetlab.models import describe_model as _describe_model  # noqa: E402
from resnetlab.models import list_models as _list_models  # noqa: E402

dependencies = ["torch", "torchvision", "safetensors", "numpy"]


def _entry(name: str):
    def entry(**kwargs):
        return _create_model(name, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{_describe_model(name)}\n\nKeyword arguments are resnetlab.create_model's (weights=..., num_classes=..., ...)."
    return entry


for _name in _list_models():
    globals()[_name] = _entry(_name)


def create_model(name: str, **kwargs):
    """Any model by name, CIFAR depths built on the fly included: ``torch.hub.load(REPO, "create_model", "resnet74")``.

    Keyword arguments are resnetlab.create_model's."""
    return _create_model(name, **kwargs)
