"""Pictures of segmentation: coloured masks, overlays, galleries, training curves, confusion matrix, per-class bars.

Every helper takes the dataset's ``palette`` (K x 3 uint8) and class names, so it works for CamVid, VOC or the
synthetic scenes alike, and returns its matplotlib ``Figure`` (nothing is shown or saved here).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from .metrics import ConfusionMatrix, SegScores

__all__ = [
    "decode_mask",
    "to_image",
    "overlay",
    "gallery",
    "prediction_grid",
    "plot_history",
    "plot_confusion",
    "plot_class_iou",
    "plot_class_frequencies",
]

# The values of seglearn.data.IMAGENET_MEAN / IMAGENET_STD, repeated so plotting does not import albumentations.
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
ERROR_COLOR = (220, 20, 20)
IGNORE_GREY = (128, 128, 128)


def _numpy(x: Any) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _palette(palette: Any) -> np.ndarray:
    p = _numpy(palette)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"palette must be K x 3 RGB values, got shape {p.shape}")
    return p.astype(np.uint8)


def _names(class_names: Sequence[str] | None, num_classes: int) -> list[str]:
    if class_names is None:
        return [f"class {k}" for k in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"got {len(class_names)} class names for {num_classes} classes: pass one name per class")
    return [str(n) for n in class_names]


def decode_mask(
    mask: Any, palette: Any, ignore_index: int = 255, ignore_color: tuple[int, int, int] = (0, 0, 0)
) -> np.ndarray:
    """Colour a label mask: (H, W) ints -> (H, W, 3) uint8, ``palette[label]`` and ``ignore_color`` where ignored.

    Any leading shape works ((N, H, W) -> (N, H, W, 3)).
    """
    m = _numpy(mask)
    if m.dtype.kind not in "iub":
        raise TypeError(f"mask must hold integer labels, got dtype {m.dtype}: pass pred.argmax(1) for logits")
    pal = _palette(palette)
    m = m.astype(np.int64)
    ignored = m == ignore_index
    bad = ~ignored & ((m < 0) | (m >= len(pal)))
    if bad.any():
        raise ValueError(f"mask holds label {int(m[bad][0])} but the palette has {len(pal)} colours")
    out = pal[np.where(ignored, 0, m)]
    out[ignored] = np.asarray(ignore_color, dtype=np.uint8)
    return out


def to_image(x: Any, mean: Sequence[float] = _MEAN, std: Sequence[float] = _STD) -> np.ndarray:
    """An image for ``imshow``: uint8 (H, W, 3) as is; a normalized float (3, H, W) tensor is denormalized.

    uint8 (3, H, W) is transposed; float (H, W, 3) is taken as RGB in [0, 1].
    """
    a = _numpy(x)
    if a.ndim != 3 or 3 not in (a.shape[0], a.shape[-1]):
        raise ValueError(f"expected an image (H, W, 3) or (3, H, W), got shape {a.shape}")
    channels_first = a.shape[0] == 3 and a.shape[-1] != 3
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a.transpose(1, 2, 0) if channels_first else a)
    a = a.astype(np.float32)
    if channels_first:
        a = a.transpose(1, 2, 0) * np.asarray(std, np.float32) + np.asarray(mean, np.float32)
    return np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)


def _legend_handles(labels: np.ndarray, palette: np.ndarray, names: list[str]) -> list[Patch]:
    present = [k for k in np.unique(labels) if 0 <= k < len(names)]
    return [Patch(facecolor=palette[k] / 255.0, edgecolor="black", linewidth=0.5, label=names[k]) for k in present]


def overlay(
    image: Any,
    mask: Any,
    palette: Any,
    alpha: float = 0.5,
    classes: Sequence[str] | None = None,
    ax: Axes | None = None,
    ignore_index: int = 255,
) -> Figure:
    """Blend the coloured ``mask`` (H, W) over ``image`` (ignored pixels untouched); legend of classes present."""
    img = to_image(image)
    m = _numpy(mask).astype(np.int64)
    if m.shape != img.shape[:2]:
        raise ValueError(f"mask {m.shape} and image {img.shape[:2]} differ in size")
    pal = _palette(palette)
    colour = decode_mask(m, pal, ignore_index).astype(np.float32)
    blend = np.where((m != ignore_index)[..., None], (1 - alpha) * img + alpha * colour, img)
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 6 * img.shape[0] / img.shape[1]))
    ax.imshow(blend.astype(np.uint8))
    ax.set_axis_off()
    handles = _legend_handles(m[m != ignore_index], pal, _names(classes, len(pal)))
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small", frameon=False)
    return ax.figure


def _batch(x: Any) -> list[np.ndarray]:
    """A batch tensor or a list of arrays/tensors -> list of numpy arrays."""
    return [_numpy(item) for item in (x if not isinstance(x, torch.Tensor) else x.detach().cpu())]


def error_map(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, ignore_index: int = 255) -> np.ndarray:
    """(H, W, 3) uint8: correct pixels as the dimmed grey image, wrong ones red, ignored ones grey."""
    grey = image.astype(np.float32).mean(axis=-1, keepdims=True) * 0.5
    out = np.repeat(grey, 3, axis=-1).astype(np.uint8)
    ignored = truth == ignore_index
    out[(truth != pred) & ~ignored] = ERROR_COLOR
    out[ignored] = IGNORE_GREY
    return out


def gallery(
    images: Any,
    truths: Any,
    preds: Any | None,
    palette: Any,
    classes: Sequence[str] | None = None,
    errors: bool = True,
    titles: Sequence[str] | None = None,
    ignore_index: int = 255,
) -> Figure:
    """One row per image: image | truth | prediction | errors (wrong pixels red, ignored grey).

    ``images``: (N, 3, H, W) normalized tensor, or a list of images ``to_image`` understands; ``truths`` and
    ``preds``: (N, H, W) labels (``preds`` may be (N, C, H, W) logits, or None to show image | truth only).
    ``titles``: one label per row. A legend lists the classes present in the truths.
    """
    imgs = [to_image(im) for im in _batch(images)]
    gts = [t.astype(np.int64) for t in _batch(truths)]
    prs = None if preds is None else [p.astype(np.int64) for p in _batch(_labels(preds))]
    n = len(imgs)
    if len(gts) != n or (prs is not None and len(prs) != n):
        raise ValueError(f"got {n} images, {len(gts)} truths and {len(prs or [])} predictions: pass one of each")
    if titles is not None and len(titles) != n:
        raise ValueError(f"got {len(titles)} titles for {n} rows")
    columns = ["image", "truth"] + ([] if prs is None else ["prediction"] + (["errors"] if errors else []))
    pal = _palette(palette)
    h, w = imgs[0].shape[:2]
    fig, axes = plt.subplots(n, len(columns), figsize=(2.6 * len(columns), 2.6 * n * h / w + 0.6), squeeze=False)
    for i in range(n):
        panels = [imgs[i], decode_mask(gts[i], pal, ignore_index)]
        if prs is not None:
            panels.append(decode_mask(prs[i], pal, ignore_index))
            if errors:
                panels.append(error_map(imgs[i], gts[i], prs[i], ignore_index))
        for j, (ax, panel) in enumerate(zip(axes[i], panels, strict=True)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            title = columns[j] if i == 0 else ""
            if columns[j] == "errors":
                labelled = gts[i] != ignore_index
                wrong = float((gts[i] != prs[i])[labelled].mean()) if labelled.any() else float("nan")
                title = f"{title} {100 * wrong:.1f}%".strip()
            ax.set_title(title, fontsize="small")
        if titles is not None:
            axes[i, 0].set_ylabel(titles[i], fontsize="small")
    handles = _legend_handles(np.concatenate([g.ravel() for g in gts]), pal, _names(classes, len(pal)))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.06 if handles else 0, 1, 1))
    return fig


def prediction_grid(
    images: Any,
    truths: Any,
    preds: Mapping[str, Any],
    palette: Any,
    classes: Sequence[str] | None = None,
    ignore_index: int = 255,
) -> Figure:
    """The same images through several models: one row per image, columns image | truth | one per model.

    ``images``: (N, 3, H, W) normalized tensor or a list of images; ``truths``: (N, H, W) labels; ``preds``: model
    name -> its (N, H, W) labels (or (N, C, H, W) logits), in column order. A legend lists the classes in the truths.
    """
    imgs = [to_image(im) for im in _batch(images)]
    gts = [t.astype(np.int64) for t in _batch(truths)]
    columns = {name: [p.astype(np.int64) for p in _batch(_labels(pred))] for name, pred in preds.items()}
    bad = {name: len(p) for name, p in columns.items() if len(p) != len(imgs)}
    if len(gts) != len(imgs) or bad:
        raise ValueError(f"got {len(imgs)} images, {len(gts)} truths and predictions {bad}: pass one of each per image")
    pal, titles = _palette(palette), ["image", "truth", *columns]
    rows, (h, w) = len(imgs), imgs[0].shape[:2]
    fig, axes = plt.subplots(rows, len(titles), figsize=(1.7 * len(titles), 1.7 * rows * h / w + 0.9), squeeze=False)
    for i in range(rows):
        panels = [imgs[i], decode_mask(gts[i], pal, ignore_index)]
        panels += [decode_mask(p[i], pal, ignore_index) for p in columns.values()]
        for j, (ax, panel) in enumerate(zip(axes[i], panels, strict=True)):
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize="small")
    handles = _legend_handles(np.concatenate([g.ravel() for g in gts]), pal, _names(classes, len(pal)))
    if handles:
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), fontsize="small", frameon=False)
    fig.tight_layout(rect=(0, 0.08 if handles else 0, 1, 1))
    return fig


def _labels(pred: Any) -> Any:
    """Logits (N, C, H, W) -> labels (N, H, W); labels pass through."""
    return pred.argmax(1) if isinstance(pred, torch.Tensor) and pred.dim() == 4 else pred


def _field(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, Mapping) else getattr(obj, name)


def plot_history(history: Any) -> Figure:
    """Training loss, validation mIoU / pixel accuracy and learning rate per epoch (from a ``History`` or its dict)."""
    loss = list(_field(history, "train_loss"))
    val = list(_field(history, "val"))
    val_epochs = list(_field(history, "val_epochs")) or list(range(1, len(val) + 1))
    lr = list(_field(history, "lr"))
    times = list(_field(history, "epoch_time"))
    fig, (ax_loss, ax_val, ax_lr) = plt.subplots(1, 3, figsize=(13, 3.6))
    ax_loss.plot(range(1, len(loss) + 1), loss, "o-", ms=3, label="train loss")
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="loss")
    if val:
        ax_val.plot(val_epochs, [100 * float(_field(s, "miou")) for s in val], "o-", ms=3, label="mIoU")
        ax_val.plot(val_epochs, [100 * float(_field(s, "pixel_acc")) for s in val], "s--", ms=3, label="pixel acc")
        ax_val.legend(fontsize="small")
    else:
        ax_val.text(0.5, 0.5, "no validation yet", ha="center", va="center", transform=ax_val.transAxes)
    ax_val.set(title="validation", xlabel="epoch", ylabel="%")
    ax_lr.plot(range(1, len(lr) + 1), lr, "-", color="tab:gray")
    ax_lr.set(title="learning rate", xlabel="epoch", ylabel="lr")
    for ax in (ax_loss, ax_val, ax_lr):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if times:
        fig.suptitle(f"{len(loss)} epochs in {sum(times):.0f} s ({np.mean(times):.1f} s/epoch)", fontsize="medium")
    fig.tight_layout()
    return fig


def plot_confusion(
    cm: ConfusionMatrix | torch.Tensor | np.ndarray, class_names: Sequence[str] | None = None, normalize: bool = True
) -> Figure:
    """Heat map of the confusion matrix (rows truth, columns prediction); ``normalize``: each row sums to 1."""
    m = _numpy(cm.mat if isinstance(cm, ConfusionMatrix) else cm).astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1]:
        raise ValueError(f"confusion matrix must be square (C, C), got shape {m.shape}")
    c = m.shape[0]
    names = _names(class_names, c)
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(rows > 0, m / rows, np.nan)
    fig, ax = plt.subplots(figsize=(1.5 + 0.45 * c, 1.0 + 0.45 * c))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class" if normalize else "pixels")
    ax.set_xticks(range(c), names, rotation=60, ha="right", fontsize="small")
    ax.set_yticks(range(c), names, fontsize="small")
    ax.set(xlabel="prediction", ylabel="truth", title="confusion matrix" + (" (row-normalized)" if normalize else ""))
    if c <= 25:
        top = np.nanmax(m) if np.isfinite(m).any() else 1.0
        for (i, j), v in np.ndenumerate(m):
            if np.isfinite(v) and v > 0:
                text = f"{v:.2f}" if normalize else f"{int(v)}"
                ax.text(j, i, text, ha="center", va="center", fontsize=6, color="white" if v > top / 2 else "black")
    fig.tight_layout()
    return fig


def plot_class_iou(
    scores: SegScores | Mapping[str, SegScores], class_names: Sequence[str] | None = None, metric: str = "iou"
) -> Figure:
    """Bars of per-class IoU (or ``metric="acc"``), grouped when ``scores`` maps model names to scores."""
    runs = dict(scores) if isinstance(scores, Mapping) else {"": scores}
    if not runs:
        raise ValueError("no scores to plot")
    values = {name: np.asarray(getattr(s, metric), dtype=np.float64) for name, s in runs.items()}
    c = len(next(iter(values.values())))
    if any(len(v) != c for v in values.values()):
        raise ValueError("all scores must have the same number of classes")
    names = _names(class_names, c)
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.5 * c * max(1, len(runs) ** 0.5)), 3.8))
    for k, (run, v) in enumerate(values.items()):
        mean = runs[run].miou if metric == "iou" else runs[run].mean_acc
        label = f"{run + ' ' if run else ''}(mean {100 * mean:.1f})"
        ax.bar(np.arange(c) + (k - (len(runs) - 1) / 2) * width, 100 * v, width, label=label)
    ax.set_xticks(range(c), names, rotation=45, ha="right")
    what = "IoU" if metric == "iou" else "accuracy"
    ax.set(ylabel=f"{what} %", ylim=(0, 100), title=f"per-class {what}")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def plot_class_frequencies(freqs: Any, class_names: Sequence[str] | None, palette: Any, log: bool = False) -> Figure:
    """Bars of each class's share of the labelled pixels, in the class's own colour."""
    f = _numpy(freqs).astype(np.float64).ravel()
    pal = _palette(palette)
    if len(pal) < len(f):
        raise ValueError(f"{len(f)} frequencies but only {len(pal)} palette colours")
    names = _names(class_names, len(f))
    share = f / f.sum() if f.sum() > 0 else f
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(f)), 3.6))
    bars = ax.bar(range(len(f)), 100 * share, color=pal[: len(f)] / 255.0, edgecolor="black", linewidth=0.5)
    ax.bar_label(bars, labels=[f"{100 * s:.1f}" for s in share], fontsize="x-small")
    ax.set_xticks(range(len(f)), names, rotation=45, ha="right")
    ax.set(ylabel="% of labelled pixels", title="class frequencies")
    if log:
        ax.set_yscale("log")
    fig.tight_layout()
    return fig
