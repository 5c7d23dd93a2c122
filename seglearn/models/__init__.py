"""Segmentation models: ``create_model(name, num_classes, ...)``, ``list_models()``, ``from_torchvision``.

Importing this package imports every model module so that their ``@register_model`` builders are registered.
"""

from . import deeplabv1, deeplabv3, encnet, fcn, segnet, tinyfcn, unet, upernet  # noqa: F401  (registration)
from .convert import from_torchvision
from .registry import create_model, list_models, register_model
from .shell import SegmentationModel, count_parameters, logits_of

__all__ = [
    "create_model",
    "from_torchvision",
    "list_models",
    "register_model",
    "SegmentationModel",
    "count_parameters",
    "logits_of",
]
