"""Learning per CPU-minute: each candidate trained for the same wall-clock budget on real CamVid, scored on val.

Every candidate runs the train recipe ``cpu-15min`` (``seglearn.train_recipes``, what ``python -m seglearn train
--recipe cpu-15min`` runs) with only the model changed: CamVid train decoded once into memory, random rescale
around half resolution and 176x240 crops, SegNet's median-frequency class weights, NHWC memory layout, AdamW with
a short warm-up and a poly decay planned after the first epoch to end when the budget does
(``fit(plan_epochs=True)``), the budget the hard stop. Val is scored on all 101 CamVid val frames at their full
360x480 labels, predicted at the recipe's scale (logits upsampled).

    python benchmarks/cpu_budget.py                                  # the README's table (both cores, ~15 min each)
    python benchmarks/cpu_budget.py --minutes 2 --models unet16 enet  # a quick screen
"""

from __future__ import annotations

import argparse
import platform
import tempfile
from pathlib import Path

import torch

from seglearn.atomic import write_json
from seglearn.data import locate_dataset
from seglearn.job import CLASS_WEIGHTS, TrainJob, run_train_job
from seglearn.models import count_parameters
from seglearn.train_recipes import train_recipe

RECIPE = "cpu-15min"
# name -> the recipe's values it changes. The series' small models: what a CPU can train in minutes.
CANDIDATES: dict[str, dict] = {
    "unet16": {"model": "unet", "backbone": None, "model_args": {"base_channels": 16}},
    "linknet-r18": {},  # the recipe's own model
    "enet": {"model": "enet", "backbone": None},
}


def run(name: str, args: argparse.Namespace, seed: int, out: Path) -> dict:
    """Train candidate ``name`` with the recipe (and the command line's changes) and return its row."""
    given = {"batch_size": args.batch_size, "lr": args.lr, "workers": args.workers, "class_weights": args.class_weights}
    changes = {k: v for k, v in given.items() if v is not None}
    if args.minutes is not None:
        changes["time_budget"] = args.minutes * 60
    if args.crop is not None:
        changes["crop"] = tuple(args.crop)
    if args.scale is not None:  # the training scale of the frames, randomly 0.8x to 1.25x of it
        changes["scale"] = (0.8 * args.scale, 1.25 * args.scale)
    if args.eval_scale is not None:
        changes["eval_scale"] = args.eval_scale
    job = TrainJob.from_train_recipe(RECIPE, **CANDIDATES[name], **changes, seed=seed, out=out / f"{name}-seed{seed}")
    result = run_train_job(job, quiet=True)
    history, record = result.history, result.record
    steps = sum(history.train_images) // job.batch_size  # the last epoch may be one the budget stopped midway
    return {
        "candidate": name, "model": job.model, "config": job.model_kwargs, "seed": seed,
        "params_m": count_parameters(result.model) / 1e6, "epochs_planned": history.planned_epochs,
        "epochs": history.epochs, "steps": steps, "partial_steps": history.partial_steps,
        "train_s": sum(history.epoch_time), "images_per_s": history.images_per_s,
        "miou": 100 * result.scores.miou, "pixel_acc": 100 * result.scores.pixel_acc,
        "recipe": {f: getattr(job, f) for f in ("crop", "scale", "eval_scale", "batch_size", "lr", "optimizer",
                                                 "workers", "channels_last", "preload", "class_weights",
                                                 "time_budget")},
        "run_folder": str(job.out), "wall_s": record["wall_s"],
    }  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    recipe = train_recipe(RECIPE)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, help=f"training budget per run (default: the recipe's "
                   f"{recipe['time_budget']:g} s)")  # fmt: skip
    p.add_argument("--models", nargs="*", default=list(CANDIDATES), choices=list(CANDIDATES))
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--crop", type=int, nargs=2, help=f"training crop H W (default: {recipe['crop']})")
    lo, hi = recipe["scale"]
    p.add_argument("--scale", type=float, help=f"training scale S: frames rescaled by 0.8 S to 1.25 S (default: "
                   f"{lo:g} to {hi:g})")  # fmt: skip
    p.add_argument("--eval-scale", type=float, help=f"val scale (default: {recipe['eval_scale']})")
    p.add_argument("--batch-size", type=int, help=f"default: {recipe['batch_size']}")
    p.add_argument("--lr", type=float, help=f"default: {recipe['lr']}")
    p.add_argument("--workers", type=int, help=f"loader processes beside the training threads ({recipe['workers']})")
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, help=f"default: {recipe['class_weights']}")
    p.add_argument("--out", help="keep each run's folder (model.pt, run.json, ...) here (default: a temporary one)")
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    if locate_dataset("camvid") is None:
        raise SystemExit("real CamVid not found: run `python -m seglearn download camvid` or set SEGLEARN_DATA")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out or tmp)
        for name in args.models:
            for seed in args.seeds:
                rows.append(run(name, args, seed, out))
                r = rows[-1]
                print(f"{name} seed {seed}: {r['steps']} steps ({r['epochs']} of {r['epochs_planned']} planned "
                      f"epochs) in {r['train_s']:.0f} s, {r['images_per_s']:.1f} img/s, val mIoU {r['miou']:.1f}",
                      flush=True)  # fmt: skip
    hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"\n{rows[0]['recipe']['time_budget']:g} s of training per run, CPU ({hw}), torch {torch.__version__}\n")
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
