"""DeepLabv3's second stage (Chen et al. 2017, Sec. 4.1): train at output stride 16, then fine-tune at output stride 8
with the BatchNorm layers frozen (their statistics and affine parameters), at a smaller learning rate.

``finetune_at_output_stride(model, train_loader, val_loader, epochs=..., lr=1e-3)`` switches a trained model's stride
in place (:meth:`~seglearn.models.deeplabv3.DeepLabV3.set_output_stride`: the weights stay, the dilations move),
freezes BatchNorm and runs :func:`seglearn.fit`. A batch at output stride 8 holds 4x the activations of one at 16,
which is why the paper trains at 16 with batch 16 and only fine-tunes at 8.
"""

from __future__ import annotations

import types
from typing import Any

from torch import nn

from .engine import fit
from .history import History

__all__ = ["freeze_batchnorm", "finetune_at_output_stride"]


def _stay_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def freeze_batchnorm(model: nn.Module) -> int:
    """Keep every BatchNorm layer of ``model`` in eval mode (running statistics used, never updated, also under
    ``model.train()``) and its weight and bias out of training. Returns the number of layers frozen."""
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train = types.MethodType(_stay_in_eval, module)  # model.train() reaches it and is ignored
            module.eval()
            for p in module.parameters():
                p.requires_grad_(False)
            count += 1
    return count


def finetune_at_output_stride(
    model: nn.Module, train_loader: Any, val_loader: Any = None, *, output_stride: int = 8, epochs: int,
    lr: float = 1e-3, **fit_kwargs: Any,
) -> History:  # fmt: skip
    """Switch ``model`` (a DeepLabv3 trained at another stride) to ``output_stride``, freeze its BatchNorm, and
    :func:`seglearn.fit` it for ``epochs`` at ``lr`` (the paper: 0.001); ``fit_kwargs`` go to fit (optimizer,
    checkpoint_dir, ...). ``model.model_spec`` records the new stride, so a saved model rebuilds at it."""
    if not hasattr(model, "set_output_stride"):
        raise TypeError(
            f"{type(model).__name__} has no set_output_stride: fine-tuning at another stride is DeepLabv3's"
        )
    model.set_output_stride(output_stride)
    spec = getattr(model, "model_spec", None)
    if spec is not None:
        model.model_spec = {**spec, "model_kwargs": {**spec.get("model_kwargs", {}), "output_stride": output_stride}}
    freeze_batchnorm(model)
    return fit(model, train_loader, val_loader, epochs=epochs, lr=lr, **fit_kwargs)
