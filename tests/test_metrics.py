"""ConfusionMatrix / SegScores: hand-worked cases, ignore and absent classes, merging, torchmetrics side by side."""

from __future__ import annotations

import math
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from seglearn.metrics import ConfusionMatrix, SegScores, majority_baseline

# Worked example used by several tests (C = 3, one pixel ignored):
#   target  [[0, 0, 1], [1, 2, 255]]
#   pred    [[0, 1, 1], [1, 2,   0]]
# pairs (truth, pred) over the 5 labelled pixels: (0,0) (0,1) (1,1) (1,1) (2,2)
#   mat = [[1, 1, 0],
#          [0, 2, 0],
#          [0, 0, 1]]
# tp = [1, 2, 1], truth = [2, 2, 1], predicted = [1, 3, 1], union = truth + predicted - tp = [2, 3, 1]
# iou = [1/2, 2/3, 1]        miou = (1/2 + 2/3 + 1) / 3 = 13/18
# acc = [1/2, 1, 1]          mean_acc = 5/6
# pixel_acc = 4/5            fwiou = 2/5 * 1/2 + 2/5 * 2/3 + 1/5 * 1 = 2/3
TARGET = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
PRED = torch.tensor([[[0, 1, 1], [1, 2, 0]]])


def one_hot_logits(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Random logits (N, C, H, W) whose argmax over dim 1 is ``labels``."""
    logits = torch.randn(*labels.shape[:1], num_classes, *labels.shape[1:])
    return logits + 10 * torch.nn.functional.one_hot(labels, num_classes).permute(0, 3, 1, 2)


def test_hand_computed_example():
    cm = ConfusionMatrix(3).update(PRED, TARGET)
    assert cm.mat.dtype == torch.int64
    assert cm.mat.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    s = cm.compute()
    np.testing.assert_allclose(s.iou, [1 / 2, 2 / 3, 1])
    np.testing.assert_allclose(s.acc, [1 / 2, 1, 1])
    assert s.miou == pytest.approx(13 / 18)
    assert s.mean_acc == pytest.approx(5 / 6)
    assert s.pixel_acc == pytest.approx(4 / 5)
    assert s.fwiou == pytest.approx(2 / 3)
    assert s.iou.dtype == np.float64 and s.acc.dtype == np.float64


def test_ignore_index_pixels_are_not_counted():
    cm = ConfusionMatrix(3).update(PRED, TARGET)
    assert int(cm.mat.sum()) == 5  # 6 pixels, one 255
    # Whatever is predicted under an ignored pixel changes nothing, even an out-of-range label.
    pred = PRED.clone()
    pred[0, 1, 2] = 7
    assert torch.equal(ConfusionMatrix(3).update(pred, TARGET).mat, cm.mat)
    # A custom ignore_index (torch's CE default, -100) works the same way.
    target = TARGET.clone()
    target[target == 255] = -100
    assert torch.equal(ConfusionMatrix(3, ignore_index=-100).update(PRED, target).mat, cm.mat)


def test_class_absent_from_truth_and_prediction_is_nan_and_left_out_of_means():
    # Same data with a 4th class nobody uses: the means must not change (not counted as IoU 1 or 0).
    s3 = ConfusionMatrix(3).update(PRED, TARGET).compute()
    s4 = ConfusionMatrix(4).update(PRED, TARGET).compute()
    assert math.isnan(s4.iou[3]) and math.isnan(s4.acc[3])
    np.testing.assert_allclose(s4.iou[:3], s3.iou)
    for name in ("miou", "mean_acc", "pixel_acc", "fwiou"):
        assert getattr(s4, name) == pytest.approx(getattr(s3, name))


def test_class_only_predicted_counts_as_iou_zero():
    # target [0, 0, 1, 1], pred [0, 2, 1, 1]: class 2 is predicted once but never true.
    # iou = [1/2, 2/2, 0/1] -> miou 1/2; acc = [1/2, 1, NaN] -> mean_acc 3/4
    s = ConfusionMatrix(3).update(torch.tensor([[0, 2, 1, 1]]), torch.tensor([[0, 0, 1, 1]])).compute()
    np.testing.assert_allclose(s.iou, [0.5, 1.0, 0.0])
    assert math.isnan(s.acc[2])
    assert s.miou == pytest.approx(0.5)
    assert s.mean_acc == pytest.approx(0.75)


def test_empty_matrix_gives_nan_scores_without_warnings():
    with np.testing.assert_no_warnings():
        s = ConfusionMatrix(2).update(torch.zeros(1, 2, 2, dtype=torch.long), torch.full((1, 2, 2), 255)).compute()
    assert all(math.isnan(v) for v in (s.pixel_acc, s.mean_acc, s.miou, s.fwiou))
    assert np.isnan(s.iou).all()


def test_logits_equal_labels():
    torch.manual_seed(0)
    target = torch.randint(0, 5, (2, 7, 9))
    target[:, 0] = 255
    labels = torch.randint(0, 5, (2, 7, 9))
    a = ConfusionMatrix(5).update(labels, target)
    b = ConfusionMatrix(5).update(one_hot_logits(labels, 5), target)
    assert torch.equal(a.mat, b.mat)


def test_uint8_masks_and_numpy_inputs_are_accepted():
    a = ConfusionMatrix(3).update(PRED, TARGET)
    b = ConfusionMatrix(3).update(PRED.numpy().astype(np.uint8), TARGET.numpy().astype(np.uint8))
    assert torch.equal(a.mat, b.mat)


def test_merge_of_two_halves_equals_whole():
    torch.manual_seed(1)
    target = torch.randint(0, 4, (6, 8, 8))
    target[target == 3] = 255
    pred = torch.randint(0, 4, (6, 8, 8))
    whole = ConfusionMatrix(4).update(pred, target)
    first = ConfusionMatrix(4).update(pred[:2], target[:2])
    second = ConfusionMatrix(4).update(pred[2:], target[2:])
    assert torch.equal((first + second).mat, whole.mat)
    assert torch.equal(sum([first, second]).mat, whole.mat)
    assert first.merge(second) is first
    assert torch.equal(first.mat, whole.mat)
    assert first.compute().miou == whole.compute().miou
    first.reset()
    assert int(first.mat.sum()) == 0


def test_merge_rejects_incompatible_matrices():
    with pytest.raises(ValueError, match="cannot merge"):
        ConfusionMatrix(3).merge(ConfusionMatrix(4))
    with pytest.raises(TypeError):
        ConfusionMatrix(3).merge(torch.zeros(3, 3))


def test_dataset_wide_is_not_the_average_of_batch_scores():
    # Batch 1: one class-0 pixel predicted as 1  -> iou [0/1, 0/1]       -> miou 0
    # Batch 2: [0, 0, 0, 1] all correct           -> iou [1, 1]           -> miou 1; batch average 0.5
    # Whole: mat [[3, 1], [0, 1]] -> iou [3/4, 1/2] -> miou 5/8
    b1 = (torch.tensor([[1]]), torch.tensor([[0]]))
    b2 = (torch.tensor([[0, 0, 0, 1]]), torch.tensor([[0, 0, 0, 1]]))
    per_batch = np.mean([ConfusionMatrix(2).update(*b).compute().miou for b in (b1, b2)])
    cm = ConfusionMatrix(2)
    for b in (b1, b2):
        cm.update(*b)
    assert per_batch == pytest.approx(0.5)
    assert cm.compute().miou == pytest.approx(5 / 8)


@pytest.mark.parametrize("with_absent_class", [False, True])
def test_side_by_side_with_torchmetrics(with_absent_class):
    tm = pytest.importorskip("torchmetrics.classification")
    torch.manual_seed(2)
    c = 6
    target = torch.randint(0, c, (4, 16, 16))
    target[torch.rand(target.shape) < 0.1] = 255
    pred = torch.randint(0, c, (4, 16, 16))
    if with_absent_class:
        target[target == 4] = 0
        pred[pred == 4] = 1
    scores = ConfusionMatrix(c).update(pred, target).compute()
    per_class = tm.MulticlassJaccardIndex(c, average="none", ignore_index=255)(pred, target).double().numpy()
    macro = tm.MulticlassJaccardIndex(c, average="macro", ignore_index=255)(pred, target).item()
    present = ~np.isnan(scores.iou)
    assert present.sum() == (c - 1 if with_absent_class else c)
    np.testing.assert_allclose(scores.iou[present], per_class[present], rtol=1e-6)
    assert scores.miou == pytest.approx(macro, rel=1e-6)
    acc = tm.MulticlassAccuracy(c, average="micro", ignore_index=255)(pred, target).item()
    assert scores.pixel_acc == pytest.approx(acc, rel=1e-6)
    recall = tm.MulticlassRecall(c, average="none", ignore_index=255)(pred, target).double().numpy()
    np.testing.assert_allclose(scores.acc[present], recall[present], rtol=1e-6)


def test_bad_inputs_raise_clear_errors():
    cm = ConfusionMatrix(3)
    with pytest.raises(ValueError, match="differ in shape"):
        cm.update(torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="logits"):
        cm.update(torch.zeros(1, 5, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="target holds label 3"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 1], [3, 255]]]))
    with pytest.raises(ValueError, match="target holds label -1"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 1], [-1, 255]]]))
    with pytest.raises(ValueError, match="prediction holds label 9"):
        cm.update(torch.tensor([[[0, 9]]]), torch.tensor([[[0, 1]]]))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(1, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)
    assert int(cm.mat.sum()) == 0  # failed updates add nothing


def test_table_and_dict():
    s = ConfusionMatrix(4).update(PRED, TARGET).compute()
    text = s.table(["sky", "road", "car", "bicyclist"])
    lines = text.splitlines()
    assert lines[0].split() == ["class", "IoU", "%", "Acc", "%"]
    assert lines[2].split() == ["sky", "50.00", "50.00"]
    assert lines[3].split() == ["road", "66.67", "100.00"]
    assert lines[5].split() == ["bicyclist", "-", "-"]
    assert "mIoU" in text and "72.22" in text and "fwIoU" in text
    assert "0 " in s.table()  # numbered rows without names
    with pytest.raises(ValueError, match="class names"):
        s.table(["sky"])
    d = s.as_dict()
    assert d["miou"] == pytest.approx(13 / 18) and len(d["iou"]) == 4 and isinstance(d["iou"][0], float)
    assert "mIoU 72.22" in str(s)


def test_segscores_compare_equal_with_nan_classes():
    a = ConfusionMatrix(4).update(PRED, TARGET).compute()
    b = ConfusionMatrix(4).update(PRED, TARGET).compute()
    assert np.isnan(a.iou[3]) and a == b
    assert a != ConfusionMatrix(4).update(TARGET.clamp(max=2), TARGET).compute()


def test_segscores_fills_acc_when_not_given():
    s = SegScores(pixel_acc=0.5, mean_acc=0.5, iou=[0.1, 0.2], miou=0.15, fwiou=0.2)
    assert s.acc.shape == (2,) and np.isnan(s.acc).all() and s.iou.dtype == np.float64


def test_all_reduce_is_a_noop_without_process_group():
    cm = ConfusionMatrix(3).update(PRED, TARGET)
    before = cm.mat.clone()
    assert cm.all_reduce() is cm
    assert torch.equal(cm.mat, before)


def _all_reduce_worker(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        # Each rank scores its own half of a deterministic batch.
        torch.manual_seed(3)
        target = torch.randint(0, 4, (4, 8, 8))
        pred = torch.randint(0, 4, (4, 8, 8))
        cm = ConfusionMatrix(4).update(pred[rank * 2 : rank * 2 + 2], target[rank * 2 : rank * 2 + 2])
        cm.all_reduce()
        torch.save(cm.mat, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
@pytest.mark.skipif(sys.platform != "linux", reason="uses the fork start method")
def test_all_reduce_sums_over_two_gloo_processes(tmp_path):
    out = tmp_path / "mat"
    # fork, not spawn: the children inherit the imported torch instead of importing it again (seconds each).
    mp.start_processes(
        _all_reduce_worker, args=(2, str(tmp_path / "init"), str(out)), nprocs=2, join=True, start_method="fork"
    )
    torch.manual_seed(3)
    target = torch.randint(0, 4, (4, 8, 8))
    pred = torch.randint(0, 4, (4, 8, 8))
    whole = ConfusionMatrix(4).update(pred, target).mat
    for rank in range(2):
        assert torch.equal(torch.load(f"{out}.{rank}"), whole)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matrix_accepts_cpu_inputs_and_matches_cpu():
    torch.manual_seed(4)
    target = torch.randint(0, 5, (2, 32, 32))
    target[:, :4] = 255
    logits = torch.randn(2, 5, 32, 32)
    cpu = ConfusionMatrix(5).update(logits, target)
    gpu = ConfusionMatrix(5, device="cuda").update(logits, target)
    gpu.update(logits.cuda(), target.cuda())
    assert gpu.mat.device.type == "cuda"
    assert torch.equal(gpu.mat.cpu(), 2 * cpu.mat)
    assert torch.equal(cpu.merge(gpu).mat, 3 * ConfusionMatrix(5).update(logits, target).mat)
    assert gpu.compute().miou == pytest.approx(cpu.compute().miou)


def test_majority_baseline_predicts_the_most_frequent_train_class_everywhere():
    # train: class 2 covers 5 of 8 labelled pixels (the 255s are void and do not vote)
    train = [(None, torch.tensor([[[2, 2, 1, 255], [2, 0, 2, 2]]]))]
    val_masks = torch.tensor([[[2, 2, 1, 1], [255, 0, 2, 2]]])
    majority, scores = majority_baseline(train, [(None, val_masks)], num_classes=3)
    assert majority == 2
    # predicting 2 on the 7 labelled val pixels: 4 right; IoU of class 2 is 4 / 7, classes 0 and 1 get 0
    assert scores.pixel_acc == pytest.approx(4 / 7)
    assert scores.iou.tolist() == pytest.approx([0.0, 0.0, 4 / 7])
    assert scores.miou == pytest.approx(4 / 21)


def test_majority_baseline_refuses_masks_it_cannot_count():
    with pytest.raises(ValueError, match="no labelled pixel"):
        majority_baseline([(None, torch.full((1, 2, 2), 255))], [], num_classes=3)
    with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
        majority_baseline([(None, torch.tensor([[[0, 7]]]))], [], num_classes=3)


def test_boundary_band_marks_pixels_near_a_change_of_label():
    from seglearn.metrics import boundary_band

    t = torch.zeros(1, 6, 8, dtype=torch.long)
    t[:, :, 4:] = 1  # a vertical edge between columns 3 and 4
    t[:, 0, 0] = 255
    band = boundary_band(t, width=1)
    expected = torch.zeros(1, 6, 8, dtype=torch.bool)
    expected[:, :, 3:5] = True  # one pixel either side of the edge
    expected[:, 0:2, 0:2] = True  # next to the void pixel ...
    expected[:, 0, 0] = False  # ... but never the void pixel itself
    assert torch.equal(band, expected)
    assert boundary_band(t, width=2)[0, 3].tolist() == [False, False, True, True, True, True, False, False]
    with pytest.raises(ValueError, match="at least 1"):
        boundary_band(t, width=0)
