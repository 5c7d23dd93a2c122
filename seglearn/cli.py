"""``python -m seglearn {train,evaluate,predict,download,demo}``: the package's jobs from a shell.

``train`` also runs data-parallel under ``torchrun --nproc_per_node=N -m seglearn train ...`` (see
:mod:`seglearn.distributed`). User errors (bad names, sizes, missing files) exit with code 2 and one message line.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from seglearn import distributed as D
from seglearn.record import run_record

MODEL_FILE = "model.pt"
SYNTHETIC_SIZE = (96, 128)


class UsageError(Exception):
    """A mistake in the command line or its inputs: reported as ``seglearn: error: ...`` with exit code 2."""


def _crop(values: Sequence[int], flag: str = "--crop") -> tuple[int, int]:
    if len(values) not in (1, 2) or min(values) < 1:
        raise UsageError(f"{flag} takes one or two positive ints (H W), got {' '.join(map(str, values))}")
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


# ---------------------------------------------------------------- data and models


def _datasets(args: argparse.Namespace, crop: tuple[int, int] | None, splits: Sequence[str]) -> list[Dataset]:
    """Datasets for ``splits``: the first gets the training preset when ``crop`` is given, the others eval."""
    from seglearn import data

    out = []
    for i, split in enumerate(splits):
        scale = tuple(getattr(args, "scale", None) or (0.5, 2.0))
        tf = data.train_transforms(crop, scale=scale) if crop is not None and i == 0 else data.eval_transforms()
        kw: dict[str, Any] = {"preload": getattr(args, "preload", False)}  # synthetic ignores it
        if args.dataset == "synthetic":
            n = args.num_images if split == "train" else max(4, args.num_images // 4)
            kw.update(num_images=n, size=_crop(args.image_size or crop or SYNTHETIC_SIZE, "--image-size"))
        try:
            out.append(data.build_dataset(args.dataset, split, root=args.root, transforms=tf, **kw))
        except (OSError, ValueError, RuntimeError) as err:  # a missing folder, or a bad file found by --preload
            raise UsageError(str(err)) from None
    return out


def _loader(ds: Dataset, args: argparse.Namespace, train: bool) -> DataLoader:
    from seglearn.data.base import worker_context

    sampler = D.train_sampler(ds, seed=args.seed) if train else D.eval_sampler(ds)
    return DataLoader(
        ds,
        batch_size=args.batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train and len(ds) > args.batch_size,
        num_workers=args.workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=args.workers > 0,
        multiprocessing_context=worker_context(ds, args.workers),
    )


def save_model(path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write a self-describing checkpoint: the weights plus what ``load_model`` needs to rebuild the model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**meta, "state_dict": D.unwrap_model(model).state_dict()}, path)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from ``<out>/model.pt`` (or fit's ``checkpoints/last.pt``/``best.pt``).

    Returns ``(model in eval mode on device, meta)``; meta has ``model``, ``num_classes``, ``dataset``, ``classes``
    and ``palette``.
    """
    from seglearn.data import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES, voc_palette
    from seglearn.models import create_model

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"checkpoint {path} not found; pass the model.pt that `seglearn train` wrote under --out")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(ckpt, dict) and "state_dict" in ckpt:
        meta, state = {k: v for k, v in ckpt.items() if k != "state_dict"}, ckpt["state_dict"]
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("model_config"), dict) and "model" in ckpt["model_config"]:
        meta, state = dict(ckpt["model_config"]), ckpt["model"]  # fit's training checkpoint
    else:
        raise UsageError(f"{path} is not a seglearn model file; pass the model.pt that `seglearn train` wrote")
    if "classes" not in meta:
        voc = meta.get("dataset") == "voc"
        meta["classes"] = list(VOC_CLASSES if voc else CAMVID_CLASSES)
        meta["palette"] = (voc_palette(len(VOC_CLASSES)) if voc else CAMVID_PALETTE).tolist()
    model = create_model(meta["model"], meta["num_classes"], **meta.get("model_kwargs", {}))
    model.load_state_dict(state)
    return model.to(device).eval(), meta


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def history_dict(history: Any) -> dict[str, Any]:
    """A ``History`` as plain JSON-ready lists (scores via ``SegScores.as_dict``)."""
    return {
        "train_loss": [float(x) for x in history.train_loss],
        "val": [s.as_dict() for s in history.val],
        "val_epochs": [int(e) for e in history.val_epochs],
        "lr": [float(x) for x in history.lr],
        "epoch_time": [float(x) for x in history.epoch_time],
        "train_time": [float(x) for x in history.train_time],
        "train_images": [int(x) for x in history.train_images],
    }


