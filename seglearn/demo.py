"""``python -m seglearn demo``: a first contact in a minute: train a tiny FCN on synthetic scenes, score it, show it."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from seglearn.atomic import write_file
from seglearn.job import TrainJob, job_val_set, run_train_job


def run_demo(
    out: str | Path = "runs/demo",
    epochs: int = 40,
    seconds: float = 60.0,
    num_images: int = 96,
    seed: int = 0,
    device: str | None = None,
) -> int:
    """Train tinyfcn on synthetic scenes within ``seconds``, print its scores, write a gallery and curves to ``out``."""
    import matplotlib.pyplot as plt

    from seglearn.engine import predict
    from seglearn.plot import gallery

    print(
        "seglearn demo: semantic segmentation gives every pixel a class. A tiny FCN (`tinyfcn`, 0.3 M parameters)\n"
        "learns to label synthetic street scenes with CamVid's 11 classes (sky, building, road, car, ...),\n"
        f"training for up to {epochs} epochs or {seconds:.0f} s, then is scored on scenes it never saw.\n"
    )
    job = TrainJob(
        model="tinyfcn", num_images=num_images, image_size=(96, 128), crop=(96, 128), lr=0.05, workers=0,
        epochs=epochs, time_budget=seconds, seed=seed, device=device, out=out,
    )  # fmt: skip
    start = time.perf_counter()
    result = run_train_job(job, quiet=True)
    scores, history, classes = result.scores, result.history, result.classes
    val_set = job_val_set(job)
    took = time.perf_counter() - start
    print(f"\ntrained {history.epochs} epochs in {took:.0f} s. Scores on {len(val_set)} scenes it never saw:")
    print(scores.table(classes))
    print(
        f"\nIoU = overlap / union of predicted and true pixels of a class; mIoU is its mean over classes "
        f"({100 * scores.miou:.1f}% here, 100% is perfect).\nA longer run (--seconds 300) or a bigger model "
        "(python -m seglearn train --model unet ...) does better; the notebooks explain why."
    )
    n = min(4, len(val_set))
    images = torch.stack([val_set[i][0] for i in range(n)])
    masks = torch.stack([val_set[i][1] for i in range(n)])
    fig = gallery(images, masks, predict(result.model, images), palette=result.palette, classes=classes)
    write_file(job.out / "gallery.png", lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close("all")
    print(f"\nwrote {job.out / 'gallery.png'} (image | truth | prediction | errors) and {job.out / 'curves.png'}")
    return 0
