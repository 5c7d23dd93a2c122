"""FULL-mode smoke run of every chapter on a CPU: each notebook's FULL branch on a fake CamVid, the work capped.

CI runs the chapters in QUICK mode (nbval); FULL mode needs a GPU and real CamVid, so its code paths (360x480 frames,
paper-sized models, from-scratch backbones, the ``full=`` side of every ``cfg.pick``) would otherwise first run on a
GPU, hours into a run. Here each chapter runs unchanged in FULL mode after ONE injected cell that caps the amount of
work by wrapping library functions: fewer images and epochs, never smaller frames or models. Every FULL training run
must leave runs/checkpoints/<name>/last.pt, and one chapter executed twice in the same folder must resume from it.
"""

from __future__ import annotations

import json
import shutil
import textwrap
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

# CamVid's void colour is black; the 11 classes use the SegNet palette (seglearn.data.camvid.CAMVID_PALETTE).
PALETTE = np.array(
    [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222], [128, 128, 0], [192, 128, 128],
     [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192], [0, 0, 0]],
    dtype=np.uint8,
)  # fmt: skip

# Runs first in every chapter. Each cap cuts how MUCH is computed, never the FULL configuration: the datasets serve
# 360x480 frames (the loaders' batches are halved to 180x240 on their way to fit and evaluate, a quarter of the
# compute), models keep their paper configuration, and every cell of the chapter still runs.
SMOKE_CELL = textwrap.dedent(
    """
    # FULL-mode smoke caps, injected by tests/test_notebooks_full.py (not part of the chapter).
    import functools
    import json

    from torch.utils.data import DataLoader, Subset

    import seglearn
    import dataclasses

    import seglearn.engine
    import seglearn.metrics
    import seglearn.notebook

    _SMOKE_LOG = SMOKE_LOG_PATH  # a file, not cell output: fit's live plot clears the output of the cell it runs in
    _SMOKE_BATCH, _SMOKE_TRAIN, _SMOKE_VAL = 2, 2, 1  # a batch of 2: BatchNorm after a 1x1 pooled bin
    _loaders = seglearn.notebook.NotebookConfig.camvid_loaders
    _fit = seglearn.engine.fit
    _predict = seglearn.engine.predict
    _evaluate = seglearn.engine.evaluate
    _baseline = seglearn.metrics.majority_baseline


    def _report(**record):
        with open(_SMOKE_LOG, "a") as f:
            f.write(json.dumps(record) + "\\n")


    def _halved(collate):
        # every 2nd row and column of the collated 360x480 batch: a quarter of the FLOPs of each training step and
        # validation pass, at a size (180x240) that is no multiple of the output strides either
        def collate_halved(samples):
            images, masks, *rest = collate(samples)
            return (images[..., ::2, ::2].contiguous(), masks[..., ::2, ::2].contiguous(), *rest)

        return collate_halved


    def _cut(loader, n, shuffle):
        # the chapter's own FULL dataset and transforms, only fewer images (one train batch, one val image) and
        # the batches halved; the loaders' report below reads the FULL sizes from the datasets themselves
        subset = Subset(loader.dataset, range(min(n, len(loader.dataset))))
        workers = loader.num_workers
        return DataLoader(subset, batch_size=min(loader.batch_size, _SMOKE_BATCH), shuffle=shuffle,
                          drop_last=False, num_workers=workers, pin_memory=loader.pin_memory,
                          collate_fn=_halved(loader.collate_fn), generator=loader.generator,
                          persistent_workers=workers > 0)


    @functools.wraps(_loaders)
    def _smoke_loaders(self, *args, **kwargs):
        train, val, info = _loaders(self, *args, **kwargs)
        _report(event="loaders", train_image=list(train.dataset[0][0].shape), val_image=list(val.dataset[0][0].shape),
                batch_size=train.batch_size, workers=train.num_workers, train_size=info.train_size,
                val_size=info.val_size, source=info.source)
        return _cut(train, _SMOKE_TRAIN, True), _cut(val, _SMOKE_VAL, False), info


    @functools.wraps(_fit)
    def _smoke_fit(*args, **kwargs):
        # one epoch runs every line of fit (train step, poly schedule, validation); FULL asks for 50-200
        _report(event="fit", epochs=kwargs.get("epochs"), time_budget_s=kwargs.get("time_budget_s"))
        kwargs["epochs"] = 1
        return _fit(*args, **kwargs)


    @functools.wraps(_predict)
    def _smoke_predict(model, images, scales=(1.0,), flip=False):
        # multi-scale inference: the two smallest of the chapter's scales still average resized passes at sizes that
        # are no multiple of the output stride; FULL's larger scales only add CPU minutes
        if len(scales) > 2:
            _report(event="predict", scales=list(scales), flip=flip)
            scales = sorted(scales)[:2]
        return _predict(model, images, scales=scales, flip=flip)


    @functools.wraps(_evaluate)
    def _smoke_evaluate(*args, scales=(1.0,), flip=False, **kwargs):
        # the same cap for a loader scored with the chapter's scales (fit's validation passes the default through)
        if len(scales) > 2:
            _report(event="predict", scales=list(scales), flip=flip)
            scales = sorted(scales)[:2]
        return _evaluate(*args, scales=scales, flip=flip, **kwargs)


    @functools.wraps(_baseline)
    def _smoke_baseline(*args, **kwargs):
        # the chapter's floor is computed as in FULL, but a one-epoch smoke run cannot be expected to beat it: report it
        # and lower it so that the chapter's `assert scores.miou > baseline.miou` passes
        majority, scores = _baseline(*args, **kwargs)
        _report(event="baseline", majority=majority, miou=scores.miou)
        return majority, dataclasses.replace(scores, miou=float("-inf"))


    seglearn.notebook.NotebookConfig.camvid_loaders = _smoke_loaders
    seglearn.metrics.majority_baseline = _smoke_baseline
    seglearn.engine.fit = seglearn.fit = _smoke_fit
    seglearn.engine.predict = seglearn.predict = _smoke_predict
    seglearn.engine.evaluate = seglearn.evaluate = _smoke_evaluate
    """
).strip()


