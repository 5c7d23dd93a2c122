"""Plot helpers: exact mask colours, image round trips, and the axes/artists of each returned figure (Agg backend)."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from seglearn.history import History  # noqa: E402
from seglearn.metrics import ConfusionMatrix, SegScores  # noqa: E402
from seglearn.plot import (  # noqa: E402
    ERROR_COLOR,
    IGNORE_GREY,
    decode_mask,
    gallery,
    overlay,
    plot_class_frequencies,
    plot_class_iou,
    plot_confusion,
    plot_history,
    prediction_grid,
    to_image,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGLEARN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
VOC_MASKS = SHARED_DATA / "voc-sample" / "VOCdevkit" / "VOC2012" / "SegmentationClass"
MEAN = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
STD = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
PALETTE = np.array([[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [60, 40, 222]], dtype=np.uint8)
NAMES = ["sky", "building", "pole", "road", "pavement"]


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def sample():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (3, 12, 16, 3), generator=g, dtype=torch.uint8)
    truths = torch.randint(0, 4, (3, 12, 16), generator=g)  # classes 0..3 only: pavement absent
    truths[:, :2] = 255
    preds = truths.clone()
    preds[truths == 255] = 0
    preds[:, 5, :4] = (truths[:, 5, :4] + 1) % 4  # 4 wrong pixels per image
    normalized = (images.permute(0, 3, 1, 2).float() / 255 - MEAN) / STD
    return images, normalized, truths, preds


def test_decode_mask_maps_labels_exactly_to_palette():
    mask = np.array([[0, 1, 2], [3, 4, 255]])
    rgb = decode_mask(mask, PALETTE)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    for label in range(5):
        assert (rgb[mask == label] == PALETTE[label]).all()
    assert (rgb[1, 2] == 0).all()
    assert (decode_mask(torch.from_numpy(mask), PALETTE, ignore_color=(1, 2, 3))[1, 2] == [1, 2, 3]).all()
    # A batch and another ignore_index (the label value then needs no colour).
    batch = decode_mask(np.stack([mask, mask]), PALETTE.tolist())
    assert batch.shape == (2, 2, 3, 3) and (batch[1] == rgb).all()
    m = mask.copy()
    m[m == 255] = 7
    assert (decode_mask(m, PALETTE, ignore_index=7, ignore_color=(9, 9, 9))[1, 2] == 9).all()


@pytest.mark.skipif(not VOC_MASKS.is_dir(), reason="shared VOC sample not present")
@pytest.mark.parametrize("name", ["2007_000032", "2007_000033"])
def test_decode_mask_matches_pillow_on_real_voc_palette_pngs(name):
    from PIL import Image

    png = Image.open(VOC_MASKS / f"{name}.png")
    assert png.mode == "P"
    palette = np.asarray(png.getpalette(), dtype=np.uint8).reshape(-1, 3)
    mask = np.asarray(png)
    assert 255 in mask  # object boundaries
    # 21 class colours; the boundary value 255 gets the PNG's own colour for index 255 (224, 224, 192).
    rgb = decode_mask(mask, palette[:21], ignore_color=tuple(palette[255]))
    assert np.array_equal(rgb, np.asarray(png.convert("RGB")))


def test_decode_mask_errors():
    with pytest.raises(ValueError, match="label 5 but the palette has 5 colours"):
        decode_mask(np.array([[0, 5]]), PALETTE)
    with pytest.raises(TypeError, match="integer"):
        decode_mask(np.zeros((2, 2), np.float32), PALETTE)
    with pytest.raises(ValueError, match="K x 3"):
        decode_mask(np.zeros((2, 2), np.int64), PALETTE[:, :2])


def test_to_image_round_trips_normalized_tensors(sample):
    images, normalized, _, _ = sample
    assert np.array_equal(to_image(normalized[0]), images[0].numpy())
    assert np.array_equal(to_image(images[0].numpy()), images[0].numpy())
    assert np.array_equal(to_image(images[0].permute(2, 0, 1)), images[0].numpy())
    assert np.array_equal(to_image(images[0].numpy() / 255.0), images[0].numpy())
    with pytest.raises(ValueError, match="expected an image"):
        to_image(np.zeros((4, 4)))


def test_imagenet_constants_agree_with_data_module():
    data = pytest.importorskip("seglearn.data")
    assert torch.allclose(MEAN.flatten(), torch.tensor(data.IMAGENET_MEAN))
    assert torch.allclose(STD.flatten(), torch.tensor(data.IMAGENET_STD))


def test_overlay(sample):
    images, normalized, truths, _ = sample
    fig = overlay(normalized[0], truths[0], PALETTE, classes=NAMES)
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert len(ax.images) == 1
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sky", "building", "pole", "road"]
    # alpha 1: labelled pixels take the class colour, ignored pixels keep the image.
    shown = np.asarray(overlay(images[0], truths[0], PALETTE, alpha=1.0).axes[0].images[0].get_array())
    labelled = truths[0].numpy() != 255
    assert (shown[labelled] == PALETTE[truths[0].numpy()[labelled]]).all()
    assert (shown[~labelled] == images[0].numpy()[~labelled]).all()
    # An existing axes is drawn into.
    fig2, axes = plt.subplots(1, 2)
    assert overlay(images[1], truths[1], PALETTE, ax=axes[1]) is fig2 and len(axes[1].images) == 1
    with pytest.raises(ValueError, match="differ in size"):
        overlay(images[0], truths[0, :5], PALETTE)


def test_gallery_rows_columns_and_error_panel(sample):
    _, normalized, truths, preds = sample
    fig = gallery(normalized, truths, preds, PALETTE, classes=NAMES, titles=["a", "b", "c"])
    assert isinstance(fig, Figure) and len(fig.axes) == 12  # 3 rows x (image | truth | prediction | errors)
    assert all(len(ax.images) == 1 for ax in fig.axes)
    assert [ax.get_title() for ax in fig.axes[:3]] == ["image", "truth", "prediction"]
    assert fig.axes[3].get_title() == f"errors {100 * 4 / (10 * 16):.1f}%"
    assert [fig.axes[4 * i].get_ylabel() for i in range(3)] == ["a", "b", "c"]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == NAMES[:4]
    truth_rgb = np.asarray(fig.axes[1].images[0].get_array())
    assert np.array_equal(truth_rgb, decode_mask(truths[0], PALETTE))
    err = np.asarray(fig.axes[3].images[0].get_array())
    t, p = truths[0].numpy(), preds[0].numpy()
    wrong = (t != p) & (t != 255)
    assert wrong.sum() == 4 and (err[wrong] == ERROR_COLOR).all()
    assert (err[t == 255] == IGNORE_GREY).all()
    assert not (err[~wrong & (t != 255)] == ERROR_COLOR).all(axis=-1).any()


def test_gallery_variants(sample):
    images, normalized, truths, preds = sample
    logits = torch.nn.functional.one_hot(preds, 5).permute(0, 3, 1, 2).float()
    from_logits = gallery(normalized, truths, logits, PALETTE, errors=False)
    assert len(from_logits.axes) == 9
    assert np.array_equal(np.asarray(from_logits.axes[2].images[0].get_array()), decode_mask(preds[0], PALETTE))
    data_only = gallery([im.numpy() for im in images[:2]], [t.numpy() for t in truths[:2]], None, PALETTE)
    assert len(data_only.axes) == 4
    with pytest.raises(ValueError, match="one of each"):
        gallery(normalized, truths[:2], preds, PALETTE)


def test_prediction_grid_one_column_per_model(sample):
    images, normalized, truths, preds = sample
    logits = torch.nn.functional.one_hot(preds, 5).permute(0, 3, 1, 2).float()
    fig = prediction_grid(normalized[:2], truths[:2], {"a": preds[:2], "b": logits[:2], "c": preds[:2].numpy()},
                          PALETTE, classes=NAMES)  # fmt: skip
    assert isinstance(fig, Figure) and len(fig.axes) == 2 * 5  # 2 rows x (image | truth | a | b | c)
    assert [ax.get_title() for ax in fig.axes[:5]] == ["image", "truth", "a", "b", "c"]
    assert all(ax.get_title() == "" for ax in fig.axes[5:])  # titles on the first row only
    assert np.array_equal(np.asarray(fig.axes[0].images[0].get_array()), images[0].numpy())
    assert np.array_equal(np.asarray(fig.axes[6].images[0].get_array()), decode_mask(truths[1], PALETTE))
    for col in (2, 3, 4):  # labels, logits and numpy arrays give the same coloured prediction
        assert np.array_equal(np.asarray(fig.axes[5 + col].images[0].get_array()), decode_mask(preds[1], PALETTE))
    assert [t.get_text() for t in fig.legends[0].get_texts()] == NAMES[:4]  # classes of the truths, void left out
    with pytest.raises(ValueError, match="one of each per image"):
        prediction_grid(normalized[:2], truths[:2], {"a": preds[:1]}, PALETTE)


def _history(val: bool) -> History:
    h = History(train_loss=[1.2, 0.8, 0.6], lr=[0.01, 0.006, 0.002], epoch_time=[2.0, 2.0, 2.5])
    if val:
        for epoch, miou in ((2, 0.3), (3, 0.4)):
            iou = np.array([miou, miou])
            h.record_val(epoch, SegScores(0.8, 0.5, iou, miou, 0.6, np.array([0.5, 0.5])))
    return h


def test_plot_history():
    fig = plot_history(_history(val=True))
    assert isinstance(fig, Figure) and len(fig.axes) == 3
    ax_loss, ax_val, ax_lr = fig.axes
    assert list(ax_loss.lines[0].get_xdata()) == [1, 2, 3] and list(ax_loss.lines[0].get_ydata()) == [1.2, 0.8, 0.6]
    assert len(ax_val.lines) == 2
    assert list(ax_val.lines[0].get_xdata()) == [2, 3]
    np.testing.assert_allclose(ax_val.lines[0].get_ydata(), [30, 40])
    np.testing.assert_allclose(ax_val.lines[1].get_ydata(), [80, 80])
    assert list(ax_lr.lines[0].get_ydata()) == [0.01, 0.006, 0.002]
    assert "3 epochs" in fig._suptitle.get_text()
    # The plain-data form written to checkpoints plots the same.
    again = plot_history(_history(val=True).to_dict())
    np.testing.assert_allclose(again.axes[1].lines[0].get_ydata(), [30, 40])


def test_plot_history_without_validation():
    fig = plot_history(_history(val=False))
    assert len(fig.axes) == 3 and len(fig.axes[1].lines) == 0
    assert "no validation" in fig.axes[1].texts[0].get_text()
    empty = plot_history(History())
    assert len(empty.axes) == 3 and len(empty.axes[0].lines[0].get_xdata()) == 0


def test_plot_confusion():
    cm = ConfusionMatrix(3).update(torch.tensor([[0, 1, 1, 1, 2]]), torch.tensor([[0, 0, 1, 1, 1]]))
    # mat = [[1, 1, 0], [0, 2, 1], [0, 0, 0]]: class 2 never true -> its row is empty (NaN when normalized)
    fig = plot_confusion(cm, ["a", "b", "c"])
    assert isinstance(fig, Figure) and len(fig.axes) == 2  # heat map + colour bar
    ax = fig.axes[0]
    shown = np.ma.filled(ax.images[0].get_array(), np.nan)
    np.testing.assert_allclose(shown[:2], [[0.5, 0.5, 0], [0, 2 / 3, 1 / 3]])
    assert np.isnan(shown[2]).all()
    assert len(ax.texts) == 4  # one per non-zero cell
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    counts = plot_confusion(cm.mat.numpy(), normalize=False).axes[0]
    assert np.array_equal(np.asarray(counts.images[0].get_array()), cm.mat.numpy())
    assert sorted(t.get_text() for t in counts.texts) == ["1", "1", "1", "2"]
    assert len(plot_confusion(cm.mat).axes) == 2
    with pytest.raises(ValueError, match="square"):
        plot_confusion(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(cm, ["a"])


def test_plot_class_iou_single_and_grouped(sample):
    _, _, truths, preds = sample
    good = ConfusionMatrix(5).update(preds, truths).compute()
    bad = ConfusionMatrix(5).update(torch.zeros_like(preds), truths).compute()
    fig = plot_class_iou(good, NAMES)
    ax = fig.axes[0]
    assert len(ax.patches) == 5
    np.testing.assert_allclose([p.get_height() for p in ax.patches], 100 * good.iou)  # NaN for pavement
    grouped = plot_class_iou({"fcn": good, "zeros": bad, "again": good}, NAMES).axes[0]
    assert len(grouped.patches) == 15
    labels = [t.get_text() for t in grouped.get_legend().get_texts()]
    assert len(labels) == 3 and labels[0].startswith("fcn (mean")
    assert len(plot_class_iou(good, NAMES, metric="acc").axes[0].patches) == 5


def test_plot_class_frequencies():
    freqs = np.array([0.169, 0.233, 0.010, 0.317, 0.045])
    fig = plot_class_frequencies(freqs, NAMES, PALETTE)
    ax = fig.axes[0]
    assert len(ax.patches) == 5
    np.testing.assert_allclose(sum(p.get_height() for p in ax.patches), 100)
    for patch, colour in zip(ax.patches, PALETTE, strict=True):
        np.testing.assert_allclose(patch.get_facecolor()[:3], colour / 255)
    counts = plot_class_frequencies(torch.tensor([10, 30]), ["x", "y"], PALETTE, log=True).axes[0]
    np.testing.assert_allclose([p.get_height() for p in counts.patches], [25, 75])
    assert counts.get_yscale() == "log"
