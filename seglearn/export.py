"""Export a trained model out of PyTorch: ONNX with a dynamic batch size, height and width.

``python -m seglearn export runs/unet/model.pt --onnx unet.onnx`` (or :func:`export_onnx` from Python) writes one ONNX
graph with input ``image`` (N, 3, H, W) float32, ImageNet-normalized as seglearn's transforms make it, and output
``logits`` (N, C, H, W). The graph is traced at ``sample_size`` with TorchScript's ONNX exporter, so every
shape-dependent step of the model (padding to a multiple of its stride, cropping back, resizing to the input) must be
written with tensor operations for other sizes to work; :func:`check_onnx` runs the file in onnxruntime at another
size and compares it with PyTorch.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import IO

import torch
from torch import Tensor, nn

from seglearn.atomic import write_file

__all__ = ["OPSET", "export_onnx", "check_onnx"]

OPSET = 17  # ONNX opset 17: supported by onnxruntime >= 1.14 and by TensorRT 8.6 and later


class _Logits(nn.Module):
    """The model's main logits as a bare tensor (ONNX outputs are tensors, not dicts)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return out["out"] if isinstance(out, dict) else out


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    sample_size: tuple[int, int] = (64, 96),
    dynamic_size: bool = True,
    opset: int = OPSET,
) -> Path:
    """Write ``model`` (in eval mode, on the CPU) as ONNX to ``path``, atomically; the batch size is dynamic, and so
    are height and width unless ``dynamic_size=False`` (the graph then takes ``sample_size`` images only: needed for
    adaptive pooling to bins other than 1, as in UPerNet's pyramid pooling, which ONNX cannot size at run time; the
    bins must divide the pooled map, e.g. 192x192 for bins 1, 2, 3, 6 at stride 32).

    Returns the path. Raises RuntimeError naming the model when the exporter cannot trace it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = _Logits(model).cpu().eval()
    x = torch.zeros(1, 3, *sample_size)
    dims = {0: "batch", 2: "height", 3: "width"} if dynamic_size else {0: "batch"}

    def write(f: IO[bytes]) -> None:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # TracerWarnings about Python ints in shape arithmetic, checked below
            torch.onnx.export(
                net, (x,), f, input_names=["image"], output_names=["logits"], opset_version=opset,
                dynamic_axes={"image": dims, "logits": dims}, dynamo=False,
            )  # fmt: skip

    try:
        write_file(path, write)  # atomic: a killed export leaves the previous file
    except Exception as err:
        hint = " (adaptive pooling: try dynamic_size=False)" if "adaptive" in str(err) else ""
        raise RuntimeError(f"ONNX export of {type(model).__name__} failed{hint}: {type(err).__name__}: {err}") from err
    return path


def check_onnx(model: nn.Module, path: str | os.PathLike, size: tuple[int, int] = (72, 100), batch: int = 2) -> float:
    """Largest absolute difference between onnxruntime's logits for ``path`` and ``model``'s, on random input of
    ``size`` (another size than the export's, so that a shape frozen into the graph shows up)."""
    import onnxruntime as ort

    x = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(["logits"], {"image": x.numpy()})[0])
    with torch.no_grad():
        want = _Logits(model).cpu().eval()(x)
    if got.shape != want.shape:
        raise ValueError(f"ONNX logits have shape {tuple(got.shape)}, PyTorch's {tuple(want.shape)}")
    return float((got - want).abs().max())
