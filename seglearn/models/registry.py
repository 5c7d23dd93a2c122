"""Model registry: ``create_model(name, num_classes, ...)`` and ``list_models()``."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a builder ``fn(num_classes, *, backbone, pretrained_backbone, aux_loss, **kw)``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is registered twice")
        _BUILDERS[name] = fn
        return fn

    return wrap


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    return sorted(_BUILDERS)


def create_model(
    name: str,
    num_classes: int,
    *,
    backbone: str | None = None,
    pretrained_backbone: bool = False,
    aux_loss: bool = False,
    **kwargs,
) -> nn.Module:
    """Build a registered model. ``backbone=None`` keeps the paper's backbone for that model.

    ``forward(x)`` of every model returns a dict with ``"out"`` logits (N, num_classes, H, W) at the input size,
    plus ``"aux"`` when ``aux_loss`` and model-specific extras (EncNet's ``"se"``).
    """
    key = name.lower()
    if key not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if backbone is not None:
        kwargs["backbone"] = backbone
    return _BUILDERS[key](num_classes, pretrained_backbone=pretrained_backbone, aux_loss=aux_loss, **kwargs)
