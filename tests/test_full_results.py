"""The FULL-mode results table (benchmarks/full_results.py): its roster, training rows, the README table."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


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
