"""A chapter's dataset switch: ``cfg.recipe(model, dataset)`` and ``cfg.loaders(dataset)`` (VOC in FULL mode, CamVid
in QUICK), and ``cfg.fit_recipe`` passing a recipe's schedule and per-layer rates on to fit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seglearn.notebook import setup_notebook

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGLEARN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture
def shared_voc_only(monkeypatch, tmp_path):
    if not (SHARED_DATA / "voc-sample" / "VOCdevkit").is_dir():
        pytest.skip("the VOC sample is not on this machine")
    monkeypatch.setenv("SEGLEARN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SEGLEARN_SHARED_DATA", str(SHARED_DATA))


def _cfg(monkeypatch, mode: str):
    monkeypatch.setenv("SEGLEARN_MODE", mode)
    monkeypatch.setenv("SEGLEARN_PRETRAINED", "0")
    return setup_notebook(quiet=True, device="cpu")


def test_the_switch_picks_the_papers_voc_recipe_in_full_mode_only(monkeypatch, shared_voc_only):
    full, quick = _cfg(monkeypatch, "FULL"), _cfg(monkeypatch, "QUICK")
    assert full.recipe("deeplabv1", dataset="voc").row == "deeplabv1-voc"
    assert full.recipe("deeplabv1").row == "deeplabv1"
    assert quick.recipe("deeplabv1", dataset="voc") == quick.recipe("deeplabv1")  # QUICK stays on CamVid
    with pytest.raises(ValueError, match="no FULL recipe on voc.*camvid"):
        full.recipe("segnet", dataset="voc")
    with pytest.raises(ValueError, match="not one of: camvid, voc"):
        full.loaders("cityscapes")
    kw = full.fit_recipe(full.recipe("deeplabv1", dataset="voc"))
    assert kw == dict(epochs=11, lr=1e-3, optimizer="sgd", weight_decay=5e-4, schedule="step:2000",
                      lr_mult={"head.fc8": 10.0})  # fmt: skip
    assert "schedule" not in full.fit_recipe(full.recipe("deeplabv1"))


def test_full_voc_loaders_train_on_crops_and_score_every_image_at_its_size(monkeypatch, shared_voc_only, capsys):
    cfg = _cfg(monkeypatch, "FULL")
    train, val, info = cfg.loaders("voc", crop=64, batch_size=2, workers=0)
    assert "not trainaug" in capsys.readouterr().out  # the sample has no SBD: VOC train, said so
    assert (info.source, info.num_classes, info.train_size, info.val_size) == ("voc", 21, 2, 1)
    images, masks = next(iter(train))
    assert images.shape == (2, 3, 64, 64) and masks.shape == (2, 64, 64)
    images, masks = next(iter(val))
    assert images.shape[0] == 1 and masks.max() <= 255


def test_quick_voc_is_camvid_and_says_so(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("SEGLEARN_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("SEGLEARN_SHARED_DATA", str(tmp_path / "shared"))
    cfg = _cfg(monkeypatch, "QUICK")
    _, _, info = cfg.loaders("voc", crop=(32, 48), batch_size=4, quick_train=8, quick_val=4, rotate=10)
    assert "QUICK mode trains on CamVid" in capsys.readouterr().out
    assert info.num_classes == 11 and info.source == "synthetic"  # no CamVid here: its synthetic stand-in
