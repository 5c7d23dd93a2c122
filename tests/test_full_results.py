"""The FULL-mode results table (benchmarks/full_results.py): its roster, training rows (several at once, in parts
under a deadline, resumed exactly), the README table and the tarball of results."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def full_bench(load_benchmark):
    return load_benchmark("full_results")


def test_every_full_row_is_a_valid_train_command(full_bench, capsys):
    from seglearn.cli import build_parser
    from seglearn.models import model_info

    text = full_bench.main(["--list", "--out", "runs/full"])
    commands = [shlex.split(line) for line in text.splitlines()]
    rows = full_bench.roster()
    assert len(commands) == len(rows) >= 10
    for argv, row in zip(commands, rows, strict=True):
        assert argv[:4] == ["python", "-m", "seglearn", "train"]
        args = build_parser().parse_args(argv[3:])  # a typo in a recipe fails here, not on a GPU
        assert (args.model, args.dataset, args.crop, args.batch_size) == (row.model, "camvid", [360, 480], 8)
        # ImageNet weights exactly where the recipe says so (the models whose papers start from them)
        assert args.pretrained_backbone == row.recipe.pretrained_backbone
        assert not row.recipe.pretrained_backbone or model_info(row.model).pretrained_backbone
        assert args.preload  # decoded once into RAM: same data, and workers keep a GPU fed


def test_row_commands_come_from_the_registry_recipes(full_bench):
    from seglearn.models import Recipe, model_info

    fcn = _row(full_bench, "fcn-r50")
    assert fcn.model == "fcn" and fcn.recipe in model_info("fcn").full
    assert shlex.join(full_bench.command(fcn, Path("runs/full"), workers=8)) == (
        "python -m seglearn train --model fcn --dataset camvid --crop 360 480 --batch-size 8 --epochs 50 --lr 0.01 "
        "--backbone resnet50 --aux-loss --pretrained-backbone --preload --workers 8 --seed 0 --out runs/full/fcn-r50"
    )
    recipe = Recipe(epochs=3, lr=1e-3, optimizer="adamw", weight_decay=5e-4, aux_loss=True, class_weights="median",
                    model_kwargs={"backbone": "resnet18", "base_channels": 16})  # fmt: skip
    assert full_bench.recipe_options(recipe) == [
        "--optimizer", "adamw", "--weight-decay", "0.0005", "--backbone", "resnet18", "--model-arg",
        "base_channels=16", "--aux-loss", "--class-weights", "median",
    ]  # fmt: skip
    voc = Recipe(epochs=1, lr=1e-3, dataset="voc", split="trainaug", schedule="step:2000", lr_mult={"head.fc8": 10},
                 rotate=10, pretrained_backbone=True)  # fmt: skip
    assert full_bench.recipe_options(voc) == [
        "--split", "trainaug", "--schedule", "step:2000", "--lr-mult", "head.fc8=10", "--rotate", "10",
        "--pretrained-backbone",
    ]  # fmt: skip


def test_a_registered_model_with_a_full_recipe_is_a_row(full_bench, monkeypatch):
    from seglearn.models import Recipe, registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    registry.register_model("toy", paper="a toy", full=(Recipe(epochs=2, lr=0.1, row="toy-row", note="a toy"),))(
        lambda num_classes: torch.nn.Conv2d(3, num_classes, 1)
    )
    assert "toy-row" in {r.row for r in full_bench.roster()}
    text = full_bench.main(["--list", "--rows", "toy-row", "--workers", "0"])
    assert text.startswith("python -m seglearn train --model toy --dataset camvid") and "--epochs 2 --lr 0.1 " in text


@pytest.mark.parametrize(
    ("row", "chapter"),
    [("tinyfcn", "00"), ("fcn8s", "01"), ("segnet", "02"), ("unet", "03"), ("deeplabv1", "04"), ("deeplabv3", "05"),
     ("encnet", "06"), ("upernet", "07"), ("enet", "08"), ("fcdensenet103", "08"), ("linknet", "08"), ("gfrnet", "09"),
     ("pspnet", "09"), ("refinenet", "09")],
)  # fmt: skip
def test_full_rows_train_what_their_chapter_trains(full_bench, row, chapter):
    # The executed FULL notebooks and the table must describe the same training: the chapter reads its recipe from
    # the registration (cfg.recipe -> the model's full[0] in FULL mode), and that recipe is this row.
    from seglearn.models import model_info

    r = _row(full_bench, row)
    info = model_info(r.model)
    path = next((REPO_ROOT / "notebooks").glob(f"{chapter}_*.ipynb"))
    code = "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")
    assert info.chapter == path.stem and r.recipe == info.full[0]
    # by name (`cfg.recipe("unet")`, `cfg.recipe("fcn8s", dataset=DATASET)`) or over a dict of the chapter's models
    assert f'cfg.recipe("{r.model}"' in code or ("cfg.recipe(name" in code and f'"{r.model}"' in code)
    assert not re.search(r"epochs=cfg\.pick\(|lr=cfg\.pick\(", code)  # no second copy of the recipe


# Every row trains the same tiny job: 48 synthetic images (an epoch of tinyfcn takes >0.15 s on one CPU thread, so a
# 0.05 s budget stops it after its first epoch), 3 epochs (--epochs 3), no DataLoader workers (--workers 0).
TINY = ["--dataset", "synthetic", "--num-images", "48", "--crop", "32", "48", "--batch-size", "4", "--device", "cpu"]
BUDGET = 0.05  # --stop-after S --margin S-0.05: rows started at once get a budget just under 0.05 s


def _main(full_bench, argv: list[str]) -> tuple[str, str | None]:
    """Run ``main`` and return (stdout, the SystemExit message or None)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            full_bench.main(argv)
        except SystemExit as err:
            return out.getvalue(), str(err.code)
    return out.getvalue(), None


