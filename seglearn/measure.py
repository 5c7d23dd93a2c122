"""What one training step of a model costs: FLOPs, wall time and memory, on the device the model is on.

Chapter 10 puts every model of the series through :func:`training_step_cost` to compare them on more than their
scores. On a GPU the memory is CUDA's peak allocation during the step (weights, gradients and activations); on a
CPU, where PyTorch keeps no allocator statistics, it is the bytes of the tensors autograd saves for the backward
pass, the part of training memory that grows with the image.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from .losses import SegLoss

__all__ = ["saved_activation_bytes", "training_step_cost"]


@contextmanager
def saved_activation_bytes(model: nn.Module) -> Iterator[dict[int, int]]:
    """Collect the storages autograd saves for backward while the block runs: ``{data_ptr: nbytes}``, each storage
    once, the model's parameters left out (they are resident anyway). Sum the values after the block."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield saved


def training_step_cost(
    model: nn.Module,
    size: tuple[int, int],
    num_classes: int,
    *,
    batch: int = 2,
    warmup: bool | None = None,
    loss: Callable[[Any, Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """One measured training step (forward, loss, backward) of ``model`` on random images (batch, 3, H, W) and labels
    (batch, H, W), on the model's device; nothing is updated and the gradients are cleared afterwards.

    ``warmup`` (default: on CUDA only) runs one unmeasured step first: a GPU's first step pays for cuDNN autotuning
    and allocator growth. ``loss`` defaults to :class:`~seglearn.losses.SegLoss` (its aux term included when the
    model returns ``"aux"``). Returns ``{"gflops": forward GFLOPs per image, "step_s": the step's wall time,
    "mem_mib": memory in MiB, "memory": what that memory is}``.
    """
    device = next(model.parameters()).device
    x = torch.randn(batch, 3, *size, device=device)
    y = torch.randint(0, num_classes, (batch, *size), device=device)
    loss_fn = loss if loss is not None else SegLoss()
    model.train()
    if warmup if warmup is not None else device.type == "cuda":
        model.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
    model.zero_grad(set_to_none=True)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    counter = FlopCounterMode(display=False)
    with saved_activation_bytes(model) as saved:
        with counter:
            out = model(x)
        loss_fn(out, y).backward()
    if cuda:
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    memory = torch.cuda.max_memory_allocated(device) if cuda else sum(saved.values())
    model.zero_grad(set_to_none=True)
    return {
        "gflops": counter.get_total_flops() / batch / 1e9,
        "step_s": seconds,
        "mem_mib": memory / 2**20,
        "memory": "GPU peak allocated" if cuda else "autograd saved tensors",
    }