# CamVid's train pixel shares (../shared/data/README.md), void last: rare classes stay rare, as the chapters expect.
PIXEL_SHARE = np.array([0.169, 0.233, 0.010, 0.317, 0.045, 0.097, 0.012, 0.011, 0.059, 0.006, 0.003, 0.040])
PIXEL_SHARE = PIXEL_SHARE / PIXEL_SHARE.sum()


def _write_fake_camvid(root: Path, n_train: int = 4, n_val: int = 2, seed: int = 0) -> None:
    """SegNet-layout CamVid: 480x360 RGB PNGs and 8-bit label PNGs (0..10 classes, 11 void) in 40x40 blocks."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        lines = []
        for i in range(n):
            name = f"0001TP_{split}_{i:03d}.png"
            blocks = rng.choice(12, size=9 * 12, p=PIXEL_SHARE)
            blocks[:12] = rng.permutation(12)  # every class (and void) in every image, as real CamVid nearly has
            labels = rng.permutation(blocks).astype(np.uint8).reshape(9, 12).repeat(40, 0).repeat(40, 1)  # (360, 480)
            image = PALETTE[labels].astype(np.int16) + rng.integers(-20, 21, size=(360, 480, 3))
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / split / name)
            Image.fromarray(labels).save(root / f"{split}annot" / name)
            lines.append(f"/SegNet/CamVid/{split}/{name} /SegNet/CamVid/{split}annot/{name}")
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def full_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A fake CamVid under a data root, and a scratch copy of the notebooks' working folder."""
    base = tmp_path_factory.mktemp("full_smoke")
    _write_fake_camvid(base / "data" / "camvid")
    # Chapters write runs/chapters/*.json relative to their folder: a scratch folder keeps these fake FULL records out
    # of the checkout's notebooks/runs (which 10 shows as results).
    workdir = base / "notebooks"
    workdir.mkdir()
    return {"data": base / "data", "workdir": workdir, "no_shared": base / "no-shared", "torch_home": base / "torch"}


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            elif "data" in out:
                parts.append(out["data"].get("text/plain", ""))
    return "".join(parts)