@pytest.fixture(scope="module")
def parts(full_bench, tmp_path_factory):
    """Two invocations on one --out, as on a machine used in time slots (4 subprocesses in all):

    1. tinyfcn and unet at once under --stop-after with a budget below one epoch: tinyfcn stops after epoch 1; unet's
       folder holds a bad checkpoint, so it fails (exit 2). --pack runs all the same.
    2. tinyfcn and segnet-basic at once, no deadline: tinyfcn resumes and finishes, segnet-basic trains in one part.
    """
    root = tmp_path_factory.mktemp("full")
    out, chapters = root / "runs" / "full", root / "notebooks" / "runs" / "chapters"
    (out / "unet" / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 1}, out / "unet" / "checkpoints" / "last.pt")
    common = ["--out", str(out), "--chapters", str(chapters), "--epochs", "3", "--workers", "0"]
    first = ["--rows", "tinyfcn", "unet", "--jobs", "2", *common, "--stop-after", "1000"]
    first += ["--margin", str(1000 - BUDGET), "--min-budget", "0.001", "--pack", str(root / "first.tgz")]
    first += ["--pack-root", str(root), "--", *TINY]
    log1, error1 = _main(full_bench, first)
    run1 = json.loads((out / "tinyfcn" / "run.json").read_text())
    names1 = tarfile.open(root / "first.tgz").getnames()
    second = ["--rows", "tinyfcn", "segnet-basic", "--jobs", "2", *common, "--", *TINY]
    log2, error2 = _main(full_bench, second)
    return {"root": root, "out": out, "chapters": chapters, "common": common, "log1": log1, "error1": error1,
            "run1": run1, "names1": names1, "log2": log2, "error2": error2}  # fmt: skip


def _row(full_bench, name: str):
    return next(r for r in full_bench.roster() if r.row == name)


def _canonical(full_bench, row: str, out: Path, workers: int = 0, extra: list[str] = TINY) -> str:
    recipe = _row(full_bench, row)
    return shlex.join(full_bench.command(recipe, out, epochs=3, workers=workers, extra=extra))


