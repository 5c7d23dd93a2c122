"""PASCAL VOC through the whole stack: images of different sizes scored at any batch size, and training through
the command line on the two real VOC 2012 pairs (a trainaug run on SBD made in the test)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset

from seglearn.cli import main
from seglearn.data import VOCSegmentation, eval_transforms, make_loader
from seglearn.data.collate import eval_collate, same_size_groups
from seglearn.evaluation import evaluate
from tests.test_data_voc import make_sbd, make_voc


def test_eval_collate_stacks_one_size_and_lists_several():
    a, b = (torch.zeros(3, 4, 6), torch.zeros(4, 6)), (torch.ones(3, 5, 6), torch.ones(5, 6))
    images, masks = eval_collate([a, a])
    assert images.shape == (2, 3, 4, 6) and masks.shape == (2, 4, 6)
    images, masks = eval_collate([a, b, a])
    assert [tuple(i.shape) for i in images] == [(3, 4, 6), (3, 5, 6), (3, 4, 6)]
    groups = list(same_size_groups(images, masks))
    assert [tuple(g[0].shape) for g in groups] == [(2, 3, 4, 6), (1, 3, 5, 6)]
    assert [tuple(g[1].shape) for g in groups] == [(2, 4, 6), (1, 5, 6)]
    with pytest.raises(ValueError, match="one mask per image"):
        list(same_size_groups(images, masks[:2]))


def _voc_pairs(shared_voc):
    """Both real pairs (500x366 and 500x281) once each, in eval form."""
    return ConcatDataset([VOCSegmentation(shared_voc, split=s, transforms=eval_transforms()) for s in ("val", "train")])


def test_voc_scores_are_the_same_at_every_batch_size(shared_voc):
    data = _voc_pairs(shared_voc)
    sizes = {tuple(data[i][0].shape[-2:]) for i in range(len(data))}
    assert len(sizes) == 2, sizes  # the point of the test: images of different sizes in one batch
    torch.manual_seed(0)
    # A random net whose prediction follows the pixels (a freshly built segmentation model predicts one class).
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 21, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv2d(21, 21, 3, padding=1)
    )
    scores = [evaluate(model, make_loader(data, batch_size=b, train=False), 21, device="cpu") for b in (1, 2, 3)]
    assert np.isfinite(scores[0].iou).sum() > 3  # many classes predicted, so the comparison says something
    assert scores[1] == scores[0] and scores[2] == scores[0]  # every field, exactly


def test_train_and_evaluate_voc_through_the_cli(shared_voc, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "tinyfcn", "--model-arg", "width=8", "--dataset", "voc", "--root", str(shared_voc),
            "--epochs", "2", "--crop", "96", "--batch-size", "2", "--workers", "0", "--optimizer", "adamw",
            "--lr", "1e-3", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    scores = json.loads((out / "scores.json").read_text())
    assert record["train_images"] == 2 and record["val_images"] == 1
    assert len(scores["classes"]) == 21 and scores["classes"][15] == "person"
    # evaluate at a batch size larger than one over images of two sizes (train has both pairs)
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out / "model.pt"), "--dataset", "voc", "--root", str(shared_voc),
                 "--split", "train", "--batch-size", "2", "--workers", "0"]) == 0  # fmt: skip
    assert "tinyfcn on voc train (2 images)" in capsys.readouterr().out


def test_train_on_trainaug_through_the_cli(tmp_path):
    """--split trainaug: SBD's .mat labels beside VOC's PNGs, the VOC val images left out of training."""
    rng = np.random.default_rng(0)
    masks = {n: rng.integers(0, 21, (40, 52)).astype(np.uint8) for n in ("a", "c")}
    root = make_voc(tmp_path / "voc", masks, train=["a"], val=["c"])
    sbd = {n: rng.integers(0, 21, (40, 52)).astype(np.uint8) for n in ("s1", "s2", "c")}
    for name in ("s1", "s2"):  # VOC 2012's JPEGImages holds SBD's images too
        image = rng.integers(0, 256, (40, 52, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "VOCdevkit" / "VOC2012" / "JPEGImages" / f"{name}.jpg")
    make_sbd(root / "SBD", sbd, train=["s1", "s2"], val=["c"])
    out = tmp_path / "run"
    argv = ["train", "--model", "tinyfcn", "--model-arg", "width=8", "--dataset", "voc", "--root", str(root),
            "--split", "trainaug", "--epochs", "1", "--crop", "32", "--batch-size", "2", "--workers", "0",
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((out / "run.json").read_text())
    assert record["train_images"] == 3 and record["val_images"] == 1  # a, s1, s2 (c is VOC val)
    assert "--split trainaug" in record["command"]


def test_an_unknown_split_is_one_line(tmp_path, capsys, shared_voc):
    argv = ["train", "--model", "tinyfcn", "--dataset", "voc", "--root", str(shared_voc), "--split", "nope",
            "--out", str(tmp_path / "r")]  # fmt: skip
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "unknown VOC split 'nope'" in capsys.readouterr().err


def test_rotate_reaches_the_training_transforms_only(shared_voc):
    import albumentations as A

    from seglearn.data import job_datasets
    from seglearn.job import TrainJob

    train, val = job_datasets("voc", ["train", "val"], root=shared_voc, crop=(64, 64), rotate=10)
    rotations = [t for t in train.transforms.transforms if isinstance(t, A.Rotate)]
    assert len(rotations) == 1 and tuple(rotations[0].limit) == (-10, 10)
    assert not any(isinstance(t, A.Rotate) for t in val.transforms.transforms)
    with pytest.raises(ValueError, match="--rotate takes the largest angle"):
        TrainJob("tinyfcn", rotate=200)


def test_the_majority_floor_reads_val_batches_of_different_sizes(shared_voc):
    from seglearn.metrics import majority_baseline

    data = _voc_pairs(shared_voc)
    floors = [majority_baseline(make_loader(data, batch_size=1, train=False), make_loader(data, batch_size=b,
                                train=False), 21)[1] for b in (1, 2)]  # fmt: skip
    assert floors[0] == floors[1] and floors[0].pixel_acc > 0
