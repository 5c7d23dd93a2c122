"""seglearn.measure: the FLOPs, time and memory of one training step, checked on a network whose costs are known."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from seglearn.measure import saved_activation_bytes, training_step_cost


class OneConv(nn.Module):
    """A 3x3 convolution, 3 -> ``classes`` channels, returning the models' output dict."""

    def __init__(self, classes: int = 4, aux: bool = False) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, 3, padding=1, bias=False)
        self.aux = nn.Conv2d(3, classes, 1, bias=False) if aux else None

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"out": self.conv(x)}
        if self.aux is not None:
            out["aux"] = self.aux(x)
        return out


def test_flops_per_image_time_and_memory_of_one_step():
    model = OneConv().eval()
    cost = training_step_cost(model, (8, 10), num_classes=4, batch=3)
    assert set(cost) == {"gflops", "step_s", "mem_mib", "memory"}
    # a multiply-add counts 2: 2 x in x out x 3 x 3 per output pixel, per image (the batch of 3 divided out)
    assert cost["gflops"] == pytest.approx(2 * 3 * 4 * 9 * 8 * 10 / 1e9)
    assert cost["step_s"] > 0 and cost["memory"] == "autograd saved tensors"
    # saved for backward: the conv's input (3x3x8x10 floats) and what cross-entropy keeps; never the weight
    assert 3 * 3 * 8 * 10 * 4 / 2**20 <= cost["mem_mib"] < 1
    assert model.training and all(p.grad is None for p in model.parameters())  # measured, not trained


def test_parameters_are_not_counted_as_saved_activations():
    small, wide = OneConv(4), OneConv(4)
    wide.big = nn.Parameter(torch.zeros(1_000_000))  # 4 MB of weights that take no part in the forward
    a = training_step_cost(small, (8, 10), 4)["mem_mib"]
    b = training_step_cost(wide, (8, 10), 4)["mem_mib"]
    assert a == pytest.approx(b)
    x = torch.randn(2, 3, 5, 5)
    with saved_activation_bytes(small) as saved:
        small(x)["out"].sum()
    assert sum(saved.values()) == x.numel() * 4  # the conv saves its input; its weight is left out


def test_aux_head_and_custom_loss_and_warmup():
    calls = []

    def loss(out, target):
        calls.append(sorted(out))
        return out["out"].float().mean() + out["aux"].float().mean()

    model = OneConv(aux=True)
    cost = training_step_cost(model, (6, 6), num_classes=4, batch=2, warmup=True, loss=loss)
    assert calls == [["aux", "out"], ["aux", "out"]]  # warm-up step, then the measured one
    # both heads' convolutions are forward FLOPs of the model
    assert cost["gflops"] == pytest.approx((2 * 3 * 4 * 9 + 2 * 3 * 4) * 36 / 1e9)
    default = training_step_cost(model, (6, 6), num_classes=4)  # SegLoss with its aux term
    assert default["gflops"] == pytest.approx(cost["gflops"])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reports_peak_allocation():
    cost = training_step_cost(OneConv().cuda(), (32, 32), num_classes=4)
    assert cost["memory"] == "GPU peak allocated" and cost["mem_mib"] > 0
