"""Smoke tests of the benchmarks in tiny CPU configurations: training and data throughput, the FULL results table."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from seglearn.losses import SegLoss

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGLEARN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_bench():
    return _load("train_throughput")


@pytest.fixture(scope="module")
def data_bench():
    return _load("data_throughput")


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


def _check_data_records(records, text, crop=(32, 32)):
    assert [r["workers"] for r in records] == [0, 1]
    for r in records:
        assert r["images"] == 2 and r["shape"] == (2, 3, *crop) and r["crop"] == crop
        assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
        assert f"| {r['workers']} | {r['images_per_s']:.1f} |" in text


DATA_ARGV = ["--max-workers", "1", "--batches", "1", "--warmup", "0", "--batch", "2", "--crop", "32", "32"]


def test_data_throughput_falls_back_to_synthetic(data_bench, monkeypatch):
    monkeypatch.setattr(data_bench, "locate_dataset", lambda name: None)
    lines: list[str] = []
    records = data_bench.main(DATA_ARGV, out=lines.append)
    text = "\n".join(lines)
    _check_data_records(records, text)
    assert all("no CamVid" in r["source"] for r in records) and "SyntheticScenes" in text


@pytest.mark.skipif(not (SHARED_DATA / "camvid" / "train").is_dir(), reason="shared CamVid not present")
def test_data_throughput_reads_real_camvid(data_bench):
    lines: list[str] = []
    records = data_bench.main([*DATA_ARGV, "--root", str(SHARED_DATA / "camvid")], out=lines.append)
    text = "\n".join(lines)
    _check_data_records(records, text)
    assert all(r["source"].startswith("CamVid train") for r in records) and "367 images" in text


# ---------------------------------------------------------------- the FULL results table


@pytest.fixture(scope="module")
def full_bench():
    return _load("full_results")


def test_every_full_row_is_a_valid_train_command(full_bench, capsys):
    from seglearn.cli import build_parser

    text = full_bench.main(["--list", "--out", "runs/full"])
    commands = [shlex.split(line) for line in text.splitlines()]
    assert len(commands) == len(full_bench.ROSTER) >= 10
    for argv, recipe in zip(commands, full_bench.ROSTER, strict=True):
        assert argv[:4] == ["python", "-m", "seglearn", "train"]
        args = build_parser().parse_args(argv[3:])  # a typo in a recipe fails here, not on a GPU
        assert (args.model, args.dataset, args.crop, args.batch_size) == (recipe.model, "camvid", [360, 480], 8)
        assert not args.pretrained_backbone  # the table is trained from scratch


@pytest.mark.parametrize(
    ("row", "chapter"),
    [("tinyfcn", "00"), ("fcn8s", "01"), ("segnet", "02"), ("unet", "03"), ("deeplabv1", "04"), ("deeplabv3", "05"),
     ("encnet", "06"), ("upernet", "07")],
)  # fmt: skip
def test_full_rows_train_as_long_as_their_chapter(full_bench, row, chapter):
    # The executed FULL notebooks and the table must describe the same training: same epochs and lr.
    recipe = next(r for r in full_bench.ROSTER if r.row == row)
    notebook = next((REPO_ROOT / "notebooks").glob(f"{chapter}_*.ipynb")).read_text()
    assert f"full={recipe.epochs})" in notebook
    lrs = re.findall(r"lr=(?:cfg\.pick\(quick=[^,]+, full=)?([0-9][0-9.e-]*)", notebook)
    assert recipe.lr in [float(x) for x in lrs], lrs


def test_full_results_trains_a_row_and_writes_it_into_the_readme(full_bench, tmp_path, capsys):
    out = tmp_path / "runs"
    tiny = ["--", "--dataset", "synthetic", "--num-images", "8", "--crop", "32", "48", "--batch-size", "4"]
    tiny += ["--device", "cpu"]
    argv = ["--rows", "tinyfcn", "--out", str(out), "--chapters", str(tmp_path / "none"), "--epochs", "1"]
    argv += ["--workers", "0", *tiny]
    markdown = full_bench.main(argv)
    run = json.loads((out / "tinyfcn" / "run.json").read_text())
    assert run["command"] == shlex.join(full_bench.command(full_bench.ROSTER[0], out, epochs=1, workers=0,
                                                           extra=tiny[1:]))  # fmt: skip
    row = next(line for line in markdown.splitlines() if line.startswith("| tinyfcn |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{100 * run['miou']:.1f}" and cells[3] == f"{100 * run['pixel_acc']:.1f}" and cells[4] == "1"
    assert "from scratch" in cells[1] and cells[8].startswith("CPU (") and cells[9] == f"`{run['command']}`"

    assert full_bench.main(argv) == markdown.replace(row, row)  # finished rows are not trained again
    assert "done already" in capsys.readouterr().out

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{full_bench.BEGIN}\nold table\n{full_bench.END}\noutro\n")
    full_bench.main(["--table", "--update-readme", "--readme", str(readme), "--out", str(out), "--chapters", "-"])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text and row in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="full-results:begin"):
        full_bench.main(["--table", "--update-readme", "--readme", str(readme), "--out", str(out)])


def test_a_failing_row_stops_with_its_log(full_bench, tmp_path):
    argv = ["--rows", "segnet", "--out", str(tmp_path), "--workers", "0", "--", "--model-arg", "nonsense"]
    with pytest.raises(SystemExit, match=r"segnet failed \(exit 2\)[\s\S]*--model-arg takes KEY=VALUE"):
        full_bench.main(argv)
    assert not (tmp_path / "segnet" / "run.json").exists()


def test_a_full_chapter_record_takes_its_rows_place(full_bench, tmp_path):
    from seglearn.history import History
    from seglearn.metrics import ConfusionMatrix
    from seglearn.models import create_model
    from seglearn.notebook import LoaderInfo, NotebookConfig
    from seglearn.record import chapter_record, load_chapter_record, save_chapter_record

    cm = ConfusionMatrix(11)
    cm.update(torch.tensor([[0, 3, 3, 5]]), torch.tensor([[0, 3, 5, 5]]))
    history = History(train_loss=[1.0, 0.5], epoch_time=[3.0, 2.0], train_time=[2.0, 1.5], train_images=[16, 16],
                      peak_memory_mib=900.0, memory_kind="GPU peak allocated")  # fmt: skip
    info = LoaderInfo(classes=[str(i) for i in range(11)], palette=np.zeros((11, 3), np.uint8), num_classes=11,
                      ignore_index=255, source="camvid", train_size=367, val_size=101)  # fmt: skip
    chapters = tmp_path / "chapters"
    for mode in ("FULL", "QUICK"):
        cfg = NotebookConfig(mode=mode, device=torch.device("cpu"), seed=0, data_root=tmp_path, camvid_root=tmp_path)
        record = chapter_record(f"03_unet_{mode}", row="unet", notebook="03_unet", model_name="unet64",
                                model=create_model("tinyfcn", 11), history=history, scores=cm.compute(), cfg=cfg,
                                info=info, miou_crf=0.5)  # fmt: skip
        save_chapter_record(record, chapters)
    saved = load_chapter_record("03_unet_FULL", chapters)
    assert saved["command"] == "SEGLEARN_MODE=FULL SEGLEARN_PRETRAINED=0 jupyter nbconvert --to notebook --execute " \
        "notebooks/03_unet.ipynb"  # fmt: skip
    assert saved["images_per_s"] == pytest.approx(32 / 3.5) and saved["miou_crf"] == 0.5 and saved["epochs"] == 2
    assert load_chapter_record("01_fcn", chapters) is None

    markdown = full_bench.main(["--table", "--rows", "unet", "segnet", "--out", str(tmp_path / "runs"),
                                "--chapters", str(chapters)])  # fmt: skip
    rows = [line for line in markdown.splitlines()[2:]]
    assert len(rows) == 1 and rows[0].startswith("| unet |")  # the QUICK record is not a FULL result; segnet has none
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[2] == f"{100 * saved['miou']:.1f}" and cells[6] == "9" and cells[7] == "900"
    assert cells[9] == f"`{saved['command']}`"
