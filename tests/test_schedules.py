"""The poly learning-rate schedule: pinned values, side by side with torch's PolynomialLR, warm-up, state round trip."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch.optim.lr_scheduler import PolynomialLR

from seglearn.schedules import PolyLR, poly_factor


def _sgd(lr: float = 0.01) -> torch.optim.SGD:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=lr, momentum=0.9)


def _lrs(sched, opt, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_poly_values_pinned_to_the_papers_formula():
    # DeepLab/ParseNet: lr = base * (1 - iter / max_iter) ** 0.9
    assert poly_factor(0, 100) == 1.0
    assert poly_factor(50, 100) == pytest.approx(0.5**0.9, rel=1e-15)
    assert poly_factor(50, 100) == pytest.approx(0.535886731268146, rel=1e-12)
    assert poly_factor(99, 100) == pytest.approx(0.01**0.9, rel=1e-12)
    assert poly_factor(100, 100) == 0.0 and poly_factor(150, 100) == 0.0


def test_matches_torch_polynomial_lr_step_by_step():
    total = 37
    opt_a, opt_b = _sgd(0.05), _sgd(0.05)
    ours = _lrs(PolyLR(opt_a, total_iters=total, power=0.9), opt_a, total + 3)
    ref = _lrs(PolynomialLR(opt_b, total_iters=total, power=0.9), opt_b, total + 3)
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-15)
    assert ours[-1] == 0.0


def test_linear_warmup_ramps_from_ratio_to_the_poly_value():
    opt = _sgd(1.0)
    lrs = _lrs(PolyLR(opt, total_iters=100, power=0.9, warmup_iters=10, warmup_ratio=0.1), opt, 12)
    assert lrs[0] == pytest.approx(0.1)  # warmup_ratio * poly(0)
    assert lrs[5] == pytest.approx((0.1 + 0.9 * 5 / 10) * (1 - 5 / 100) ** 0.9)
    assert lrs[10] == pytest.approx((1 - 10 / 100) ** 0.9)  # warm-up over: plain poly
    assert all(b > a for a, b in zip(lrs[:10], lrs[1:11], strict=True))  # rising during the warm-up


def test_every_param_group_keeps_its_own_base_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}])
    sched = PolyLR(opt, total_iters=10)
    for _ in range(4):
        opt.step()
        sched.step()
    f = (1 - 4 / 10) ** 0.9
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1 * f, 0.01 * f])


def test_state_dict_is_plain_and_resumes_the_same_sequence():
    opt = _sgd(0.1)
    sched = PolyLR(opt, total_iters=20, warmup_iters=3)
    _lrs(sched, opt, 7)
    buf = io.BytesIO()
    torch.save({"sched": sched.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    rest = _lrs(sched, opt, 10)

    opt2 = _sgd(0.1)
    sched2 = PolyLR(opt2, total_iters=20, warmup_iters=3)
    opt2.load_state_dict(state["opt"])
    sched2.load_state_dict(state["sched"])
    assert _lrs(sched2, opt2, 10) == rest


@pytest.mark.parametrize(
    "kw", [{"total_iters": 0}, {"total_iters": 5, "warmup_iters": -1}, {"total_iters": 5, "warmup_ratio": 2.0}]
)
def test_bad_arguments_are_refused(kw):
    with pytest.raises(ValueError, match="total_iters|warmup"):
        PolyLR(_sgd(), **kw)


def test_power_one_is_linear_decay():
    assert [poly_factor(i, 4, power=1.0) for i in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]
    assert math.isclose(poly_factor(3, 4, power=2.0), 1 / 16)
