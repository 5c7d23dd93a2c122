"""How long a training run should take, estimated from its FLOPs before it starts (the cell of a FULL chapter prints
it, so that a learner on a short Colab session knows whether to cap it with ``setup_notebook(full_minutes=...)``).

The estimate is compute only: 3 forward passes per training image (forward + backward), counted by PyTorch's
``FlopCounterMode`` at the training crop, divided by the device's dense half-precision peak (what ``fit`` trains in
under autocast) times an assumed utilization. Data loading, validation and a slow first epoch come on top; a
measured run's ``History.epoch_time`` replaces it.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["PEAK_TFLOPS", "UTILIZATION", "device_peak_tflops", "forward_flops", "training_estimate"]

BACKWARD_FACTOR = 3  # forward + backward of a training step: about three forward passes
UTILIZATION = 0.3  # share of the peak a convolutional segmentation net sustains in training (an assumption)
# Dense bf16/fp16 tensor-core peaks in TFLOPS (NVIDIA's datasheets; SXM parts where there are two), by name fragment.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "A10": 125.0, "L4": 121.0,
               "T4": 65.0, "V100": 125.0, "P100": 18.7}  # fmt: skip
CPU_CORE_TFLOPS = 0.1  # fp32 FMA peak of one AVX2 core at ~3 GHz: 2 units x 8 lanes x 2 FLOPs x 3e9


def forward_flops(model: nn.Module, size: tuple[int, int], num_channels: int = 3) -> int:
    """FLOPs of one eval-mode forward pass of ``model`` on a (1, C, H, W) input, counted on PyTorch's meta device
    (a copy of the model without its weights' values: nothing is computed, the model itself is untouched)."""
    with torch.device("meta"):
        x = torch.empty(1, num_channels, *size)
    meta = copy.deepcopy(model).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        meta(x)
    return int(counter.get_total_flops())


def device_peak_tflops(device: torch.device) -> tuple[float | None, str]:
    """(peak TFLOPS or None when the GPU is not in :data:`PEAK_TFLOPS`, the device's name)."""
    from seglearn.record import device_name  # the name every record and the setup block print

    name = device_name(device)
    if device.type == "cuda":
        fragment = next((key for key in PEAK_TFLOPS if key in name.upper()), None)
        return (PEAK_TFLOPS[fragment] if fragment else None), name
    return torch.get_num_threads() * CPU_CORE_TFLOPS, name


def training_estimate(
    model: nn.Module, size: tuple[int, int], images: int, epochs: int, device: torch.device,
    minutes_cap: float | None = None,
) -> str:  # fmt: skip
    """One paragraph: the run's training FLOPs (``images`` per epoch at crop ``size``, ``epochs``) and the minutes
    they take on ``device`` at :data:`UTILIZATION` of its peak, labelled an estimate; with ``minutes_cap`` (the
    learner's ``full_minutes``) also where the cap stops the run and that running the cell again continues it."""
    try:
        flops = forward_flops(model, size)
    except Exception as err:  # a model the meta device cannot run: say so instead of failing the training cell
        return f"training-time estimate unavailable: FLOPs could not be counted ({type(err).__name__}: {err})"
    total = BACKWARD_FACTOR * flops * images * epochs
    peak, name = device_peak_tflops(device)
    work = (f"{BACKWARD_FACTOR} x {flops / 1e9:.1f} GFLOPs x {images} images x {epochs} epochs = "
            f"{total / 1e15:.2f} PFLOP")  # fmt: skip
    if peak is None:
        return (
            f"estimated training work: {work}; no peak throughput is known for {name} (seglearn.estimate."
            "PEAK_TFLOPS), so no time is estimated"
        )
    minutes = total / (peak * 1e12 * UTILIZATION) / 60
    text = (
        f"estimated training time (compute only, from FLOPs): {work} at {UTILIZATION:.0%} of {name}'s "
        f"{peak:g} TFLOPS peak = {_minutes(minutes)}; data loading and validation add to it"
    )
    if minutes_cap is not None:
        if minutes > minutes_cap:
            text += (
                f". full_minutes={minutes_cap:g} stops it after about {minutes_cap / minutes:.0%} of the epochs; "
                "run the cell again to continue from the checkpoint"
            )
        else:
            text += f". full_minutes={minutes_cap:g} should not stop it"
    return text


def _minutes(minutes: float) -> str:
    if minutes < 1:
        return "under a minute"
    if minutes < 90:
        return f"about {minutes:.0f} min"
    return f"about {minutes / 60:.1f} h"
