"""ONNX export: every registered model runs in onnxruntime with the same logits as in PyTorch, at another size
than the one it was traced at (a shape frozen into the graph would show up there)."""

from __future__ import annotations

import pytest
import torch

from seglearn.export import check_onnx, export_onnx
from seglearn.models import create_model, list_models

pytest.importorskip("onnxruntime")

# Small variants where the model has them (the graph is the same; the file and the test are smaller).
SMALL = {
    "fcn": {"backbone": "resnet18"},
    "unet": {"base_channels": 8},
    "deeplabv3": {"backbone": "resnet18"},
    "encnet": {"backbone": "resnet18"},
    "upernet": {"backbone": "resnet18", "channels": 64},
    "pspnet": {"backbone": "resnet18", "channels": 32},
    "refinenet": {"backbone": "resnet18", "channels": 16, "top_channels": 32},
    "gfrnet": {"backbone": "vgg16_bn", "width": 8},
    **{f"fcdensenet{n}": {"growth_rate": 4, "stem_channels": 8, "layers": (1,) * 11} for n in (56, 67, 103)},
}
# What cannot export with a dynamic height and width, and why (each still exports at a fixed size, tested below).
FIXED_SIZE = {
    "upernet": "pyramid pooling to 2x2/3x3/6x6 bins (adaptive average pooling) has no ONNX operator that sizes its "
    "windows at run time",
    "pspnet": "the same pyramid pooling as upernet's",
}
# FCN-32s and FCN-16s are FCN-8s with fewer skips: each VGG16 FCN is a 540 MB graph, so only FCN-8s is exported.
NOT_EXPORTED_HERE = {"fcn32s": "same graph as fcn8s minus skips", "fcn16s": "same graph as fcn8s minus a skip"}
DYNAMIC = [n for n in list_models() if n not in FIXED_SIZE and n not in NOT_EXPORTED_HERE]


def _model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = create_model(name, 5, **SMALL.get(name, {})).eval()
    with torch.no_grad():  # FCN's score layers start at zero: give every output something to compare
        for p in model.parameters():
            if not p.abs().any():
                p.normal_(0, 0.01)
    return model


def _tolerance(model: torch.nn.Module) -> float:
    x = torch.randn(2, 3, 72, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        scale = float(model(x)["out"].abs().max())
    return 1e-4 * max(scale, 1e-3)  # float32 kernels differ in summation order: 1e-4 of the logits' range


@pytest.mark.parametrize("name", DYNAMIC)
def test_onnx_export_matches_pytorch_at_another_size(tmp_path, name):
    model = _model(name)
    path = export_onnx(model, tmp_path / f"{name}.onnx", sample_size=(64, 96))
    assert check_onnx(model, path, size=(72, 100), batch=2) <= _tolerance(model)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no temporary file left


@pytest.mark.parametrize("name", sorted(FIXED_SIZE))
def test_fixed_size_export_where_onnx_cannot_size_the_pooling(tmp_path, name):
    model = _model(name)
    with pytest.raises(RuntimeError, match="dynamic_size=False"):
        export_onnx(model, tmp_path / "dynamic.onnx")
    # ONNX pools to fixed bins only when they divide the feature map: 192 / 32 = 6 cells for bins 1, 2, 3 and 6
    path = export_onnx(model, tmp_path / f"{name}.onnx", sample_size=(192, 192), dynamic_size=False)
    assert check_onnx(model, path, size=(192, 192), batch=2) <= _tolerance(model)


def test_every_registered_model_is_accounted_for():
    assert set(DYNAMIC) | set(FIXED_SIZE) | set(NOT_EXPORTED_HERE) == set(list_models())
