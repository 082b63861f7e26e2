"""resnetlab: residual networks of He et al. 2015 and 2016, exact models, fast training, and experiments.

The models are here; training is in ``resnetlab.train`` (``train``, ``resume``, ``TrainConfig``), so
that using the models alone never loads the trainer, the data readers or the plotting.
"""

from .models import ResNet, UnknownModelError, cifar_resnet, count_parameters, create_model, list_models
from .summary import summary

__all__ = ["ResNet", "UnknownModelError", "cifar_resnet", "count_parameters", "create_model", "list_models", "summary"]
__version__ = "0.1.0"
