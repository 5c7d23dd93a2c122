"""Every model of the series trained for the same short budget on real CamVid, on whatever machine runs this.

This is the CPU stand-in for the README's FULL-mode table: small variants (as the notebooks' QUICK mode uses) trained
from scratch at 120x160 for ``--budget`` seconds each on the 367 CamVid train images, scored on all 101 val images.
It shows how far each design gets with little compute, not what it reaches; FULL mode on a GPU does that.

    python benchmarks/cpu_results.py --budget 120            # prints a markdown table
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
from torch.utils.data import DataLoader, RandomSampler

import seglearn
from seglearn import data
from seglearn.atomic import write_json
from seglearn.models import ModelInfo, comparison_roster, count_parameters


def small_variant(info: ModelInfo) -> tuple[dict, bool]:
    """(create_model keywords, aux head) of the variant QUICK mode trains, as the model's registration declares it
    (a smaller backbone or width where the paper's is too slow for a CPU; the paper's configuration otherwise)."""
    return (dict(info.quick.model_kwargs), info.quick.aux_loss) if info.quick is not None else ({}, False)


def sgd_lr(model: torch.nn.Module) -> float:
    """1e-2, or 1e-3 for a network without BatchNorm (VGG16's fcn8s and deeplabv1 diverge from random weights at
    1e-2 with SGD): the lr rule of the FULL recipes, which choose lr per family, never on val."""
    return 1e-2 if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()) else 1e-3


def loaders(size: tuple[int, int], batch_size: int, images_per_epoch: int, seed: int) -> tuple[DataLoader, DataLoader]:
    """CamVid train (random scale around ``size``, crop ``size``) and val resized to ``size``."""
    root = data.locate_dataset("camvid")
    if root is None:
        raise SystemExit("real CamVid not found: run `python -m seglearn download camvid` or set SEGLEARN_DATA")
    s = size[0] / 360
    train = data.CamVid(root, "train", transforms=data.train_transforms(size, scale=(0.75 * s, 1.25 * s)))
    train.transforms.set_random_seed(seed)
    val = data.CamVid(root, "val", transforms=data.eval_transforms(size=size))
    g = torch.Generator().manual_seed(seed)
    # Short epochs drawn from the whole train split, so fit's per-epoch time budget check comes often.
    sampler = RandomSampler(train, num_samples=images_per_epoch, generator=g)
    return DataLoader(train, batch_size, sampler=sampler, drop_last=True), DataLoader(val, batch_size)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budget", type=float, default=120.0, help="training seconds per model")
    p.add_argument("--size", type=int, nargs=2, default=(120, 160))
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--models", nargs="*", default=None, help="names (default: the comparison roster)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    train_loader, val_loader = loaders(tuple(args.size), args.batch_size, 64, args.seed)
    roster = {info.name: info for info in comparison_roster()}
    unknown = sorted(set(args.models or []) - set(roster))
    if unknown:
        raise SystemExit(f"not in the comparison roster: {', '.join(unknown)}; choose from {', '.join(roster)}")
    rows = []
    for name in args.models or list(roster):
        kwargs, aux = small_variant(roster[name])
        torch.manual_seed(args.seed)
        model = seglearn.create_model(name, 11, aux_loss=aux, **kwargs)
        start = time.perf_counter()
        history = seglearn.fit(model, train_loader, val_loader, epochs=1000, lr=sgd_lr(model), seed=args.seed,
                               device="cpu", time_budget_s=args.budget, progress=False, live_plot=False)  # fmt: skip
        best = max(history.val, key=lambda s: s.miou)
        rows.append({
            "model": name, "config": {**kwargs, **({"aux_loss": True} if aux else {})},
            "params_m": count_parameters(model) / 1e6,
            "epochs": history.epochs, "images": history.epochs * 64, "wall_s": time.perf_counter() - start,
            "miou": 100 * history.val[-1].miou, "best_miou": 100 * best.miou,
            "pixel_acc": 100 * history.val[-1].pixel_acc,
        })  # fmt: skip
        r = rows[-1]
        print(f"{name}: {r['epochs']} epochs, mIoU {r['miou']:.1f} (best {r['best_miou']:.1f})", flush=True)
    hw = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"\n{args.size[0]}x{args.size[1]}, {args.budget:.0f} s per model, CPU ({hw}), torch {torch.__version__}\n")
    print("| model | config | params (M) | epochs x 64 images | wall s | val mIoU % (last) | best | pixel acc % |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        cfg = ", ".join(f"{k}={v}" for k, v in r["config"].items()) or "default"
        print(f"| {r['model']} | {cfg} | {r['params_m']:.2f} | {r['epochs']} | {r['wall_s']:.0f} | {r['miou']:.1f} "
              f"| {r['best_miou']:.1f} | {r['pixel_acc']:.1f} |")  # fmt: skip
    if args.json:
        write_json(args.json, rows)
    return rows


if __name__ == "__main__":
    main()
