"""``setup_notebook``: run mode from the environment, seeding, the printed block, and the chapter data loaders."""

from __future__ import annotations

import os
import random
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pytest
import torch

import seglearn
from seglearn.notebook import (
    QUICK_CAP_S,
    QUICK_SIZE,
    NotebookConfig,
    env_seconds,
    run_mode,
    setup_notebook,
    spread,
    use_pretrained,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGLEARN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def no_camvid(monkeypatch, tmp_path):
    """Point every place seglearn looks for data at empty folders."""
    monkeypatch.setenv("SEGLEARN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SEGLEARN_SHARED_DATA", str(tmp_path / "shared"))


@pytest.fixture
def shared_camvid_only(monkeypatch, tmp_path):
    """Only the shared real CamVid is visible (skips when it is not on this machine)."""
    if not (SHARED_DATA / "camvid" / "train").is_dir():
        pytest.skip(f"real CamVid not present at {SHARED_DATA / 'camvid'}")
    monkeypatch.setenv("SEGLEARN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SEGLEARN_SHARED_DATA", str(SHARED_DATA))
    return SHARED_DATA / "camvid"


@pytest.mark.parametrize(
    "env, device, expected",
    [
        (None, "cpu", "QUICK"),
        (None, "cuda", "FULL"),
        ("full", "cpu", "FULL"),
        (" Quick ", "cuda", "QUICK"),
        ("", "cpu", "QUICK"),
    ],
)
def test_mode_comes_from_env_else_from_the_device(monkeypatch, env, device, expected):
    if env is None:
        monkeypatch.delenv("SEGLEARN_MODE", raising=False)
    else:
        monkeypatch.setenv("SEGLEARN_MODE", env)
    assert run_mode(torch.device(device)) == expected


def test_unknown_mode_is_refused_with_the_choices(monkeypatch, no_camvid):
    monkeypatch.setenv("SEGLEARN_MODE", "fast")
    with pytest.raises(ValueError, match="set it to QUICK or FULL"):
        setup_notebook()


def test_setup_prints_one_block_and_seeds_everything(monkeypatch, no_camvid, capsys, tmp_path):
    monkeypatch.setenv("SEGLEARN_MODE", "QUICK")
    mpl.rcParams["image.interpolation"] = "antialiased"
    cfg = seglearn.setup_notebook(seed=3)  # the lazy top-level export
    drawn = (random.random(), np.random.rand(), torch.rand(2))
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    assert drawn[0] == random.random() and drawn[1] == np.random.rand() and torch.equal(drawn[2], torch.rand(2))

    text = capsys.readouterr().out
    assert 2 <= len(text.strip().splitlines()) <= 5
    for needle in (torch.__version__, seglearn.__version__, "torchvision", "python", "seed: 3", "mode: QUICK"):
        assert needle in text, needle
    assert str(tmp_path / "data") in text and "SyntheticScenes" in text
    assert mpl.rcParams["image.interpolation"] == "nearest"  # label maps stay crisp

    assert isinstance(cfg, NotebookConfig)
    assert (cfg.mode, cfg.quick, cfg.seed, cfg.device.type) == ("QUICK", True, 3, "cpu")
    assert cfg.data_root == tmp_path / "data" and cfg.camvid_root is None
    assert cfg.pick(quick=2, full=50) == 2


def test_full_mode_picks_the_full_value(monkeypatch, no_camvid):
    monkeypatch.setenv("SEGLEARN_MODE", "FULL")
    monkeypatch.delenv("SEGLEARN_PRETRAINED", raising=False)
    cfg = setup_notebook(quiet=True)
    assert cfg.mode == "FULL" and not cfg.quick and cfg.pick(quick=2, full=50) == 50
    assert cfg.pretrained  # FULL starts from ImageNet weights unless told otherwise


@pytest.mark.parametrize(
    ("env", "mode", "expected"),
    [(None, "FULL", True), (None, "QUICK", False), ("0", "FULL", False), (" No", "FULL", False),
     ("1", "QUICK", True), ("TRUE", "QUICK", True), ("", "FULL", True)],
)  # fmt: skip
def test_pretrained_switch_comes_from_env_else_from_the_mode(monkeypatch, env, mode, expected):
    if env is None:
        monkeypatch.delenv("SEGLEARN_PRETRAINED", raising=False)
    else:
        monkeypatch.setenv("SEGLEARN_PRETRAINED", env)
    assert use_pretrained(mode) is expected


def test_from_scratch_full_mode_says_so_and_refuses_a_bad_switch(monkeypatch, no_camvid, capsys):
    monkeypatch.setenv("SEGLEARN_MODE", "FULL")
    monkeypatch.setenv("SEGLEARN_PRETRAINED", "0")
    cfg = setup_notebook()
    assert not cfg.pretrained and "backbones: from scratch" in capsys.readouterr().out
    monkeypatch.setenv("SEGLEARN_PRETRAINED", "maybe")
    with pytest.raises(ValueError, match="set it to 1 .* or 0"):
        setup_notebook(quiet=True)


def test_quick_without_camvid_falls_back_to_synthetic_scenes(monkeypatch, no_camvid):
    monkeypatch.setenv("SEGLEARN_MODE", "QUICK")
    cfg = setup_notebook(seed=1, quiet=True)
    train, val, info = cfg.camvid_loaders(crop=(64, 96), batch_size=4, quick_train=10, quick_val=3)
    assert info.source == info["source"] == "synthetic"
    assert (info.num_classes, len(info.classes), info.palette.shape) == (11, 11, (11, 3))
    assert info.classes[3] == "Road" and info.ignore_index == 255
    assert (len(train.dataset), len(val.dataset), info.train_size, info.val_size) == (10, 3, 10, 3)
    images, masks = next(iter(train))
    assert images.shape == (4, 3, 64, 96) and images.dtype == torch.float32
    assert masks.shape == (4, 64, 96) and masks.dtype == torch.long
    assert set(masks.unique().tolist()) <= set(range(11)) | {255}
    assert len(train) == 2  # drop_last: no batch of one reaches BatchNorm
    images, masks = next(iter(val))
    assert images.shape == (3, 3, *QUICK_SIZE) and masks.shape == (3, *QUICK_SIZE)


def test_quick_loaders_are_reproducible_for_a_seed(monkeypatch, no_camvid):
    monkeypatch.setenv("SEGLEARN_MODE", "QUICK")
    batches = []
    for _ in range(2):
        cfg = setup_notebook(seed=5, quiet=True)
        train, _, _ = cfg.camvid_loaders(crop=48, batch_size=2, quick_train=4, quick_val=2)
        batches.append(next(iter(train)))
    assert torch.equal(batches[0][0], batches[1][0]) and torch.equal(batches[0][1], batches[1][1])


def test_quick_clips_a_full_size_crop_to_the_quick_frame(monkeypatch, no_camvid):
    monkeypatch.setenv("SEGLEARN_MODE", "QUICK")
    cfg = setup_notebook(quiet=True)
    train, _, _ = cfg.camvid_loaders(crop=(360, 480), batch_size=2, quick_train=2, quick_val=1)
    assert next(iter(train))[0].shape == (2, 3, *QUICK_SIZE)


def test_bad_crop_is_refused(monkeypatch, no_camvid):
    monkeypatch.setenv("SEGLEARN_MODE", "QUICK")
    cfg = setup_notebook(quiet=True)
    with pytest.raises(ValueError, match="crop must be"):
        cfg.camvid_loaders(crop=(0, 10))


def test_quick_spreads_its_images_over_real_camvid(monkeypatch, shared_camvid_only):
    monkeypatch.setenv("SEGLEARN_MODE", "QUICK")
    cfg = setup_notebook(quiet=True)
    assert cfg.camvid_root == shared_camvid_only
    train, val, info = cfg.camvid_loaders(crop=(96, 128), batch_size=3, quick_train=6, quick_val=2)
    assert info.source == "camvid" and (info.train_size, info.val_size) == (6, 2)
    # every 61st train frame and val frames 0 and 50: six streets, not six views of the first one
    assert list(train.dataset.indices) == [0, 61, 122, 183, 244, 305] and list(val.dataset.indices) == [0, 50]
    images, masks = next(iter(train))
    assert images.shape == (3, 3, 96, 128) and masks.shape == (3, 96, 128)
    images, masks = next(iter(val))
    assert images.shape == (2, 3, *QUICK_SIZE) and masks.shape == (2, *QUICK_SIZE)
    assert set(masks.unique().tolist()) <= set(range(11)) | {255}


def test_full_uses_all_of_camvid_at_full_size(monkeypatch, shared_camvid_only):
    monkeypatch.setenv("SEGLEARN_MODE", "FULL")
    cfg = setup_notebook(device="cpu", quiet=True)
    train, val, info = cfg.camvid_loaders(crop=(256, 320), batch_size=2, workers=0)
    assert info.source == "camvid" and (info.train_size, info.val_size) == (367, 101)
    assert train.dataset.preloaded and val.dataset.preloaded  # FULL decodes each PNG once, not once per epoch
    assert next(iter(train))[0].shape == (2, 3, 256, 320)
    images, masks = next(iter(val))
    assert images.shape == (2, 3, 360, 480) and masks.shape == (2, 360, 480)


# ---------------------------------------------------------------- checkpoints: FULL runs that survive a disconnect
RECIPE = {"model": "tinyfcn", "width": 8, "epochs": 2, "lr": 0.1, "crop": (16, 24)}


def _tiny_fit(cfg: NotebookConfig, epochs: int = 2, budget: float | None = None, **fit_kwargs):
    """tinyfcn (width 8) on 8 random 16x24 scenes with 3 classes, built the same way every call."""
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    masks = torch.randint(0, 3, (8, 4, 6), generator=g).repeat_interleave(4, 1).repeat_interleave(4, 2)
    images = torch.eye(3)[masks].permute(0, 3, 1, 2) + 0.5 * torch.randn(8, 3, 16, 24, generator=g)
    data = TensorDataset(images, masks)
    train = DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    model = seglearn.create_model("tinyfcn", 3, width=8)
    history = seglearn.fit(model, train, DataLoader(data, batch_size=4), epochs=epochs, lr=0.1, seed=0, device="cpu",
                           time_budget_s=budget, progress=False, live_plot=False, **fit_kwargs)  # fmt: skip
    return model, history


@pytest.fixture
def full_cfg(monkeypatch, no_camvid, tmp_path):
    """A FULL-mode config on the CPU, working in an empty folder (checkpoints land in tmp_path/runs/checkpoints)."""
    monkeypatch.setenv("SEGLEARN_MODE", "FULL")
    monkeypatch.setenv("SEGLEARN_PRETRAINED", "0")
    monkeypatch.chdir(tmp_path)
    return setup_notebook(device="cpu", quiet=True)


def test_quick_runs_take_no_checkpoints(monkeypatch, no_camvid, tmp_path, capsys):
    monkeypatch.setenv("SEGLEARN_MODE", "QUICK")
    monkeypatch.chdir(tmp_path)
    cfg = setup_notebook(quiet=True)
    assert cfg.checkpoints("05_deeplabv3", **RECIPE) == {"time_budget_s": QUICK_CAP_S}  # a cap, no folder
    assert capsys.readouterr().out == "" and not (tmp_path / "runs").exists()
    with pytest.raises(ValueError, match="is not plain data"):  # caught in QUICK, before a FULL run writes it
        cfg.checkpoints("05_deeplabv3", root=Path("data"))


def test_full_runs_checkpoint_into_a_folder_named_after_the_run(full_cfg, capsys):
    kwargs = full_cfg.checkpoints("tiny", **RECIPE)
    assert kwargs == {
        "checkpoint_dir": Path("runs") / "checkpoints" / "tiny",
        "resume": False,  # nothing to resume yet: fit starts from scratch without a warning
        "recipe": {"run": "tiny", **RECIPE},  # fit's recipe= keyword: what must not change when the run resumes
    }
    assert capsys.readouterr().out == ""
    _tiny_fit(full_cfg, **kwargs)
    state = torch.load(Path("runs/checkpoints/tiny/last.pt"), weights_only=True)
    assert state["epoch"] == 2 and state["recipe"].items() >= {"run": "tiny", **RECIPE}.items()
    assert state["model_spec"]["model"] == "tinyfcn"  # what seglearn.load_model rebuilds
    for bad in ("", "runs/x", "..", "a/b"):
        with pytest.raises(ValueError, match="plain folder name"):
            full_cfg.checkpoints(bad, **RECIPE)


def test_rerunning_the_cell_resumes_and_ends_where_an_uninterrupted_run_ends(full_cfg, capsys):
    # time_budget_s=0 stops after the first step (of 2 an epoch): the state a disconnect mid-epoch leaves behind
    _, stopped = _tiny_fit(full_cfg, budget=0, **full_cfg.checkpoints("tiny", **RECIPE))
    assert stopped.epochs == 1 and stopped.partial_steps == 1 and stopped.stopped_early

    kwargs = full_cfg.checkpoints("tiny", **RECIPE)
    assert capsys.readouterr().out == (
        f"resuming tiny from {Path('runs/checkpoints/tiny/last.pt')} (epoch 0 of 2, 1 step into epoch 1); "
        "delete that folder to train from scratch\n"
    )
    assert kwargs["resume"] is True
    resumed_model, resumed = _tiny_fit(full_cfg, **kwargs)
    whole_model, whole = _tiny_fit(full_cfg)
    assert resumed.epochs == whole.epochs == 2 and resumed.partial_steps == 0
    assert resumed.train_images == whole.train_images == [8, 8]  # epoch 1's first step came from last.pt
    np.testing.assert_allclose(resumed.train_loss, whole.train_loss, rtol=1e-6)
    assert resumed.val[-1].miou == pytest.approx(whole.val[-1].miou)
    for key, value in whole_model.state_dict().items():
        torch.testing.assert_close(resumed_model.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_a_changed_recipe_is_refused_naming_the_folder_and_the_keys(full_cfg, capsys):
    _tiny_fit(full_cfg, epochs=1, **full_cfg.checkpoints("tiny", **{**RECIPE, "epochs": 1}))
    folder = Path("runs") / "checkpoints" / "tiny"
    with pytest.raises(ValueError) as err:
        full_cfg.checkpoints("tiny", **{**RECIPE, "epochs": 1, "lr": 0.05, "aux_loss": True})
    message = str(err.value)
    assert f"delete the folder {folder}" in message
    assert "lr: 0.1 there, 0.05 here" in message and "aux_loss: unset there, True here" in message
    assert "epochs" not in message and "width" not in message  # only the keys that differ
    assert capsys.readouterr().out == ""  # no "resuming" line before a refusal
    with pytest.raises(ValueError, match="'run' is the checkpoint's name"):
        full_cfg.checkpoints("tiny", **{**RECIPE, "epochs": 1, "run": "other"})
    # the same recipe still resumes
    assert full_cfg.checkpoints("tiny", **{**RECIPE, "epochs": 1})["resume"] is True


def test_a_chapter_checkpoint_loads_with_load_model_and_the_cli(full_cfg, capsys):
    """What a FULL chapter writes (cfg.checkpoints + fit on a create_model model) is a model file for seglearn."""
    from seglearn.cli import main
    from seglearn.data import job_datasets, make_loader

    train_set, val_set = job_datasets("synthetic", ["train", "val"], crop=(32, 48), num_images=8)
    train = make_loader(train_set, batch_size=4, train=True)
    val = make_loader(val_set, batch_size=4, train=False)
    torch.manual_seed(0)
    model = seglearn.create_model("tinyfcn", train_set.num_classes, width=8)
    seglearn.fit(model, train, val, epochs=1, lr=0.05, seed=0, device="cpu", progress=False, live_plot=False,
                 **full_cfg.checkpoints("tiny11", model="tinyfcn", width=8, epochs=1, lr=0.05))  # fmt: skip
    last = Path("runs/checkpoints/tiny11/last.pt")
    loaded = seglearn.load_model(last)
    x = torch.rand(2, 3, 32, 48)
    torch.testing.assert_close(loaded(x)["out"], model.eval()(x)["out"])
    expected = seglearn.evaluate(model, val, train_set.num_classes, device="cpu")

    capsys.readouterr()
    argv = ["evaluate", "--checkpoint", str(last), "--dataset", "synthetic", "--num-images", "8"]
    assert main([*argv, "--image-size", "32", "48", "--workers", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"tinyfcn on synthetic val ({len(val_set)} images)") and "Bicyclist" in out
    miou = float(next(line for line in out.splitlines() if line.startswith("mIoU")).split()[1])
    assert miou == pytest.approx(100 * expected.miou, abs=0.006)


def test_recipe_is_the_registry_recipe_of_the_run_mode(monkeypatch, no_camvid):
    from seglearn.models import model_info

    monkeypatch.setenv("SEGLEARN_MODE", "QUICK")
    assert setup_notebook(quiet=True).recipe("unet") == model_info("unet").quick
    monkeypatch.setenv("SEGLEARN_MODE", "FULL")
    monkeypatch.setenv("SEGLEARN_PRETRAINED", "0")
    assert setup_notebook(device="cpu", quiet=True).recipe("unet") == model_info("unet").full[0]
    with pytest.raises(ValueError, match="unet"):
        setup_notebook(device="cpu", quiet=True).recipe("unet9")


def test_an_unreadable_last_pt_names_the_folder_to_delete(full_cfg):
    folder = Path("runs") / "checkpoints" / "tiny"
    folder.mkdir(parents=True)
    (folder / "last.pt").write_bytes(b"half a file")
    with pytest.raises(ValueError, match=f"delete the folder {folder}"):
        full_cfg.checkpoints("tiny", **RECIPE)


def test_spread_picks_distinct_evenly_spaced_indices():
    assert spread(4, 8) == [0, 2, 4, 6]
    assert spread(16, 101) == sorted(set(spread(16, 101))) and len(spread(16, 101)) == 16
    assert spread(5, 3) == [0, 1, 2]  # asking for more than there is gives all of them
    with pytest.raises(ValueError, match="at least one"):
        spread(0, 10)


def test_env_seconds_reads_a_positive_budget_and_names_the_variable_when_it_cannot(monkeypatch):
    monkeypatch.delenv("SEGLEARN_TEST_BUDGET_S", raising=False)
    assert env_seconds("SEGLEARN_TEST_BUDGET_S", 600) == 600
    monkeypatch.setenv("SEGLEARN_TEST_BUDGET_S", " 40.5 ")
    assert env_seconds("SEGLEARN_TEST_BUDGET_S", 600) == 40.5
    for bad in ("2min", "0", "-5", "nan", "inf"):
        monkeypatch.setenv("SEGLEARN_TEST_BUDGET_S", bad)
        with pytest.raises(ValueError, match=rf"SEGLEARN_TEST_BUDGET_S='{bad}' is not a number of seconds.*unset"):
            env_seconds("SEGLEARN_TEST_BUDGET_S", 600)