def _model_args(pairs: Sequence[str]) -> dict[str, Any]:
    """``["base_channels=32", "output_stride=16"]`` -> ``{"base_channels": 32, "output_stride": 16}``."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"--model-arg takes KEY=VALUE (e.g. output_stride=16), got {pair!r}")
        try:
            out[key] = ast.literal_eval(raw)  # numbers, tuples, True/False/None
        except (ValueError, SyntaxError):
            out[key] = raw  # a bare word: a string such as resnet50
    return out


# ---------------------------------------------------------------- commands


def train_job(args: argparse.Namespace, *, model_name: str, out: Path, quiet: bool = False) -> dict[str, Any]:
    """Train with :func:`seglearn.engine.fit` (checkpoints in ``out/checkpoints``), score the val split merged over
    all ranks, and on rank 0 write model.pt, history.json, scores.json and curves.png under ``out``.

    Returns ``{"scores", "history", "classes", "palette"}``.
    """
    import matplotlib.pyplot as plt

    from seglearn.engine import evaluate, fit
    from seglearn.models import create_model
    from seglearn.plot import plot_history

    info = D.init_distributed(args.device)
    crop = _crop(args.crop)
    train_set, val_set = _datasets(args, crop, ["train", "val"])
    model_kwargs: dict[str, Any] = {"aux_loss": args.aux_loss, **_model_args(getattr(args, "model_arg", None) or [])}
    if args.backbone:
        model_kwargs["backbone"] = args.backbone
    config = {
        "model": model_name,
        "num_classes": train_set.num_classes,
        "model_kwargs": model_kwargs,
        "dataset": args.dataset,
    }
    torch.manual_seed(args.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    try:
        model = create_model(
            model_name, train_set.num_classes, pretrained_backbone=args.pretrained_backbone, **model_kwargs
        )
        model = D.wrap_model(model, info, sync_bn=args.sync_bn)
    except (ValueError, TypeError) as err:  # a bad --model-arg name or value included
        raise UsageError(str(err)) from None
    loss = None
    if getattr(args, "class_weights", "none") == "median":  # SegNet's median-frequency balancing, from train
        from seglearn.losses import SegLoss

        loss = SegLoss(class_weights=train_set.class_weights())
    val_loader = _loader(val_set, args, train=False)
    if info.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(info.device)
    try:
        history = fit(
            model, _loader(train_set, args, train=True), val_loader, epochs=args.epochs, lr=args.lr,
            optimizer=args.optimizer, loss=loss, device=info.device, seed=args.seed,
            checkpoint_dir=out / "checkpoints", resume=args.resume, time_budget_s=args.time_budget,
            model_config=config, weight_decay=getattr(args, "weight_decay", 1e-4),
            warmup_iters=getattr(args, "warmup_iters", 0), val_every=getattr(args, "val_every", 1),
            amp=not getattr(args, "no_amp", False), channels_last=getattr(args, "channels_last", False),
        )  # fmt: skip
    except ValueError as err:  # e.g. --resume into a folder written by another model
        raise UsageError(str(err)) from None
    # Each rank scores its own shard (no repeats); evaluate sums the confusion matrices over ranks.
    scores = evaluate(model, val_loader, train_set.num_classes, device=info.device)
    classes, palette = list(train_set.classes), np.asarray(train_set.palette)
    record = run_record(
        argparse.Namespace(**{**vars(args), "model_name": model_name, "model_kwargs": model_kwargs}),
        D.unwrap_model(model), history, scores, device=info.device, world_size=info.world_size,
        train_size=len(train_set), val_size=len(val_set),
    )  # fmt: skip
    if info.is_main:
        meta = {**config, "classes": classes, "palette": palette.tolist(), "crop": list(crop)}
        save_model(out / MODEL_FILE, model, meta)
        _write_json(out / "run.json", record)
        _write_json(out / "history.json", history_dict(history))
        _write_json(out / "scores.json", {**scores.as_dict(), "classes": classes, "world_size": info.world_size})
        fig = plot_history(history)
        fig.savefig(out / "curves.png", dpi=100)
        plt.close(fig)
        if not quiet:
            print(f"{model_name} on {args.dataset}: {history.epochs} epochs, val scores ({len(val_set)} images)")
            print(scores.table(classes))
            print(
                f"\n{record['epochs']} epochs in {record['wall_s']:.0f} s, {record['images_per_s']:.1f} images/s, "
                f"{record['memory_kind']} {record['peak_memory_mib']:.0f} MiB on {record['device']}"
            )
            print(f"wrote {out / MODEL_FILE}, history.json, scores.json, run.json, curves.png")
    D.teardown_distributed()
    return {"scores": scores, "history": history, "classes": classes, "palette": palette, "record": record}


def cmd_train(args: argparse.Namespace) -> int:
    train_job(args, model_name=args.model, out=Path(args.out or f"runs/{args.model}"))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seglearn.engine import evaluate

    info = D.init_distributed(args.device)
    model, meta = load_model(args.checkpoint, info.device)
    (ds,) = _datasets(args, None, [args.split])
    if ds.num_classes != meta["num_classes"]:
        raise UsageError(
            f"the checkpoint predicts {meta['num_classes']} classes but {args.dataset} has {ds.num_classes}; "
            f"evaluate on the dataset it was trained on ({meta.get('dataset')})"
        )
    scores = evaluate(model, _loader(ds, args, False), ds.num_classes, device=info.device)
    if info.is_main:
        print(f"{meta['model']} on {args.dataset} {args.split} ({len(ds)} images)")
        print(scores.table(list(ds.classes)))
    D.teardown_distributed()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from PIL import Image

    from seglearn.data import eval_transforms
    from seglearn.engine import predict
    from seglearn.plot import decode_mask

    device = D.init_distributed(args.device).device
    model, meta = load_model(args.checkpoint, device)
    palette = np.asarray(meta["palette"], dtype=np.uint8)
    tf = eval_transforms()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for path in map(Path, args.images):
        if not path.is_file():
            raise UsageError(f"image {path} not found")
        try:
            image = np.asarray(Image.open(path).convert("RGB"))
        except OSError as err:
            raise UsageError(f"cannot read {path} as an image: {err}") from None
        x = tf(image=image)["image"].unsqueeze(0)
        probs = predict(model, x.to(device), scales=tuple(args.scales), flip=args.flip)
        mask = probs.argmax(1)[0].cpu().numpy()
        target = out / f"{path.stem}_mask.png"
        Image.fromarray(decode_mask(mask, palette)).save(target)
        print(f"{path} -> {target}")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from seglearn.data import build_dataset, download_dataset

    try:
        root = download_dataset(args.dataset, args.root)
        ds = build_dataset(args.dataset, "train", root=root)
    except (OSError, ValueError, RuntimeError) as err:
        raise UsageError(f"download of {args.dataset} failed: {err}") from None
    print(f"{args.dataset}: ready under {root} (training images: {len(ds)})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from seglearn.demo import run_demo  # imports this module: loaded only when the demo runs

    return run_demo(args)


# ---------------------------------------------------------------- parser


def _data_args(p: argparse.ArgumentParser, datasets: Sequence[str]) -> None:
    p.add_argument("--dataset", choices=datasets, default="synthetic", help="dataset name (default: synthetic)")
    p.add_argument("--root", default=None, help="dataset folder (default: found under SEGLEARN_DATA or data/)")
    p.add_argument("--num-images", type=int, default=64, help="synthetic only: number of training scenes")
    p.add_argument(
        "--image-size", type=int, nargs="+", default=None, metavar="N",
        help="synthetic only: scene size H W (default: the crop, else 96 128)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")


def build_parser() -> argparse.ArgumentParser:
    """The ``seglearn`` argument parser (model and dataset choices come from the registry)."""
    from seglearn.data import DATASETS
    from seglearn.models import list_models

    parser = argparse.ArgumentParser(prog="seglearn", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,evaluate,predict,download,demo}")

    p = sub.add_parser("train", help="train a model; under torchrun, data-parallel")
    p.add_argument("--model", required=True, choices=list_models())
    _data_args(p, DATASETS)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--crop", type=int, nargs="+", default=[96, 128], metavar="N", help="training crop: H W or one int")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--optimizer", choices=["sgd", "adamw"], default="sgd")
    p.add_argument("--out", default=None, help="run folder (default: runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint under --out")
    p.add_argument("--time-budget", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--warmup-iters", type=int, default=0, help="linear warm-up steps before the poly schedule")
    p.add_argument("--scale", type=float, nargs=2, default=[0.5, 2.0], metavar=("MIN", "MAX"),
                   help="random rescale range of training images before the crop (default: 0.5 2.0)")  # fmt: skip
    p.add_argument("--class-weights", choices=["none", "median"], default="none",
                   help="median: SegNet's median-frequency loss weights, counted on the train split")  # fmt: skip
    p.add_argument("--val-every", type=int, default=1, metavar="N", help="validate every N epochs (and at the end)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster convolutions on GPUs)")
    p.add_argument("--no-amp", action="store_true", help="train in fp32 (default: bf16/fp16 autocast on CUDA)")
    p.add_argument("--aux-loss", action="store_true")
    p.add_argument("--backbone", default=None, help="e.g. resnet50 (default: the paper's)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a builder keyword, repeatable: e.g. output_stride=16, base_channels=32")  # fmt: skip
    p.add_argument("--pretrained-backbone", action="store_true", help="ImageNet weights (torchvision cache)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs under torchrun")
    p.add_argument("--preload", action="store_true",
                   help="decode every image once into RAM before training (CamVid: about 250 MB) so DataLoader "
                   "workers only augment; same data, faster loading (synthetic: no-op)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="score a trained model and print the per-class table")
    p.add_argument("--checkpoint", required=True, help="model.pt written by train")
    _data_args(p, DATASETS)
    p.add_argument("--split", default="val")
    p.set_defaults(func=cmd_evaluate, seed=0)

    p = sub.add_parser("predict", help="write a coloured mask PNG per image")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--checkpoint", required=True, help="model.pt written by train")
    p.add_argument("--out", default="runs/predict", help="folder for the masks (default: runs/predict)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale inference, e.g. 0.75 1 1.25")
    p.add_argument("--flip", action="store_true", help="also average the horizontally flipped image")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("download", help="download a dataset")
    p.add_argument("dataset", choices=[d for d in DATASETS if d != "synthetic"])
    p.add_argument("--root", default=None, help="where to put it (default: SEGLEARN_DATA or data/)")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("demo", help="train a tiny model on synthetic scenes for about a minute (CPU)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--seconds", type=float, default=60.0, help="time budget for training")
    p.add_argument("--num-images", type=int, default=96)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m seglearn`` and the ``seglearn`` script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the exact command, for run.json
    try:
        return args.func(args)
    except UsageError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted\n")
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():  # left by an error
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
