"""Smoke tests of the benchmarks in tiny CPU configurations: training and data throughput."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch

from seglearn.losses import SegLoss

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGLEARN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def train_bench(load_benchmark):
    return load_benchmark("train_throughput")


@pytest.fixture(scope="module")
def data_bench(load_benchmark):
    return load_benchmark("data_throughput")


@pytest.fixture(scope="module")
def train_run(train_bench):
    lines: list[str] = []
    # One model keeps this fast; deeplabv3 runs through the same code (see test_both_torchvision_references).
    argv = ["--models", "fcn", "--size", "32", "32", "--batch", "2", "--steps", "1", "--warmup", "0", "--rounds", "1"]
    argv += ["--device", "cpu", "--check-accuracy", "1"]
    result = train_bench.main(argv, out=lines.append)
    return result, "\n".join(lines)


def test_train_throughput_speed_records(train_run):
    result, text = train_run
    speed = result["speed"]
    assert [(r["model"], r["recipe"]) for r in speed] == [
        ("fcn", r) for r in ("torchvision", "seglearn fp32", "seglearn fast")
    ]
    for r in speed:
        assert {"images_per_s", "ratio", "mem_mib", "mem_kind", "size", "batch", "device"} <= set(r)
        assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
        assert r["size"] == (32, 32) and r["batch"] == 2 and r["device"] == "cpu"
        assert r["mem_kind"] == "autograd saved tensors" and r["mem_mib"] > 0
        assert f"| {r['model']} | {r['recipe']} | {r['images_per_s']:.2f} |" in text
    by = {(r["model"], r["recipe"]): r for r in speed}
    for model in ("fcn",):
        assert by[model, "torchvision"]["ratio"] == pytest.approx(1.0)
        # The seglearn twin is the same network: autograd keeps the same activations (within allocator rounding).
        ref_mem = by[model, "torchvision"]["mem_mib"]
        assert by[model, "seglearn fp32"]["mem_mib"] == pytest.approx(ref_mem, rel=0.02)
    assert "ratio to torchvision" in text and "fit autocasts only on CUDA" in text


def test_train_throughput_accuracy_check(train_run):
    accuracy = train_run[0]["accuracy"]
    assert [(r["model"], r["recipe"]) for r in accuracy] == [("fcn", r) for r in ("torchvision", "seglearn fast")]
    for r in accuracy:
        assert r["steps"] == 1 and math.isfinite(r["train_loss"])
        assert 0.0 <= r["val_miou"] <= 1.0 and 0.0 <= r["val_pixel_acc"] <= 1.0
    # One step: the loss is that of the shared initial weights on the shared batch (dropout masks may differ).
    for ref, ours in zip(accuracy[::2], accuracy[1::2], strict=True):
        assert ours["train_loss"] == pytest.approx(ref["train_loss"], rel=0.03)
    assert "val mIoU" in train_run[1]


def test_reference_criterion_is_torchvision_recipe(train_bench):
    # torchvision references/segmentation/train.py: CE(out, ignore 255) + 0.5 * CE(aux); SegLoss(aux_weight=0.5) agrees.
    g = torch.Generator().manual_seed(0)
    out = {"out": torch.randn(2, 5, 6, 7, generator=g), "aux": torch.randn(2, 5, 6, 7, generator=g)}
    target = torch.randint(0, 5, (2, 6, 7), generator=g)
    target[0, :2] = 255
    expected = torch.nn.functional.cross_entropy(out["out"], target, ignore_index=255)
    expected = expected + 0.5 * torch.nn.functional.cross_entropy(out["aux"], target, ignore_index=255)
    assert train_bench.AUX_WEIGHT == 0.5
    torch.testing.assert_close(train_bench.reference_criterion(out, target), expected)
    torch.testing.assert_close(SegLoss(aux_weight=train_bench.AUX_WEIGHT)(out, target), expected)


def test_param_groups_match_between_torchvision_and_seglearn(train_bench):
    import torchvision

    from seglearn.models import from_torchvision

    tv = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=3, aux_loss=True)
    counts = []
    for model in (tv, from_torchvision(tv)):
        opt = train_bench.sgd(model, lr=0.02)
        assert [g["lr"] for g in opt.param_groups] == [0.02, 0.02, pytest.approx(0.2)]
        assert all(g["momentum"] == 0.9 and g["weight_decay"] == 1e-4 for g in opt.param_groups)
        grouped = [p for g in opt.param_groups for p in g["params"]]
        assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
        counts.append([len(g["params"]) for g in opt.param_groups])
    assert counts[0] == counts[1]  # the same tensors land in the same groups


def test_both_torchvision_references(train_bench):
    import torchvision.models.segmentation as tvseg

    assert train_bench.TV_BUILDERS == {"fcn": tvseg.fcn_resnet50, "deeplabv3": tvseg.deeplabv3_resnet50}
    assert train_bench.parse_args([]).models == ["fcn", "deeplabv3"]
    assert (train_bench.parse_args([]).size, train_bench.parse_args([]).batch) == ((360, 480), 8)


def test_train_throughput_rejects_batch_of_one(train_bench, capsys):
    with pytest.raises(SystemExit):
        train_bench.parse_args(["--batch", "1"])
    assert "--batch must be >= 2" in capsys.readouterr().err


def _check_data_records(records, text, crop=(32, 32), preloaded=True):
    assert [r["workers"] for r in records] == [0, 1]
    for r in records:
        assert r["images"] == 2 and r["shape"] == (2, 3, *crop) and r["crop"] == crop
        assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
        if preloaded:
            assert math.isfinite(r["preloaded_images_per_s"]) and r["preloaded_images_per_s"] > 0
            assert r["ratio"] == pytest.approx(r["preloaded_images_per_s"] / r["images_per_s"])
            row = (
                f"| {r['workers']} | {r['images_per_s']:.1f} | {r['preloaded_images_per_s']:.1f} | {r['ratio']:.2f}x |"
            )
        else:
            assert r["preloaded_images_per_s"] is None and r["ratio"] is None and r["preload_s"] is None
            row = f"| {r['workers']} | {r['images_per_s']:.1f} | - | - |"
        assert row in text
    assert "| workers | images/s from disk | images/s preloaded | ratio |" in text


DATA_ARGV = ["--max-workers", "1", "--batches", "1", "--warmup", "0", "--batch", "2", "--crop", "32", "32"]


def test_data_throughput_falls_back_to_synthetic(data_bench, monkeypatch):
    monkeypatch.setattr(data_bench, "locate_dataset", lambda name: None)
    lines: list[str] = []
    records = data_bench.main(DATA_ARGV, out=lines.append)
    text = "\n".join(lines)
    _check_data_records(records, text, preloaded=False)  # scenes are drawn on the fly: nothing to preload
    assert all("no CamVid" in r["source"] for r in records) and "SyntheticScenes" in text
    assert "preload: not applicable" in text


@pytest.mark.skipif(not (SHARED_DATA / "camvid" / "train").is_dir(), reason="shared CamVid not present")
def test_data_throughput_reads_real_camvid_from_disk_and_preloaded(data_bench):
    lines: list[str] = []
    records = data_bench.main([*DATA_ARGV, "--root", str(SHARED_DATA / "camvid")], out=lines.append)
    text = "\n".join(lines)
    _check_data_records(records, text)
    assert all(r["source"].startswith("CamVid train") for r in records) and "367 images" in text
    # CamVid train: 367 images of 360x480, 3 bytes of RGB and 1 of label per pixel.
    assert all(r["preload_mib"] == pytest.approx(367 * 360 * 480 * 4 / 2**20) for r in records)
    assert records[0]["preload_s"] > 0 and f"{records[0]['preload_mib']:.0f} MiB in memory" in text


def test_data_throughput_tiny_camvid_with_and_without_preload(data_bench, tmp_path):
    import numpy as np
    from PIL import Image

    root = tmp_path / "camvid"
    for folder in ("train", "trainannot"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((20, 30, 3), np.uint8)).save(root / "train" / "a.png")
    Image.fromarray(np.full((20, 30), 3, np.uint8)).save(root / "trainannot" / "a.png")
    lines: list[str] = []
    records = data_bench.main([*DATA_ARGV, "--root", str(root)], out=lines.append)
    _check_data_records(records, "\n".join(lines))
    assert all(r["preload_mib"] == pytest.approx(20 * 30 * 4 / 2**20) for r in records)
    assert "preload: 1 images decoded once in" in lines[1]
    lines.clear()
    records = data_bench.main([*DATA_ARGV, "--root", str(root), "--no-preload"], out=lines.append)
    text = "\n".join(lines)
    _check_data_records(records, text, preloaded=False)
    assert "1 images" in text and "preload:" not in text


def test_model_table_measures_every_registered_model_and_every_full_row(load_benchmark, capsys):
    from seglearn.models import full_recipes, list_models

    table = load_benchmark("model_table")
    rows = table.model_rows(list_models(), 11, (64, 96))
    assert [r[0] for r in rows] == list_models() and not any("error" in r[3] for r in rows)
    assert all(r[3] == "1x11x64x96" for r in rows)
    recipes = table.recipe_rows(11)
    assert [r[0] for r in recipes] == [recipe.row for _, recipe in full_recipes()]
    by_row = {r[0]: r for r in recipes}
    assert by_row["fcn-r50"][2] == "backbone=resnet50, aux head" and "median class weights" in by_row["unet-mfb"][2]
    _, flops, _ = table.measure("tinyfcn", 11, (360, 480))
    epochs = next(recipe.epochs for _, recipe in full_recipes() if recipe.row == "tinyfcn")
    assert by_row["tinyfcn"][4] == f"{flops / 1e9:.1f}" and by_row["tinyfcn"][5] == str(epochs)
    assert by_row["tinyfcn"][6] == f"{flops * 3 * 367 * epochs / 1e15:.1f}"
    table.main(["--recipes", "--markdown"])
    out = capsys.readouterr().out
    assert "| row | model | configuration |" in out and "| upernet | upernet |" in out


def test_cpu_results_trains_the_registrys_small_variants(load_benchmark, shared_camvid, tmp_path, capsys):
    from seglearn.models import comparison_roster, create_model

    bench = load_benchmark("cpu_results")
    variants = {info.name: bench.small_variant(info) for info in comparison_roster()}
    assert variants["unet"] == ({"base_channels": 16}, False) and variants["upernet"][1] is True
    assert variants["fcn8s"] == ({}, False)  # no smaller VGG16: the paper's configuration
    with torch.device("meta"):  # SGD from random weights: 1e-3 without BatchNorm (VGG16), 1e-2 with it
        assert [bench.sgd_lr(create_model(n, 11)) for n in ("fcn8s", "deeplabv1", "tinyfcn", "segnet")] == [
            1e-3, 1e-3, 1e-2, 1e-2]  # fmt: skip
    with pytest.raises(SystemExit, match="not in the comparison roster: fcn32s"):
        bench.main(["--models", "fcn32s"])
    rows = bench.main(["--models", "tinyfcn", "--budget", "0.01", "--size", "32", "48", "--json", str(tmp_path / "r")])
    assert [r["model"] for r in rows] == ["tinyfcn"] and rows[0]["epochs"] == 1 and 0 <= rows[0]["miou"] <= 100
    assert "| tinyfcn | default |" in capsys.readouterr().out


def test_cpu_budget_runs_the_recipe_plans_epochs_after_the_first_and_stops_at_the_budget(
    load_benchmark, shared_camvid, tmp_path
):
    bench = load_benchmark("cpu_budget")
    argv = ["--models", "unet16", "--crop", "32", "48", "--scale", "0.1", "--eval-scale", "0.1", "--json",
            str(tmp_path / "rows.json"), "--out", str(tmp_path / "runs")]  # fmt: skip
    # A budget far shorter than one epoch: stopped by fit's budget after its first step, before any plan.
    (row,) = bench.main([*argv, "--minutes", "0.0001"])
    assert row["epochs_planned"] == 0 and row["steps"] == 1 and row["partial_steps"] == 1
    assert 0 <= row["miou"] <= 100 and row["recipe"]["channels_last"] and row["params_m"] == pytest.approx(1.94, 0.01)
    assert row["recipe"]["eval_scale"] == 0.1 and row["recipe"]["scale"] == pytest.approx((0.08, 0.125))
    assert row["recipe"]["workers"] == 0 and row["recipe"]["class_weights"] == "median"  # the recipe's own
    # Enough for a few epochs at this size: planned after the first one, never past the plan (the budget may cut it).
    (row,) = bench.main([*argv, "--minutes", "0.2"])
    assert row["epochs_planned"] >= 2 and 45 <= row["steps"] <= row["epochs_planned"] * 45
    assert json.loads((tmp_path / "rows.json").read_text())[0]["steps"] == row["steps"]
    assert (tmp_path / "runs" / "unet16-seed0" / "model.pt").is_file()  # --out keeps the run folders
