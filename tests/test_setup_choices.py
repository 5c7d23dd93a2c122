"""setup_notebook's choices without environment variables (mode, checkpoint root, a per-cell FULL time cap that
resumes) and the FULL training-time estimate computed from FLOPs."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

import seglearn
from seglearn.estimate import UTILIZATION, forward_flops, training_estimate
from seglearn.notebook import setup_notebook


def test_bad_choices_are_refused_naming_the_argument(monkeypatch, tmp_path):
    monkeypatch.setenv("SEGLEARN_DATA", str(tmp_path))
    with pytest.raises(ValueError, match=r"mode='fast' is not a run mode; set it to QUICK or FULL"):
        setup_notebook(mode="fast", quiet=True)
    for bad in (0, -5, float("inf")):
        with pytest.raises(ValueError, match="full_minutes=.* must be a positive number of minutes"):
            setup_notebook(full_minutes=bad, quiet=True)
    monkeypatch.setenv("SEGLEARN_MODE", "QUICK")
    assert setup_notebook(mode="full", device="cpu", quiet=True).mode == "FULL"  # the argument wins


def _tiny_run(cfg, **kwargs):
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (8, 16, 24), generator=g)
    data = TensorDataset(torch.randn(8, 3, 16, 24, generator=g), masks)
    torch.manual_seed(0)
    model = seglearn.create_model("tinyfcn", 3, width=8)
    train = DataLoader(data, batch_size=2, shuffle=True, generator=torch.Generator().manual_seed(1))
    return seglearn.fit(model, train, DataLoader(data, batch_size=4), epochs=3, lr=0.1, seed=0, device="cpu",
                        progress=False, live_plot=False, **kwargs)  # fmt: skip


def test_full_minutes_stops_a_training_cell_and_running_it_again_continues(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SEGLEARN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SEGLEARN_PRETRAINED", "0")
    monkeypatch.chdir(tmp_path)
    cfg = setup_notebook(mode="FULL", device="cpu", checkpoint_root=tmp_path / "drive", full_minutes=1e-9,
                         quiet=True)  # fmt: skip
    recipe = {"model": "tinyfcn", "width": 8, "epochs": 3}
    first = _tiny_run(cfg, **cfg.checkpoints("tiny", **recipe))  # a cap shorter than one step: one step, saved
    assert first.stopped_early and first.partial_steps == 1 and (tmp_path / "drive" / "tiny" / "last.pt").is_file()
    runs = [first]
    while runs[-1].stopped_early:  # the learner runs the cell again, as often as it takes
        runs.append(_tiny_run(cfg, **cfg.checkpoints("tiny", **recipe)))
        assert len(runs) <= 13, "each rerun must train at least one more step"  # 12 steps in all
    assert "resuming tiny from" in capsys.readouterr().out
    whole = _tiny_run(cfg)
    assert runs[-1].epochs == whole.epochs == 3 and runs[-1].train_images == whole.train_images
    assert runs[-1].val[-1].miou == pytest.approx(whole.val[-1].miou)


def test_forward_flops_on_the_meta_device_equal_a_real_forward_pass():
    model = seglearn.create_model("unet", 11, base_channels=8, depth=3).eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(torch.randn(1, 3, 48, 64))
    assert forward_flops(model, (48, 64)) == counter.get_total_flops() > 0
    assert next(model.parameters()).device.type == "cpu"  # the model itself stays where it was


def test_the_estimate_reads_the_gpus_peak_and_says_what_full_minutes_does(monkeypatch):
    model = seglearn.create_model("unet", 11)  # the paper's: 260 GFLOPs at 360x480
    flops = forward_flops(model, (360, 480))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    text = training_estimate(model, (360, 480), 367, 100, torch.device("cuda"), minutes_cap=1)
    minutes = 3 * flops * 367 * 100 / (65e12 * UTILIZATION) / 60
    assert f"{3 * flops * 367 * 100 / 1e15:.2f} PFLOP" in text and "Tesla T4's 65 TFLOPS peak" in text
    assert f"about {minutes:.0f} min" in text and "estimated" in text
    assert f"full_minutes=1 stops it after about {1 / minutes:.0%} of the epochs; run the cell again" in text
    assert "should not stop it" in training_estimate(model, (360, 480), 367, 100, torch.device("cuda"), 60)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert "no peak throughput is known for Some Future GPU" in training_estimate(
        model, (360, 480), 367, 100, torch.device("cuda")
    )


def test_cfg_estimate_prints_in_full_only(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SEGLEARN_DATA", str(tmp_path))
    monkeypatch.setenv("SEGLEARN_PRETRAINED", "0")
    model = seglearn.create_model("tinyfcn", 3, width=8)
    loader = DataLoader(TensorDataset(torch.randn(6, 3, 32, 48), torch.zeros(6, 32, 48, dtype=torch.long)))
    assert setup_notebook(mode="QUICK", device="cpu", quiet=True).estimate(model, loader, 5) is None
    assert capsys.readouterr().out == ""
    text = setup_notebook(mode="FULL", device="cpu", quiet=True).estimate(model, loader, 5)
    assert text is not None and capsys.readouterr().out == text + "\n"
    assert f"{forward_flops(model, (32, 48)) / 1e9:.1f} GFLOPs x 6 images x 5 epochs" in text
