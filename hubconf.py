"""torch.hub entry points, one per model: ``torch.hub.load(REPO, "resnet50", weights="DEFAULT")``.

Each takes torchvision's ``weights`` and ``progress`` and the other keyword arguments of
``resnetlab.create_model`` (num_classes, in_chans, features_only, the 2016 paper's variants, ...).
"""

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent / "src"))  # the package, when the checkout is not installed

from resnetlab.models import create_model as _create_model  # noqa: E402
from resnetlab.models import describe_model as _describe_model  # noqa: E402
from resnetlab.models import list_models as _list_models  # noqa: E402
from resnetlab.pretrained import TORCHVISION_MODELS as _TORCHVISION_MODELS  # noqa: E402
from resnetlab.pretrained import published_tags as _published_tags  # noqa: E402

dependencies = ["torch", "torchvision", "safetensors", "numpy"]

_FILES = "a weights file (.safetensors, a torch.save state_dict, a run's checkpoint.pt{})"


def _weights_doc(name: str) -> str:
    """What ``weights=`` takes for this model: torch.hub.help shows it, as torchvision's docstrings do."""
    tags = _published_tags(name)
    files = _FILES.format(", a Keras model" if "KERAS" in tags or name == "signs_resnet50" else "")
    if not tags:
        return f"None (random initial weights, the default) or {files}; {name} has no published weights."
    choices = ", ".join(f'"{tag}"' for tag in ["DEFAULT", *tags])
    enum = f", torchvision's {name.replace('resnet', 'ResNet')}_Weights" if name in _TORCHVISION_MODELS else ""
    return f"None (random initial weights, the default), {choices}{enum}, or {files}."


def _entry(name: str):
    def entry(*, weights=None, progress=True, **kwargs):
        return _create_model(name, weights=weights, progress=progress, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"""{_describe_model(name)}

    Args:
        weights: {_weights_doc(name)}
        progress: show a download's progress bar (default True).
        **kwargs: resnetlab.create_model's: num_classes, in_chans, features_only, zero_init_residual, ...
    """
    return entry


for _name in _list_models():
    globals()[_name] = _entry(_name)


def create_model(name: str, **kwargs):
    """Any model by name, CIFAR depths built on the fly included: ``torch.hub.load(REPO, "create_model", "resnet74")``.

    Keyword arguments are resnetlab.create_model's (weights=..., progress=..., num_classes=..., ...)."""
    return _create_model(name, **kwargs)
