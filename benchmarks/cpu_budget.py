"""Learning per CPU-minute: each candidate trained for the same wall-clock budget on real CamVid, scored on val.

Every candidate gets the same treatment, the levers measured to help on a CPU (see the README's CPU table):
CamVid train decoded once into memory (``preload``), random rescale around half resolution and crops of ``--crop``,
NHWC memory layout (``channels_last``: 1.45x faster bare training steps for U-Net on a 2-core CPU, torch 2.15),
AdamW with a short warm-up and a poly decay that ends about when the budget does: the number of epochs is set from
the candidate's own measured step time, and ``fit``'s time budget is the hard stop.
Val is scored on all 101 CamVid val frames at their full 360x480 labels, predicting at the training scale and
upsampling the logits.

    python benchmarks/cpu_budget.py --minutes 15                      # the README's table (both cores, ~16 min each)
    python benchmarks/cpu_budget.py --minutes 2 --models unet16 enet  # a quick screen
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

import seglearn
from seglearn import data
from seglearn.atomic import write_json
from seglearn.engine import evaluate
from seglearn.models import count_parameters

# name -> (create_model name, keywords). The series' small models: what a CPU can train in minutes.
CANDIDATES: dict[str, tuple[str, dict]] = {
    "unet16": ("unet", {"base_channels": 16}),
    "linknet-r18": ("linknet", {"backbone": "resnet18"}),
    "enet": ("enet", {}),
}


def camvid_sets(crop: tuple[int, int], scale: float) -> tuple[data.CamVid, data.CamVid]:
    """Preloaded CamVid train (random rescale by ``scale`` x [0.8, 1.25], crop) and val at full resolution."""
    root = data.locate_dataset("camvid")
    if root is None:
        raise SystemExit("real CamVid not found: run `python -m seglearn download camvid` or set SEGLEARN_DATA")
    tf = data.train_transforms(crop, scale=(0.8 * scale, 1.25 * scale))
    train = data.CamVid(root, "train", transforms=tf, preload=True)
    val = data.CamVid(root, "val", transforms=data.eval_transforms(), preload=True)
    return train, val


def seconds_per_step(model: torch.nn.Module, loader: DataLoader, steps: int = 8) -> float:
    """Median wall time of one AdamW training step of a copy of ``model`` on batches of ``loader``, loading included
    (after two warm-up steps); the copy keeps the candidate's own weights untouched."""
    net = copy.deepcopy(model).train().to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), 1e-3)
    times = []
    start = time.perf_counter()
    for i, (x, y) in zip(range(steps + 2), loader, strict=False):
        out = net(x.contiguous(memory_format=torch.channels_last))["out"]
        F.cross_entropy(out, y, ignore_index=255).backward()
        opt.step()
        opt.zero_grad()
        if i >= 2:
            times.append(time.perf_counter() - start)
        start = time.perf_counter()
    return sorted(times)[len(times) // 2]


def run(name: str, args: argparse.Namespace, train: data.CamVid, val: data.CamVid, seed: int) -> dict:
    model_name, kwargs = CANDIDATES[name]
    torch.manual_seed(seed)
    model = seglearn.create_model(model_name, train.num_classes, **kwargs)
    loader = data.make_loader(train, batch_size=args.batch_size, train=True, workers=args.workers, seed=seed)
    start = time.perf_counter()
    step_s = seconds_per_step(model, loader)
    budget = max(0.0, args.minutes * 60 - (time.perf_counter() - start))  # the calibration is part of the budget
    # Nearest, not floor: a floor left up to an epoch of the budget unused; fit's budget cuts a last epoch that
    # runs over, by then at a learning rate near zero.
    epochs = max(1, round(budget / step_s / len(loader)))
    history = seglearn.fit(
        model, loader, None, epochs=epochs, lr=args.lr, optimizer="adamw", weight_decay=1e-4, seed=seed,
        device="cpu", time_budget_s=budget, warmup_iters=min(100, epochs * len(loader) // 20), channels_last=True,
        progress=False, live_plot=False,
    )  # fmt: skip
    train_s = time.perf_counter() - start
    val_loader = data.make_loader(val, batch_size=4, train=False)
    scores = evaluate(model, val_loader, train.num_classes, device="cpu", scales=(args.scale,), channels_last=True)
    steps = sum(history.train_images) // args.batch_size  # the last epoch may be one the budget stopped midway
    return {
        "candidate": name, "model": model_name, "config": kwargs, "seed": seed,
        "params_m": count_parameters(model) / 1e6, "epochs_planned": epochs, "epochs": history.epochs,
        "steps": steps, "partial_steps": history.partial_steps, "train_s": train_s,
        "images_per_s": steps * args.batch_size / train_s,
        "miou": 100 * scores.miou, "pixel_acc": 100 * scores.pixel_acc,
        "recipe": {"crop": list(args.crop), "scale": args.scale, "batch_size": args.batch_size, "lr": args.lr,
                   "optimizer": "adamw", "workers": args.workers, "channels_last": True, "preload": True},
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=15.0, help="wall budget per run, calibration included")
    p.add_argument("--models", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--crop", type=int, nargs=2, default=(176, 240))
    p.add_argument("--scale", type=float, default=0.5, help="training scale of the 360x480 frames (val too)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--workers", type=int, default=1, help="loader processes beside the training threads")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    args.crop = tuple(args.crop)
    train, val = camvid_sets(args.crop, args.scale)
    rows = []
    for name in args.models:
        for seed in args.seeds:
            rows.append(run(name, args, train, val, seed))
            r = rows[-1]
            print(f"{name} seed {seed}: {r['steps']} steps ({r['epochs']} of {r['epochs_planned']} epochs) in "
                  f"{r['train_s']:.0f} s, {r['images_per_s']:.1f} img/s, val mIoU {r['miou']:.1f}",
                  flush=True)  # fmt: skip
    hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"\n{args.minutes:g} min per run, CPU ({hw}), torch {torch.__version__}\n")
    print("| candidate | params (M) | seeds | steps | images/s | val mIoU % (mean ± spread) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name in args.models:
        mine = [r for r in rows if r["candidate"] == name]
        mious = [r["miou"] for r in mine]
        mean, spread = sum(mious) / len(mious), (max(mious) - min(mious)) / 2
        print(f"| {name} | {mine[0]['params_m']:.2f} | {len(mine)} | {mine[0]['steps']} | "
              f"{mine[0]['images_per_s']:.1f} | {mean:.1f} ± {spread:.1f} |")  # fmt: skip
    if args.json:
        write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
