"""A user's own folder of images and masks, end to end through public names: train, evaluate, predict, export to
ONNX (equal outputs under onnxruntime), load with seglearn.load_model and through torch.hub."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import seglearn
from seglearn.cli import main

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["background", "road", "car"]
PALETTE = [[0, 0, 0], [128, 64, 128], [64, 0, 128]]


def make_own_data(root: Path, n: int = 10, size: tuple[int, int] = (32, 48)) -> Path:
    """The layout the README documents: root/images/*.jpg, root/masks/*.png (class indices), root/classes.json."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    h, w = size
    for i in range(n):
        mask = np.zeros(size, np.uint8)
        mask[h // 2 :] = 1  # road below
        y, x = rng.integers(h // 2, h - 6), rng.integers(0, w - 12)
        mask[y : y + 6, x : x + 12] = 2  # a car on it
        image = (np.asarray(PALETTE, np.uint8)[mask] + rng.integers(0, 40, (h, w, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / "images" / f"frame{i:02d}.jpg", quality=95)
        Image.fromarray(mask).save(root / "masks" / f"frame{i:02d}.png")
    (root / "classes.json").write_text(json.dumps({"classes": CLASSES, "palette": PALETTE}))
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(data folder, run folder) of a one-epoch tinyfcn trained by the CLI on the own-data folder."""
    base = tmp_path_factory.mktemp("own")
    data, out = make_own_data(base / "data"), base / "run"
    argv = ["train", "--model", "tinyfcn", "--data", str(data), "--epochs", "2", "--crop", "32", "48", "--batch-size",
            "4", "--workers", "0", "--lr", "0.01", "--optimizer", "adamw", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    return data, out


def test_train_on_own_data_writes_a_model_with_its_classes(trained):
    _, out = trained
    model, meta = seglearn.model_file.load_model(out / "model.pt", return_meta=True)
    assert meta["classes"] == CLASSES and meta["palette"] == PALETTE
    assert meta["model_spec"]["num_classes"] == 3
    assert model(torch.randn(1, 3, 32, 48))["out"].shape == (1, 3, 32, 48)
    scores = json.loads((out / "scores.json").read_text())
    assert scores["classes"] == CLASSES and 0 <= scores["miou"] <= 1


def test_evaluate_own_data_val_split(trained, capsys):
    data, out = trained
    assert main(["evaluate", "--checkpoint", str(out / "model.pt"), "--data", str(data), "--workers", "0"]) == 0
    text = capsys.readouterr().out
    assert "folder val (2 images)" in text and "car" in text


def test_predict_a_folder_writes_mask_and_overlay_per_image(trained, tmp_path, capsys):
    data, out = trained
    preds = tmp_path / "pred"
    assert main(["predict", str(data / "images"), "--checkpoint", str(out / "model.pt"), "--out", str(preds)]) == 0
    masks, overlays = sorted(preds.glob("*_mask.png")), sorted(preds.glob("*_overlay.png"))
    assert len(masks) == len(overlays) == 10
    colours = {tuple(c) for c in np.asarray(Image.open(masks[0]).convert("RGB")).reshape(-1, 3).tolist()}
    assert colours <= {tuple(c) for c in PALETTE}
    assert "frame00.jpg ->" in capsys.readouterr().out


def test_predict_never_writes_two_images_to_one_file(trained, tmp_path):
    data, out = trained
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
        Image.open(data / "images" / f"frame0{ord(sub) - 97}.jpg").save(tmp_path / sub / "x.png")
    preds = tmp_path / "pred"
    argv = ["predict", str(tmp_path / "a" / "x.png"), str(tmp_path / "b" / "x.png"), "--checkpoint",
            str(out / "model.pt"), "--out", str(preds)]  # fmt: skip
    assert main(argv) == 0
    assert sorted(p.name for p in preds.glob("*_mask.png")) == ["a_x_mask.png", "b_x_mask.png"]


def test_predict_refuses_a_16_bit_image_instead_of_clipping_it(trained, tmp_path, capsys):
    _, out = trained
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((32, 48), 40000, np.uint16)).save(path)
    with pytest.raises(SystemExit) as info:
        main(["predict", str(path), "--checkpoint", str(out / "model.pt"), "--out", str(tmp_path / "p")])
    assert info.value.code == 2
    assert "8-bit" in capsys.readouterr().err and not (tmp_path / "p" / "deep_mask.png").exists()


def test_export_onnx_gives_pytorchs_logits_under_onnxruntime(trained, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from seglearn.export import check_onnx

    _, out = trained
    onnx_path = tmp_path / "model.onnx"
    assert main(["export", str(out / "model.pt"), "--onnx", str(onnx_path)]) == 0
    assert "opset 17" in capsys.readouterr().out
    model = seglearn.load_model(out / "model.pt")
    assert check_onnx(model, onnx_path, size=(40, 60)) < 1e-4


def test_the_trained_model_loads_through_torch_hub(trained):
    _, out = trained
    hub = torch.hub.load(str(REPO), "tinyfcn", source="local", trust_repo=True, weights=str(out / "model.pt"))
    ref = seglearn.load_model(out / "model.pt")
    x = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(hub.eval()(x)["out"], ref(x)["out"])
    with pytest.raises(ValueError, match="holds a 'tinyfcn', not a 'unet'"):
        torch.hub.load(str(REPO), "unet", source="local", trust_repo=True, weights=str(out / "model.pt"))


def test_data_and_dataset_together_are_refused(trained, capsys):
    data, _ = trained
    with pytest.raises(SystemExit) as info:
        main(["train", "--model", "tinyfcn", "--data", str(data), "--dataset", "camvid"])
    assert info.value.code == 2 and "--data PATH" in capsys.readouterr().err
