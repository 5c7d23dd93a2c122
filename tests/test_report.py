"""seglearn.report: a chapter's run against the majority floor and chapter 00's baseline, its sentences generated."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from seglearn.history import History
from seglearn.metrics import ConfusionMatrix
from seglearn.report import BASELINE_RECORD, class_sentence, compare_sentence, report_run


def _loaders() -> tuple[DataLoader, DataLoader]:
    # 4 train masks: class 1 is the majority (3/4 of the pixels); val: half 0, half 1
    train_masks = torch.ones(4, 8, 8, dtype=torch.int64)
    train_masks[:, :2] = 0
    val_masks = torch.zeros(2, 8, 8, dtype=torch.int64)
    val_masks[:, 4:] = 1
    train = DataLoader(TensorDataset(torch.zeros(4, 3, 8, 8), train_masks), batch_size=2)
    val = DataLoader(TensorDataset(torch.zeros(2, 3, 8, 8), val_masks), batch_size=2)
    return train, val


def _scores(correct_rows: int):
    """Scores of a prediction that gets the first ``correct_rows`` of 8 rows of class 0 right (the rest says 1)."""
    target = torch.zeros(2, 8, 8, dtype=torch.int64)
    target[:, 4:] = 1
    pred = torch.ones_like(target)
    pred[:, :correct_rows] = 0
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    return cm.compute()


def _history(epochs: int, images_per_epoch: int) -> History:
    h = History()
    for _ in range(epochs):
        h.record_train(1.0, images_per_epoch, 2.0, 1e-3)
        h.epoch_time.append(2.5)
    return h


CFG = SimpleNamespace(mode="QUICK", pretrained=False, device=torch.device("cpu"))
INFO = SimpleNamespace(num_classes=2, ignore_index=255, classes=("road", "sky"), val_size=2, train_size=4,
                       source="camvid")  # fmt: skip


def _run(name: str, correct_rows: int, epochs: int = 3, **kw):
    train, val = _loaders()
    return report_run(CFG, name, label="Net", model_name="tinyfcn", model=torch.nn.Conv2d(3, 2, 1),
                      history=_history(epochs, 4), scores=_scores(correct_rows), info=INFO, train_loader=train,
                      val_loader=val, **kw)  # fmt: skip


def test_saves_the_record_and_generates_the_floor_sentence(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    report = _run("01_net", correct_rows=3, miou_crf=0.5)
    record = json.loads((tmp_path / "runs" / "chapters" / "01_net.json").read_text())
    assert (record["images_seen"], record["batch_size"], record["frame"], record["miou_crf"]) == (12, 2, [8, 8], 0.5)
    assert record["command"].endswith("notebooks/01_net.ipynb") and record["row"] == "tinyfcn"
    # floor: class 1 ("sky") everywhere: IoU 0 for road and 0.5 for sky -> 25 %; pixel acc 50 %
    assert report.floor_class == "sky" and report.floor_miou == pytest.approx(0.25)
    miou = _scores(3).miou
    assert report.sentences[0] == (
        f"Net reaches {100 * miou:.1f} % mIoU and {100 * _scores(3).pixel_acc:.1f} % pixel accuracy on 2 camvid val "
        f"images, {100 * (miou - 0.25):.1f} points of mIoU above predicting sky everywhere (25.0 % mIoU, 50.0 % pixel "
        "accuracy). It learned road, sky (IoU 30 % or more); no class stayed under 5 % IoU."
    )
    assert "has not run in QUICK mode on camvid" in report.sentences[1]
    report.save(miou_os8=0.75)  # a later cell's measurement joins the record
    assert json.loads((tmp_path / "runs" / "chapters" / "01_net.json").read_text())["miou_os8"] == 0.75
    assert report.markdown.startswith("* Net reaches") and report._repr_markdown_() == report.markdown
    out = capsys.readouterr().out
    assert "majority class (sky) everywhere" in out and "Net (QUICK, 3 epochs)" in out


def test_compares_with_chapter_00_in_the_same_mode_only(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    base = _run(BASELINE_RECORD, correct_rows=4, epochs=8)  # 00's own run: no comparison with itself
    assert len(base.sentences) == 1
    report = _run("02_net", correct_rows=2, epochs=3)
    gap = 100 * (_scores(2).miou - _scores(4).miou)
    assert gap < 0
    assert f"{abs(gap):.1f} points below" in report.sentences[1]
    assert "Net took 6 optimizer steps of 2 frames at 8×8" in report.sentences[1]
    assert "tinyfcn took 16 steps of 2 at 8×8" in report.sentences[1]
    assert "fewer steps per parameter" in report.sentences[1]
    assert "chapter 00's tinyfcn (8 epochs)" in capsys.readouterr().out
    # a FULL record of 00 is not comparable with a QUICK run
    path = tmp_path / "runs" / "chapters" / f"{BASELINE_RECORD}.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "mode": "FULL"}))
    assert "has not run in QUICK mode" in _run("02_net", correct_rows=2).sentences[1]


def test_stops_a_run_that_does_not_beat_the_floor_but_keeps_its_record(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(AssertionError, match="learned less than predicting one class everywhere"):
        _run("03_net", correct_rows=0)  # predicts sky everywhere: exactly the floor
    assert (tmp_path / "runs" / "chapters" / "03_net.json").is_file()


def _record(miou: float, params: int, images: int, batch: int = 4) -> dict:
    return {"mode": "QUICK", "data": "camvid", "miou": miou, "params": params, "images_seen": images,
            "batch_size": batch, "frame": [96, 128], "wall_s": 30.0}  # fmt: skip


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (_record(0.31, 10_000, 512), "3.0 points above"),
        (_record(0.31, 10_000, 512), "more than a short run's seed-to-seed spread"),
        (_record(0.29, 10_000, 512), "can flip with another seed"),
        (_record(0.27, 10_000_000, 64), "can flip with another seed"),
        (_record(0.20, 10_000, 512), "comparable budget it still trails"),
        (_record(0.20, 10_000, 64), "fewer steps per parameter"),  # 16 steps against the baseline's 128
        (_record(0.20, 10_000_000, 512), "fewer steps per parameter"),  # 1000x the parameters
    ],
)
def test_compare_sentence_says_why(record: dict, expected: str) -> None:
    baseline = _record(0.28, 10_000, 512)
    sentence = compare_sentence("Net", record, baseline)
    assert sentence.startswith("Against chapter 00's `tinyfcn` (28.0 %)")
    assert expected in sentence


def test_class_sentence_names_learned_and_missed_classes() -> None:
    scores = SimpleNamespace(iou=[0.9, 0.31, 0.2, 0.01, float("nan")])
    assert class_sentence("Net", scores, ["road", "sky", "car", "pole", "sign"]) == (
        "Net learned road, sky (IoU 30 % or more) and missed pole (IoU under 5 %)."
    )
    assert class_sentence("Net", SimpleNamespace(iou=[0.1]), ["car"]).startswith("Net learned no class")