def _slowest_cells(nb, smoke_index: int, k: int = 3) -> str:
    """'cell 12 30 s, ...' (the chapter's own cell numbers) from the timestamps nbclient keeps in cell metadata."""
    times = []
    for i, cell in enumerate(nb.cells):
        ex = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in ex and "shell.execute_reply" in ex:
            t0, t1 = (
                datetime.fromisoformat(ex[key].replace("Z", "+00:00"))
                for key in ("iopub.execute_input", "shell.execute_reply")
            )
            label = "smoke cell" if i == smoke_index else f"cell {i - (i > smoke_index)}"
            times.append(((t1 - t0).total_seconds(), label))
    return ", ".join(f"{label} {t:.0f} s" for t, label in sorted(times, reverse=True)[:k])


# What only the FULL branch prints, beyond the setup block and the loader/fit caps every chapter reports.
FULL_MARKERS = {
    "00_data_and_metrics": ["CamVid: 4 images"],
    "04_deeplabv1_crf": ["input (224, 224)", "val images at 360x480"],
    "05_deeplabv3": ["DeepLabv3-resnet50", "val images at 360x480", "input (257, 257)"],
    "06_encnet": ["EncNet (FULL, resnet50)"],
    "07_upernet": ["UPerNet (FULL, resnet50, 512 ch)"],
    "09_survey_context": ["PSPNet (FULL, camvid, resnet50)", "RefineNet (FULL, camvid, resnet101)",
                          "G-FRNet (FULL, camvid, vgg16_bn)"],
    "10_compare": ["val images at 360x480"],
}


