"""torch.hub entry points: ``torch.hub.load("<owner>/seglearn", "deeplabv3", num_classes=21)`` builds any registered
model (``source="local"`` with a checkout's path); every keyword goes to :func:`seglearn.models.create_model`.
``weights="runs/deeplabv3/model.pt"`` instead returns that trained model (:func:`seglearn.load_model`)."""

from collections.abc import Callable as _Callable

from torch import nn as _nn

from seglearn.model_file import load_model as _load_model
from seglearn.models import create_model as _create_model
from seglearn.models import list_models as _list_models

dependencies = ["torch", "torchvision", "numpy"]


def _entry(name: str) -> _Callable[..., _nn.Module]:
    def build(num_classes: int = 21, weights: str | None = None, **kwargs) -> _nn.Module:
        if weights is None:
            return _create_model(name, num_classes, **kwargs)
        model, meta = _load_model(weights, return_meta=True)
        if meta["model_spec"]["model"] != name:
            raise ValueError(f"{weights} holds a {meta['model_spec']['model']!r}, not a {name!r}: load it by that name")
        return model

    build.__name__ = name
    build.__doc__ = f"seglearn's {name!r}: create_model({name!r}, num_classes, **kwargs)."
    return build


for _name in _list_models():
    globals()[_name] = _entry(_name)
