"""torch.hub entry points: ``torch.hub.load("<owner>/seglearn", "deeplabv3", num_classes=21)`` builds any registered
model (``source="local"`` with a checkout's path). Every keyword goes to :func:`seglearn.models.create_model`."""

from collections.abc import Callable as _Callable

from torch import nn as _nn

from seglearn.models import create_model as _create_model
from seglearn.models import list_models as _list_models

dependencies = ["torch", "torchvision", "numpy"]


def _entry(name: str) -> _Callable[..., _nn.Module]:
    def build(num_classes: int = 21, **kwargs) -> _nn.Module:
        return _create_model(name, num_classes, **kwargs)

    build.__name__ = name
    build.__doc__ = f"seglearn's {name!r}: create_model({name!r}, num_classes, **kwargs)."
    return build


for _name in _list_models():
    globals()[_name] = _entry(_name)