def _execute(path: Path, full_env: dict[str, Path], workdir: Path, tag: str = "") -> tuple[str, list[dict]]:
    """Execute the chapter in FULL mode behind SMOKE_CELL in ``workdir``; return its text output and smoke reports."""
    nb = nbformat.read(path, as_version=4)
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    log = workdir / f"{path.stem}{tag}.smoke.jsonl"
    nb.cells.insert(first_code, nbformat.v4.new_code_cell(SMOKE_CELL.replace("SMOKE_LOG_PATH", repr(str(log)))))
    client = nbclient.NotebookClient(
        nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    )
    start = time.perf_counter()
    try:
        client.execute()  # raises CellExecutionError with the failing cell and its traceback
    finally:
        nbformat.write(nb, workdir / f"{path.stem}{tag}.executed.ipynb")  # to read when an assertion fails
    seconds = time.perf_counter() - start
    print(f"{path.stem}{tag}: FULL smoke run in {seconds:.0f} s; slowest cells: {_slowest_cells(nb, first_code)}")
    reports = [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []
    return _outputs_text(nb), reports


def _run_in_full_mode(
    path: Path, full_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch, keep_checkpoints: bool = False,
    **extra_env: str,
) -> str:  # fmt: skip
    """Execute the chapter in FULL mode behind SMOKE_CELL; check it finished, took the FULL branches, saved its
    records and left a checkpoint of every training run (deleted afterwards unless ``keep_checkpoints``)."""
    env = {
        "SEGLEARN_MODE": "FULL",
        "SEGLEARN_PRETRAINED": "0",  # no internet: backbones from scratch
        "SEGLEARN_DATA": str(full_env["data"]),
        "SEGLEARN_SHARED_DATA": str(full_env["no_shared"]),  # never ../shared: the fake CamVid only
        "TORCH_HOME": str(full_env["torch_home"]),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "NO_ALBUMENTATIONS_UPDATE": "1",
        **extra_env,
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)  # the kernel inherits this process's environment
    workdir = full_env["workdir"]
    text, reports = _execute(path, full_env, workdir)

    assert "mode: FULL" in text
    assert "backbones: from scratch" in text
    loaders = [r for r in reports if r["event"] == "loaders"]
    assert loaders, "the chapter built no CamVid loaders through cfg.camvid_loaders"
    for r in loaders:  # FULL: the whole (fake) CamVid, 360x480 train crops, full-size val frames, batches of 8
        assert (r["train_image"], r["val_image"], r["batch_size"]) == ([3, 360, 480], [3, 360, 480], 8), r
        assert (r["source"], r["train_size"], r["val_size"]) == ("camvid", 4, 2), r
    requested = [r["epochs"] for r in reports if r["event"] == "fit"]
    assert requested and min(requested) >= 50, requested  # the full= epochs, not QUICK's
    if path.stem in FLOOR_CHECKED:  # these chapters check their model against the majority-class floor
        floors = [r for r in reports if r["event"] == "baseline"]
        assert floors and all(0 < r["miou"] < 0.5 for r in floors), floors
    multi_scale = [r["scales"] for r in reports if r["event"] == "predict"]
    assert all(len(scales) > 3 for scales in multi_scale), multi_scale  # FULL's scale lists, not QUICK's three
    for marker in FULL_MARKERS.get(path.stem, []):
        assert marker in text, f"{path.stem}: FULL-mode output {marker!r} missing"
    for name, row in CHAPTER_ROWS.get(path.stem, []):  # the FULL record that stands for the results table's row
        record = json.loads((workdir / "runs" / "chapters" / f"{name}.json").read_text())
        assert (record["row"], record["mode"], record["data"], record["pretrained_backbone"]) == (
            row, "FULL", "camvid", False)  # fmt: skip
        assert record["command"] == (
            f"SEGLEARN_MODE=FULL SEGLEARN_PRETRAINED=0 jupyter nbconvert --to notebook --execute notebooks/{path.name}"
        )
        assert record["epochs"] == 1 and record["train_images"] == 4 and record["images_per_s"] > 0
    # FULL training runs checkpoint every epoch (cfg.checkpoints), so a re-run cell continues after a disconnect
    for name in CHECKPOINTED.get(path.stem, []):
        folder = workdir / "runs" / "checkpoints" / name
        assert (folder / "last.pt").is_file(), f"{path.stem}: no checkpoint at {folder / 'last.pt'}"
        if not keep_checkpoints:
            shutil.rmtree(folder)  # FCN-8s with its SGD momentum is 1 GB per file
    assert "resuming" not in text  # a fresh working folder: nothing to resume
    return text


# Chapter -> the runs/checkpoints/<name> folders its FULL training runs write (10's timed runs take none).
CHECKPOINTED = {
    "00_data_and_metrics": ["00_tinyfcn"],
    "01_fcn": ["01_fcn"],
    "02_segnet": ["02_segnet"],
    "03_unet": ["03_unet", "03_unet_weighted"],
    "04_deeplabv1_crf": ["04_deeplabv1"],
    "05_deeplabv3": ["05_deeplabv3"],
    "06_encnet": ["06_encnet"],
    "07_upernet": ["07_upernet"],
    "08_survey_encoder_decoder": ["08_enet", "08_fcdensenet103", "08_linknet", "08_linknet_noskip"],
    "09_survey_context": ["09_pspnet", "09_pspnet_noaux", "09_refinenet", "09_gfrnet"],
}


# Chapters whose training cell asserts it beats seglearn.metrics.majority_baseline: every training chapter.
FLOOR_CHECKED = set(CHECKPOINTED)


# Chapter -> (record name, results-table row in benchmarks/full_results.py) of the runs it saves.
CHAPTER_ROWS = {
    "01_fcn": [("01_fcn", "fcn8s")],
    "02_segnet": [("02_segnet", "segnet")],
    "03_unet": [("03_unet", "unet"), ("03_unet_weighted", "unet-mfb")],
    "04_deeplabv1_crf": [("04_deeplabv1", "deeplabv1")],
    "05_deeplabv3": [("05_deeplabv3", "deeplabv3")],
    "06_encnet": [("06_encnet", "encnet")],
    "07_upernet": [("07_upernet", "upernet")],
    "08_survey_encoder_decoder": [
        ("08_enet", "enet"),
        ("08_fcdensenet103", "fcdensenet103"),
        ("08_linknet", "linknet"),
    ],
    "09_survey_context": [("09_pspnet", "pspnet"), ("09_refinenet", "refinenet"), ("09_gfrnet", "gfrnet")],
}


RESUMED = "05_deeplabv3"


def _second_execution_resumes(path: Path, full_env: dict[str, Path]) -> None:
    """Execute the chapter again in the same folder, as after a Colab disconnect: it must pick up last.pt (complete
    here: the smoke cap trains 1 epoch) and save the record the first execution saved."""
    workdir = full_env["workdir"]
    record_path = workdir / "runs" / "chapters" / f"{path.stem}.json"
    first = json.loads(record_path.read_text())
    record_path.unlink()
    text, _ = _execute(path, full_env, workdir, tag=".second")
    last = Path("runs") / "checkpoints" / path.stem / "last.pt"
    assert f"resuming {path.stem} from {last} (epoch 1 of 50); delete that folder to train from scratch" in text
    second = json.loads(record_path.read_text())
    assert (second["epochs"], second["train_s"]) == (first["epochs"], first["train_s"])  # last.pt's history
    for key in ("miou", "miou_os8", "pixel_acc"):
        assert second[key] == pytest.approx(first[key], abs=1e-9), key  # the same weights, evaluated again
    shutil.rmtree(workdir / "runs" / "checkpoints" / path.stem)


# CI runs `pytest -n 2 --dist loadscope`, which keeps a class on one worker. The chapters that train several models
# (03: two U-Nets, 08 and 09: four runs each, 10: two models here) take about as long as the other seven together, so
# two classes let two workers share the module.
MULTI_MODEL = {"03_unet", "08_survey_encoder_decoder", "09_survey_context", "10_compare"}
COMPARED_IN_SMOKE = ("tinyfcn", "upernet")
SINGLE = [p for p in NOTEBOOKS if p.stem not in MULTI_MODEL]
MULTI = [p for p in NOTEBOOKS if p.stem in MULTI_MODEL]


class TestSingleModelChapters:
    @pytest.mark.parametrize("path", SINGLE, ids=[p.stem for p in SINGLE])
    def test_runs_in_full_mode(self, path: Path, full_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
        resumed = path.stem == RESUMED  # one cheap chapter runs twice
        _run_in_full_mode(path, full_env, monkeypatch, keep_checkpoints=resumed)
        if resumed:
            _second_execution_resumes(path, full_env)


class TestMultiModelChapters:
    @pytest.mark.parametrize("path", MULTI, ids=[p.stem for p in MULTI])
    def test_runs_in_full_mode(self, path: Path, full_env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
        # 10's FULL budget (600 s per model) is cut with SEGLEARN_COMPARE_BUDGET_S, and its roster with
        # SEGLEARN_COMPARE_MODELS: one plain model and one with an auxiliary head run every cell of the comparison
        # (each model's own FULL configuration is smoke-run by its chapter above)
        compare = {"SEGLEARN_COMPARE_BUDGET_S": "7", "SEGLEARN_COMPARE_MODELS": ",".join(COMPARED_IN_SMOKE)}
        extra = compare if path.stem == "10_compare" else {}
        text = _run_in_full_mode(path, full_env, monkeypatch, **extra)
        if extra:
            assert "training budget: 7 s per model (FULL)" in text
            assert "compared:   tinyfcn(), upernet(backbone=resnet50) + aux head" in text
            log = full_env["workdir"] / f"{path.stem}.smoke.jsonl"
            fits = [json.loads(line) for line in log.read_text().splitlines() if '"fit"' in line]
            assert len(fits) == len(COMPARED_IN_SMOKE) and {f["time_budget_s"] for f in fits} == {7.0}, fits
