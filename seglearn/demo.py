"""``python -m seglearn demo``: a first contact in a minute: train a tiny FCN on synthetic scenes, score it, show it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from seglearn.cli import MODEL_FILE, _datasets, load_model, train_job


def run_demo(args: argparse.Namespace) -> int:
    """Train tinyfcn on synthetic scenes within ``args.seconds``, print its scores, write a gallery and curves."""
    import matplotlib.pyplot as plt

    from seglearn.engine import predict
    from seglearn.plot import gallery

    out = Path(args.out)
    print(
        "seglearn demo: semantic segmentation gives every pixel a class. A tiny FCN (`tinyfcn`, 0.3 M parameters)\n"
        "learns to label synthetic street scenes with CamVid's 11 classes (sky, building, road, car, ...),\n"
        f"training for up to {args.epochs} epochs or {args.seconds:.0f} s, then is scored on scenes it never saw.\n"
    )
    job = argparse.Namespace(
        dataset="synthetic", root=None, num_images=args.num_images, image_size=[96, 128], crop=[96, 128],
        batch_size=8, lr=0.05, optimizer="sgd", workers=0, epochs=args.epochs, time_budget=args.seconds,
        resume=False, aux_loss=False, backbone=None, pretrained_backbone=False, sync_bn=False, seed=args.seed,
        device=args.device,
    )  # fmt: skip
    start = time.perf_counter()
    result = train_job(job, model_name="tinyfcn", out=out, quiet=True)
    scores, history, classes = result["scores"], result["history"], result["classes"]
    (val_set,) = _datasets(job, None, ["val"])
    took = time.perf_counter() - start
    print(f"\ntrained {history.epochs} epochs in {took:.0f} s. Scores on {len(val_set)} scenes it never saw:")
    print(scores.table(classes))
    print(
        f"\nIoU = overlap / union of predicted and true pixels of a class; mIoU is its mean over classes "
        f"({100 * scores.miou:.1f}% here, 100% is perfect).\nA longer run (--seconds 300) or a bigger model "
        "(python -m seglearn train --model unet ...) does better; the notebooks explain why."
    )
    model, _ = load_model(out / MODEL_FILE)
    n = min(4, len(val_set))
    images = torch.stack([val_set[i][0] for i in range(n)])
    masks = torch.stack([val_set[i][1] for i in range(n)])
    fig = gallery(images, masks, predict(model, images), palette=result["palette"], classes=classes)
    fig.savefig(out / "gallery.png", dpi=100)
    plt.close("all")
    print(f"\nwrote {out / 'gallery.png'} (image | truth | prediction | errors) and {out / 'curves.png'}")
    return 0
