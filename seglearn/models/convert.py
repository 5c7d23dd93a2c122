"""``from_torchvision``: the seglearn model equal to a torchvision segmentation model, carrying its weights."""

from __future__ import annotations

from torch import nn


def from_torchvision(tv_model: nn.Module) -> nn.Module:
    """Build the seglearn twin of a torchvision ``fcn_resnet*`` / ``deeplabv3_resnet*`` model (same outputs).

    The returned model is in the same train/eval mode as ``tv_model``. Raises ``TypeError`` for other models.
    """
    from torchvision.models.segmentation import FCN, DeepLabV3

    from . import deeplabv3, fcn

    if isinstance(tv_model, FCN):
        model = fcn.from_torchvision_fcn(tv_model)
    elif isinstance(tv_model, DeepLabV3):
        model = deeplabv3.from_torchvision_deeplabv3(tv_model)
    else:
        raise TypeError(
            f"from_torchvision supports torchvision's FCN and DeepLabV3 (fcn_resnet50/101, deeplabv3_resnet50/101); "
            f"got {type(tv_model).__name__}"
        )
    return model.train(tv_model.training)
