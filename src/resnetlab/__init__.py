"""resnetlab: residual networks of He et al. 2015 and 2016, exact models, fast training, and experiments."""

from .models import ResNet, UnknownModelError, cifar_resnet, count_parameters, create_model, list_models

__all__ = ["ResNet", "UnknownModelError", "cifar_resnet", "count_parameters", "create_model", "list_models"]
__version__ = "0.1.0"
