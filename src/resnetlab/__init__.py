"""resnetlab: residual networks of He et al. 2015 and 2016, exact models, fast training, and experiments.

The models are here; training is in ``resnetlab.train`` (``train``, ``resume``, ``TrainConfig``), so
that using the models alone never loads the trainer, the data readers or the plotting.

The names below are imported when first used (PEP 562), so that ``import resnetlab`` and the command
line's help do not wait for torch.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .data import DataError
    from .errors import ResnetlabError
    from .keras_weights import KerasError
    from .model_summary import summary
    from .models import ResNet, UnknownModelError, cifar_resnet, count_parameters, create_model, list_models
    from .pretrained import WeightsError
    from .runs import RunError
    from .train import Diverged

__version__ = "0.1.0"

__all__ = ["ResNet", "ResnetlabError", "UnknownModelError", "cifar_resnet", "count_parameters", "create_model", "list_models", "summary",
           "DataError", "Diverged", "KerasError", "RunError", "WeightsError"]
_WHERE = {  # each public name's module
    "ResNet": "models", "ResnetlabError": "errors", "UnknownModelError": "models", "cifar_resnet": "models", "count_parameters": "models",
    "create_model": "models", "list_models": "models", "summary": "model_summary",
    # Every kind of ResnetlabError, where a program that catches one would look for it first.
    "DataError": "data", "Diverged": "train", "KerasError": "keras_weights", "RunError": "runs", "WeightsError": "pretrained",
}


def __getattr__(name: str) -> object:
    """A public name, imported from its module when first used; a submodule (``resnetlab.models``) too."""
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    # The submodules too, found without importing them, so that tab completion offers resnetlab.train.
    submodules = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    return sorted({*globals(), *__all__, *submodules} - {"TYPE_CHECKING", "annotations", "importlib", "pkgutil"})