def test_rows_run_at_once_and_a_failing_row_does_not_stop_the_others(full_bench, parts):
    log1, error1 = parts["log1"], parts["error1"]
    # both started before either ended (--jobs 2), then each reported on its own line
    assert max(log1.index("tinyfcn: part 1: python -m seglearn"), log1.index("unet: part 1: python -m seglearn")) < \
        log1.index("tinyfcn: stopped early")  # fmt: skip
    assert re.search(r"unet failed \(exit 2\); \S+train\.log ends with:\n[\s\S]*not a seglearn training checkpoint",
                     error1)  # fmt: skip
    assert "tinyfcn" not in error1 and not (parts["out"] / "unet" / "run.json").exists()  # only the failed row named
    assert "runs/full/tinyfcn/run.json" in parts["names1"]  # the tarball came back although a row failed
    # the second invocation: two rows at once, both finish, exit 0
    log2 = parts["log2"]
    assert parts["error2"] is None and "tinyfcn: mIoU" in log2 and "segnet-basic: mIoU" in log2
    assert max(log2.index("tinyfcn: part 2:"), log2.index("segnet-basic: part 1:")) < \
        min(log2.index("tinyfcn: mIoU"), log2.index("segnet-basic: mIoU"))  # fmt: skip
    run = json.loads((parts["out"] / "segnet-basic" / "run.json").read_text())
    canonical = _canonical(full_bench, "segnet-basic", parts["out"])
    assert run["epochs"] == 3 and run["parts"] == 1 and run["command"] == run["row_command"] == canonical


def test_stop_after_stops_a_row_after_its_first_epoch(full_bench, parts):
    run = parts["run1"]
    assert run["stopped_early"] and run["epochs"] == 1 and run["row_epochs"] == 3 and run["parts"] == 1
    budget = float(shlex.split(run["command"])[-1])
    assert shlex.split(run["command"])[-2] == "--time-budget" and 0 < budget <= BUDGET
    assert "tinyfcn: stopped early at 1/3 epochs" in parts["log1"]
    assert "in progress: tinyfcn (1/3 epochs)" in parts["log1"]  # the table lists no unfinished row as a result


def test_the_next_invocation_resumes_the_row_to_its_last_epoch(full_bench, parts):
    out = parts["out"]
    run = json.loads((out / "tinyfcn" / "run.json").read_text())
    history = json.loads((out / "tinyfcn" / "history.json").read_text())
    canonical = _canonical(full_bench, "tinyfcn", out)
    assert run["epochs"] == 3 and not run["stopped_early"] and len(history["train_loss"]) == 3
    assert run["parts"] == 2 and run["resumed"] == 1 and run["row_command"] == canonical
    assert run["command"] == f"{canonical} --resume"  # what seglearn train saw in the last part
    assert run["part_commands"] == [parts["run1"]["command"], f"{canonical} --resume"]
    assert run["wall_s"] == pytest.approx(sum(history["epoch_time"]))  # both parts' epochs
    assert run["images_per_s"] == pytest.approx(sum(history["train_images"]) / sum(history["train_time"]))
    assert sum(history["train_images"]) == 3 * 48
    log = (out / "tinyfcn" / "train.log").read_text()
    assert log.count("=== part ") == 2 and f"=== part 2: {canonical} --resume\n" in log
    assert f"tinyfcn: part 2: {canonical} --resume" in parts["log2"]


def test_a_checkpoint_without_run_json_is_resumed_with_its_first_command(full_bench, tmp_path):
    # a part killed mid-epoch: its last epoch's checkpoint, the runner's notes, no run.json
    recipe = _row(full_bench, "segnet")
    folder, first = tmp_path / "segnet", _canonical(full_bench, "segnet", tmp_path, workers=8)
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"")
    notes = {"row_command": first, "row_epochs": 3, "parts": 1, "part_commands": [f"{first} --time-budget 480.00"]}
    (folder / full_bench.NOTES).write_text(json.dumps(notes))
    canonical = full_bench.command(recipe, tmp_path, epochs=3, workers=2, extra=TINY)
    job = full_bench._plan(recipe, folder, canonical)  # --workers 2 today: the run keeps its 8, so resume is exact
    assert job.argv == [*shlex.split(first), "--resume"] and job.notes == notes
    (folder / full_bench.NOTES).unlink()  # no notes either (a run of an older runner): today's command resumes
    assert full_bench._plan(recipe, folder, canonical).argv == [*canonical, "--resume"]


