"""The step schedule (x0.1 every N iterations, the Caffe solvers of FCN and DeepLab-v1) and per-layer learning-rate
multipliers (DeepLab-v1's 10x on the classifier): values, param groups, and both through fit, resume and the CLI."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from seglearn.cli import main, parse_train_job
from seglearn.engine import fit
from seglearn.job import JobError, TrainJob
from seglearn.schedules import StepDecayLR, build_optimizer, build_schedule, parse_schedule


def _lrs(opt, sched, n: int, group: int = 0) -> list[float]:
    out = []
    for _ in range(n):
        out.append(opt.param_groups[group]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_decay_is_x0_1_every_n_iterations():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-3, momentum=0.9)
    lrs = _lrs(opt, StepDecayLR(opt, step_iters=3), 9)
    assert lrs == pytest.approx([1e-3] * 3 + [1e-4] * 3 + [1e-5] * 3)


def test_step_decay_warmup_then_steps_and_state_round_trip():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = StepDecayLR(opt, step_iters=4, gamma=0.5, warmup_iters=2, warmup_ratio=0.0)
    assert _lrs(opt, sched, 6) == pytest.approx([0.0, 0.5, 1.0, 1.0, 0.5, 0.5])
    other = StepDecayLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), step_iters=1)
    other.load_state_dict(sched.state_dict())
    assert other.get_lr() == sched.get_lr() and other.step_iters == 4
    sched.set_total_iters(100)  # a planned run: the step schedule has no end to move
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize("text, parsed", [("poly", ("poly", 0, 0.0)), ("step:2000", ("step", 2000, 0.1)),
                                          ("step:10:0.5", ("step", 10, 0.5))])  # fmt: skip
def test_parse_schedule(text, parsed):
    assert parse_schedule(text) == parsed


@pytest.mark.parametrize("bad", ["cosine", "step", "step:0", "step:x", "step:10:2", "poly:3"])
def test_a_bad_schedule_names_the_choices(bad):
    with pytest.raises(ValueError, match="poly, fixed, step:N"):
        parse_schedule(bad)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 4, 3, padding=1)
        self.classifier = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.classifier(torch.relu(self.features(x)))


def test_fixed_keeps_one_rate_after_the_warmup():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1e-4)
    assert _lrs(opt, build_schedule("fixed", opt, total_iters=4), 6) == pytest.approx([1e-4] * 6)


def test_lr_mult_puts_the_prefix_in_its_own_group_at_the_multiplied_rate():
    net = Net()
    opt = build_optimizer("sgd", net, 1e-3, lr_mult={"classifier": 10})
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-2])
    assert {id(p) for p in opt.param_groups[1]["params"]} == {id(p) for p in net.classifier.parameters()}
    assert sum(len(g["params"]) for g in opt.param_groups) == 4  # every parameter once
    # The schedule scales each group by its own base rate: the ratio stays 10 all the way down.
    sched = build_schedule("step:2", opt, total_iters=10)
    base, head = _lrs(opt, sched, 5, 0), [g["lr"] for g in opt.param_groups][1]
    assert base[-1] == pytest.approx(1e-5) and head == pytest.approx(1e-4)


def test_lr_mult_refuses_a_prefix_that_matches_nothing_and_bad_values():
    with pytest.raises(ValueError, match="'fc8' matches no trainable parameter.*features, classifier"):
        build_optimizer("sgd", Net(), 1e-3, lr_mult={"fc8": 10})
    with pytest.raises(ValueError, match="must be a number > 0"):
        build_optimizer("sgd", Net(), 1e-3, lr_mult={"classifier": 0})
    with pytest.raises(ValueError, match="matches no"):  # a prefix is whole names up to a dot: "class" is not one
        build_optimizer("sgd", Net(), 1e-3, lr_mult={"class": 10})


def _loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    images, masks = torch.randn(8, 3, 8, 8, generator=g), torch.randint(0, 3, (8, 8, 8), generator=g)
    return DataLoader(TensorDataset(images, masks), batch_size=4)


def test_fit_trains_with_the_step_schedule_and_multipliers_and_refuses_another_on_resume(tmp_path):
    torch.manual_seed(0)
    net = Net()
    kw = dict(epochs=2, lr=1e-2, device="cpu", progress=False, checkpoint_dir=tmp_path, num_classes=3)
    history = fit(net, _loader(), schedule="step:3", lr_mult={"classifier": 10.0}, **kw)
    assert history.lr[0] == pytest.approx(1e-2)  # group 0's rate: 2 steps, then step 3 is the first at x0.1
    saved = torch.load(tmp_path / "last.pt", weights_only=True)
    assert saved["recipe"]["schedule"] == "step:3" and saved["recipe"]["lr_mult"] == {"classifier": 10.0}
    groups = saved["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 1e-2])  # after 4 steps: one x0.1 each
    with pytest.raises(ValueError, match="schedule"):
        fit(Net(), _loader(), schedule="poly", lr_mult={"classifier": 10.0}, resume=True, **{**kw, "epochs": 3})


def test_the_cli_passes_schedule_and_lr_mult_and_run_json_reproduces_them(tmp_path):
    out = tmp_path / "run"
    argv = ["train", "--model", "tinyfcn", "--model-arg", "width=8", "--num-images", "8", "--crop", "32",
            "--batch-size", "4", "--workers", "0", "--epochs", "1", "--schedule", "step:1", "--lr-mult",
            "head=10", "--out", str(out)]  # fmt: skip
    job = parse_train_job(argv)
    assert job.schedule == "step:1" and job.lr_mult == {"head": 10.0}
    assert main(argv) == 0
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["recipe"]["lr_mult"] == {"head": 10.0}
    command = json.loads((out / "run.json").read_text())["command"]
    assert "--schedule step:1" in command and "--lr-mult head=10" in command
    # A job built in Python spells both as the command line would
    args = TrainJob("tinyfcn", schedule="step:5", lr_mult={"head": 2}).command_args()
    assert args[args.index("--schedule") + 1] == "step:5" and args[args.index("--lr-mult") + 1] == "head=2.0"


@pytest.mark.parametrize("kw, message", [({"schedule": "cos"}, "--schedule"),
                                         ({"lr_mult": {"head": -1}}, "--lr-mult takes PREFIX=MULT"),
                                         ({"lr_mult": ["head"]}, "--lr-mult takes PREFIX=MULT")])  # fmt: skip
def test_bad_schedule_and_lr_mult_options_are_job_errors(kw, message):
    with pytest.raises(JobError, match=message):
        TrainJob("tinyfcn", **kw)
