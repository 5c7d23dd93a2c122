"""Segmentation models: ``create_model(name, num_classes, ...)``, the registry of what each model supports, and
``from_torchvision``.

Importing this package imports every model module so that their ``@register_model`` builders are registered.
Adding a model is its file here (modules + a builder under ``@register_model(name, paper=..., quick=..., full=...)``),
its name in the import line below, and its test; the CLI, torch.hub, chapter 10 and the benchmarks read the registry.
"""

from . import (  # noqa: F401  (registration)
    deeplabv1,
    deeplabv3,
    encnet,
    enet,
    fcdensenet,
    fcn,
    gfrnet,
    linknet,
    pspnet,
    refinenet,
    segnet,
    tinyfcn,
    unet,
    upernet,
)
from .convert import from_torchvision
from .registry import (
    ModelInfo,
    Recipe,
    comparison_roster,
    create_model,
    full_recipes,
    list_models,
    model_info,
    register_model,
)
from .segmentation_model import SegmentationModel, count_parameters, logits_of, resize_to

__all__ = [
    "ModelInfo",
    "Recipe",
    "SegmentationModel",
    "comparison_roster",
    "count_parameters",
    "create_model",
    "from_torchvision",
    "full_recipes",
    "list_models",
    "logits_of",
    "model_info",
    "register_model",
    "resize_to",
]