def test_the_table_shows_finished_rows_with_their_canonical_command(full_bench, parts, tmp_path, capsys):
    out = parts["out"]
    markdown = full_bench.main(["--table", "--rows", "tinyfcn", "segnet-basic", "unet", "--out", str(out),
                                "--chapters", "-"])  # fmt: skip
    run = json.loads((out / "tinyfcn" / "run.json").read_text())
    row = next(line for line in markdown.splitlines() if line.startswith("| tinyfcn |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == f"{100 * run['miou']:.1f}" and cells[3] == f"{100 * run['pixel_acc']:.1f}" and cells[4] == "3"
    assert cells[5].endswith(" s (2 parts)") and cells[6] == f"{run['images_per_s']:.0f}"
    assert "from scratch" in cells[1] and cells[8].startswith("CPU (") and cells[9] == f"`{run['row_command']}`"
    assert "--resume" not in markdown and "--time-budget" not in markdown
    assert len(markdown.splitlines()) == 4 and "in progress" not in markdown  # unet never wrote a run.json

    # finished rows are not trained again
    argv = ["--rows", "tinyfcn", *parts["common"], "--", *TINY]
    assert full_bench.main(argv) == markdown.split("\n| segnet-basic")[0]
    assert "tinyfcn: done already" in capsys.readouterr().out

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{full_bench.BEGIN}\nold table\n{full_bench.END}\noutro\n")
    full_bench.main(["--table", "--update-readme", "--readme", str(readme), "--out", str(out), "--chapters", "-"])
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old table" not in text and row in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="full-results:begin"):
        full_bench.main(["--table", "--update-readme", "--readme", str(readme), "--out", str(out)])


def test_pack_takes_the_small_result_files_alone_or_after_training(full_bench, parts, tmp_path):
    from seglearn.record import save_chapter_record

    root, out, chapters = parts["root"], parts["out"], parts["chapters"]
    run = json.loads((out / "tinyfcn" / "run.json").read_text())
    save_chapter_record({**run, "name": "05_deeplabv3_FULL", "row": "deeplabv3", "mode": "FULL", "data": "camvid"},
                        chapters)  # fmt: skip
    save_chapter_record({"name": "05_deeplabv3_QUICK", "row": "deeplabv3", "mode": "QUICK"}, chapters)
    assert (out / "tinyfcn" / "model.pt").is_file() and (out / "tinyfcn" / "checkpoints" / "last.pt").is_file()
    tgz = tmp_path / "back" / "rows.tgz"
    stdout, error = _main(full_bench, ["--pack", str(tgz), "--out", str(out), "--chapters", str(chapters),
                                       "--pack-root", str(root)])  # fmt: skip
    assert error is None and "part 1" not in stdout  # no --rows: nothing trains
    assert f"into {tgz} ({tgz.stat().st_size / 1024:.1f} KiB)" in stdout
    names = tarfile.open(tgz).getnames()
    expected = {f"runs/full/{row}/{name}" for row in ("tinyfcn", "segnet-basic") for name in full_bench.RESULT_FILES}
    assert set(names) == expected | {"runs/full/unet/train.log", "notebooks/runs/chapters/05_deeplabv3_FULL.json"}
    assert not any(n.endswith(".pt") or "checkpoints" in n for n in names)
    with tarfile.open(tgz) as tar:  # unpacked into another checkout, it restores the same files
        tar.extractall(tmp_path / "checkout", filter="data")
    restored = tmp_path / "checkout" / "runs" / "full" / "tinyfcn" / "run.json"
    assert restored.read_text() == (out / "tinyfcn" / "run.json").read_text()
    with pytest.raises(SystemExit, match="--pack-root"):  # a file outside the root would unpack somewhere else
        full_bench.main(["--pack", str(tgz), "--out", str(out), "--chapters", "-", "--pack-root", str(tmp_path)])


def test_a_row_still_running_at_the_deadline_is_stopped_and_force_starts_afresh(full_bench, parts):
    out = parts["out"]  # unet's folder holds the bad checkpoint and the log of its failed part
    argv = ["--rows", "unet", "--force", *parts["common"], "--stop-after", "2", "--margin", "0", "--min-budget", "0"]
    t0 = time.monotonic()
    stdout, error = _main(full_bench, [*argv, "--", *TINY])
    assert error is None and time.monotonic() - t0 < 15  # stopped at 2 s (SIGTERM), not after its 3 epochs
    assert "unet: stopped at the --stop-after deadline" in stdout
    assert "--resume" not in stdout and not (out / "unet" / "checkpoints" / "last.pt").exists()  # --force wiped it
    assert (out / "unet" / "train.log").read_text().count("=== part ") == 1
    assert not (out / "unet" / "run.json").exists()


def test_rows_wait_for_the_next_invocation_when_too_little_time_is_left(full_bench, tmp_path):
    argv = ["--rows", "segnet", "--out", str(tmp_path), "--stop-after", "100", "--margin", "90", "--min-budget", "20"]
    stdout, error = _main(full_bench, argv)
    assert error is None and "segnet: not started, 100 s left" in stdout and not (tmp_path / "segnet").exists()


def test_budget_arithmetic_and_what_counts_as_finished(full_bench):
    assert full_bench.time_budget(540.0, 60.0, 30.0) == 480.0
    assert full_bench.time_budget(80.0, 60.0, 30.0) is None  # 20 s to train: wait for the next call
    assert full_bench.time_budget(90.0, 60.0, 30.0) == 30.0 and full_bench.time_budget(-1.0, -9.0, 0.0) is None
    cmd = "python -m seglearn train --model unet --epochs 80 --workers 8 --out runs/full/unet"
    assert full_bench.target_epochs({"command": cmd}) == 80
    assert full_bench.target_epochs({"command": cmd, "row_epochs": 3}) == 3
    assert full_bench.target_epochs({"command": "jupyter nbconvert ..."}) is None
    assert full_bench.is_finished({"command": cmd, "epochs": 80, "stopped_early": False})
    assert not full_bench.is_finished({"command": cmd, "epochs": 79, "stopped_early": False})
    assert not full_bench.is_finished({"command": cmd, "epochs": 80, "stopped_early": True})
    assert full_bench.is_finished({"command": "jupyter nbconvert ...", "epochs": 2})  # a chapter record
    assert full_bench.same_run(cmd, cmd.replace("--workers 8", "--workers 2") + " --resume --time-budget 412.5")
    assert not full_bench.same_run(cmd, cmd.replace("--epochs 80", "--epochs 20"))


def test_an_unfinished_run_of_another_command_is_not_resumed(full_bench, tmp_path):
    recipe = _row(full_bench, "unet")
    folder = tmp_path / "unet"
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "checkpoints" / "last.pt").write_bytes(b"")
    run = {"epochs": 5, "stopped_early": True, "row_epochs": 20,
           "row_command": shlex.join(full_bench.command(recipe, tmp_path, epochs=20, workers=0))}  # fmt: skip
    (folder / "run.json").write_text(json.dumps(run))
    argv = ["--rows", "unet", "--out", str(tmp_path), "--workers", "0", "--chapters", "-"]
    stdout, error = _main(full_bench, argv)  # 80 epochs would change its schedule: not the same run
    assert "unet: " in error and "holds an unfinished run of another command" in error and "--force" in error
    assert "part 1" not in stdout and "in progress: unet (5/20 epochs)" in stdout


def test_an_unfinished_run_without_its_checkpoint_starts_again(full_bench, tmp_path, capsys):
    recipe = _row(full_bench, "segnet")
    canonical = full_bench.command(recipe, tmp_path, epochs=3, workers=0)
    (tmp_path / "segnet").mkdir()
    (tmp_path / "segnet" / "run.json").write_text(json.dumps({"epochs": 1, "stopped_early": True, "row_epochs": 3,
                                                             "row_command": shlex.join(canonical)}))  # fmt: skip
    job = full_bench._plan(recipe, tmp_path / "segnet", canonical)  # e.g. a tarball unpacked on a fresh machine
    assert job.argv == canonical and "--resume" not in job.argv and not (tmp_path / "segnet").exists()
    assert "has no checkpoint; training it from the start" in capsys.readouterr().out


def test_workers_per_run_default_to_the_cores_shared_by_the_jobs(full_bench, monkeypatch):
    def workers(argv):
        return {int(line.split("--workers ")[1].split()[0]) for line in full_bench.main(argv).splitlines()}

    monkeypatch.setattr(full_bench.os, "cpu_count", lambda: 16)
    assert workers(["--list"]) == {8} and workers(["--list", "--jobs", "4"]) == {4}
    assert workers(["--list", "--jobs", "32"]) == {1} and workers(["--list", "--jobs", "4", "--workers", "6"]) == {6}


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
