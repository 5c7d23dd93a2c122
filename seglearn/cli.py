"""``python -m seglearn {train,evaluate,predict,export,download,demo,models}``: the
package's jobs from a shell.

``train`` also runs data-parallel under ``torchrun --nproc_per_node=N -m seglearn train ...`` (see
:mod:`seglearn.distributed`). User errors (bad names, sizes, missing files) exit with code 2 and one message line.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from seglearn.job import CLASS_WEIGHTS, OPTIMIZERS, TrainJob, one_line, parse_lr_mult, parse_model_args
from seglearn.names import DATASETS, DOWNLOADABLE, model_names
from seglearn.options import JobError, check_choice, check_device, check_out_folder, size_pair
from seglearn.train_recipes import TRAIN_RECIPES, train_recipe

if TYPE_CHECKING:  # torch is imported by the commands that run: --help and option errors answer at once
    import torch
    from torch import nn

# The train options' defaults are TrainJob's: one list of defaults for the CLI, the demo and Python callers.
JOB = {f.name: f.default for f in dataclasses.fields(TrainJob) if f.default is not dataclasses.MISSING}


class UsageError(Exception):
    """A mistake in the command line or its inputs: reported as ``seglearn: error: ...`` with exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse's errors as the CLI's own: one ``seglearn: error: ...`` line (no usage block), exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"seglearn: error: {message} (see {self.prog} --help)\n")


def _model_name(value: str) -> str:
    """``--model``: a registered name, checked while parsing (without importing torch: see seglearn.names)."""
    names = model_names()
    if value not in names:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of: {', '.join(names)}; `seglearn models` lists them")
    return value


def _dataset_and_root(args: argparse.Namespace) -> tuple[str, str | None]:
    """``--data PATH`` (your own folder) or ``--dataset NAME [--root DIR]``."""
    if args.data is None:
        return args.dataset, args.root
    if args.dataset != JOB["dataset"] or args.root is not None:
        raise UsageError("--data PATH is your own dataset folder: give it instead of --dataset/--root, not with them")
    return "folder", args.data


def train_job_from_args(args: argparse.Namespace) -> TrainJob:
    """The :class:`~seglearn.job.TrainJob` a parsed ``train`` command line describes (the one place that reads it)."""
    dataset, root = _dataset_and_root(args)
    fields = {f.name for f in dataclasses.fields(TrainJob)}  # every train option is spelled as its TrainJob field
    values = {key: value for key, value in vars(args).items() if key in fields}
    values.update(dataset=dataset, root=root, scale=tuple(args.scale), model_args=parse_model_args(args.model_arg),
                  lr_mult=parse_lr_mult(args.lr_mult), amp=not args.no_amp, argv=getattr(args, "argv", []))  # fmt: skip
    return TrainJob(**values)


def parse_train_job(argv: Sequence[str]) -> TrainJob:
    """The TrainJob of a ``train ...`` command line (``["train", "--model", "unet", "--epochs", "5"]``)."""
    args = parse_args(argv)
    if args.command != "train":
        raise ValueError(f"parse_train_job takes a train command line, got {args.command!r}")
    args.argv = list(argv)
    return train_job_from_args(args)


def _check_checkpoint(path: str, flag: str = "--checkpoint") -> None:
    if not Path(path).is_file():
        what = "is a folder" if Path(path).is_dir() else "not found"
        raise UsageError(f"{flag} {path} {what}; pass the model.pt that `seglearn train` wrote under --out")


def _check_loader_args(args: argparse.Namespace) -> None:
    """evaluate's data options, checked before anything is loaded."""
    for flag, value, least in (("--batch-size", args.batch_size, 1), ("--workers", args.workers, 0),
                               ("--num-images", args.num_images, 1)):  # fmt: skip
        if value < least:
            raise UsageError(f"{flag} takes an integer >= {least}, got {value}")
    if args.image_size is not None:
        size_pair(args.image_size, "--image-size")
    check_device(args.device)


def _load(path: str, device: torch.device) -> tuple[nn.Module, dict[str, Any]]:
    """A model file's model and meta (model, num_classes, classes, palette: from the dataset when not stored)."""
    from seglearn.model_file import labelled_meta, load_model

    _check_checkpoint(path)
    try:
        model, meta = load_model(path, device, return_meta=True)
    except ValueError as err:  # another file, or a checkpoint without a model spec
        raise UsageError(str(err)) from None
    return model, labelled_meta(meta)


# ---------------------------------------------------------------- commands


def cmd_train(args: argparse.Namespace) -> int:
    from seglearn.job import run_train_job

    run_train_job(train_job_from_args(args))  # TrainJob checked every option before this line
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from seglearn.models import list_models, model_info

    for name in list_models():
        info = model_info(name)
        title = info.paper.split('"')[1] if info.paper.count('"') >= 2 else info.paper  # 'Authors, "Title", venue'
        extras = [f"--backbone {'|'.join(info.backbones)}"] if info.backbones else []
        extras += ["--aux-loss"] * info.aux_loss + ["--pretrained-backbone"] * info.pretrained_backbone
        print(f"{name:13} {title[:72]}" + (f"\n{'':13} {' '.join(extras)}" if extras else ""))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _check_loader_args(args)
    _check_checkpoint(args.checkpoint)
    dataset, root = _dataset_and_root(args)
    check_choice(dataset, DATASETS, "--dataset")
    from seglearn import distributed as D
    from seglearn.data import job_datasets, make_loader
    from seglearn.engine import evaluate

    info = D.init_distributed(args.device)
    model, meta = _load(args.checkpoint, info.device)
    size = None if args.image_size is None else size_pair(args.image_size, "--image-size")
    try:
        (ds,) = job_datasets(dataset, [args.split], root=root, num_images=args.num_images, image_size=size)
    except (OSError, ValueError, RuntimeError) as err:
        raise UsageError(str(err)) from None
    if ds.num_classes != meta["num_classes"]:
        raise UsageError(
            f"the checkpoint predicts {meta['num_classes']} classes but {dataset} has {ds.num_classes}; "
            f"evaluate on the dataset it was trained on ({meta.get('dataset')})"
        )
    loader = make_loader(ds, batch_size=args.batch_size, train=False, workers=args.workers)
    try:
        scores = evaluate(model, loader, ds.num_classes, device=info.device)
    except (ValueError, OSError) as err:  # a bad mask or image, found by a loader worker: its own message
        raise UsageError(one_line(err)) from None
    if info.is_main:
        print(f"{meta['model']} on {dataset} {args.split} ({len(ds)} images)")
        print(scores.table(list(ds.classes)))
    D.teardown_distributed()
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    if not args.scales or not all(0 < s < float("inf") for s in args.scales):
        raise UsageError(f"--scales takes positive numbers (e.g. 0.75 1 1.25), got {' '.join(map(str, args.scales))}")
    check_out_folder(Path(args.out))
    check_device(args.device)
    _check_checkpoint(args.checkpoint)
    import numpy as np

    from seglearn import distributed as D
    from seglearn.inference import predict_files

    device = D.init_distributed(args.device).device
    model, meta = _load(args.checkpoint, device)
    palette = np.asarray(meta["palette"], dtype=np.uint8)
    try:
        written = predict_files(model, args.images, args.out, palette, scales=args.scales, flip=args.flip)
    except (OSError, ValueError) as err:  # a missing or unreadable image (16-bit, damaged): named in the message
        raise UsageError(str(err)) from None
    for w in written:
        print(f"{w.source} -> {w.mask} (overlay {w.overlay.name})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    size = size_pair(args.size, "--size")
    _check_checkpoint(args.checkpoint, "MODEL.pt")
    check_out_folder(Path(args.onnx).parent, "--onnx")
    if Path(args.onnx).is_dir():
        example = Path(args.onnx) / "model.onnx"
        raise UsageError(f"--onnx {args.onnx} is a folder; pass the file to write, e.g. {example}")
    import torch

    from seglearn.export import OPSET, export_onnx

    model, meta = _load(args.checkpoint, torch.device("cpu"))
    try:
        path = export_onnx(model, args.onnx, sample_size=size, dynamic_size=not args.fixed_size)
    except RuntimeError as err:
        raise UsageError(str(err)) from None
    shape = f"{size[0]}x{size[1]} only" if args.fixed_size else "any height and width"
    print(f"wrote {path}: {meta['model']}, opset {OPSET}, input 'image' (N, 3, H, W) ImageNet-normalized float32, "
          f"{shape}; output 'logits' (N, {meta['num_classes']}, H, W)")  # fmt: skip
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
    from seglearn.demo import run_demo

    return run_demo(out=args.out, epochs=args.epochs, seconds=args.seconds, num_images=args.num_images,
                    seed=args.seed, device=args.device)  # fmt: skip


# ---------------------------------------------------------------- parser


def _data_args(p: argparse.ArgumentParser, datasets: Sequence[str]) -> None:
    # No argparse choices= here or for --model: TrainJob checks them, in one message format, without torch.
    p.add_argument("--dataset", default=JOB["dataset"], help=f"{', '.join(datasets)} (default: %(default)s)")
    p.add_argument("--root", default=JOB["root"], help="dataset folder (default: found under SEGLEARN_DATA or data/)")
    own = "your own data: a folder with images/, masks/ and classes.json (instead of --dataset)"
    p.add_argument("--data", default=None, metavar="PATH", help=own)
    p.add_argument(
        "--num-images", type=int, default=JOB["num_images"], help="synthetic only: number of training scenes"
    )
    p.add_argument(
        "--image-size", type=int, nargs="+", default=JOB["image_size"], metavar="N",
        help="synthetic only: scene size H W (default: the crop, else 96 128)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=JOB["batch_size"])
    p.add_argument("--workers", type=int, default=JOB["workers"], help="DataLoader worker processes")
    p.add_argument("--device", default=JOB["device"], help="cpu, cuda, cuda:1 (default: cuda when available)")


def parse_args(argv: Sequence[str], train_defaults: dict[str, Any] | None = None) -> argparse.Namespace:
    """``argv`` parsed; ``train --recipe NAME`` is parsed again with the recipe's values as train's defaults, so
    that an option given beside it (before or after) wins."""
    args = build_parser(train_defaults).parse_args(argv)
    if args.command == "train" and args.recipe is not None and train_defaults is None:
        return parse_args(argv, train_recipe(args.recipe, args.model))
    if args.command == "train" and args.model is None:
        build_parser().error("train needs --model NAME (or --recipe NAME, which names one)")
    return args


def build_parser(train_defaults: dict[str, Any] | None = None) -> argparse.ArgumentParser:
    """The ``seglearn`` argument parser (``train_defaults``: TrainJob values replacing train's defaults, as a
    train recipe does). Building it imports neither torch nor the models: ``--model`` is checked against the
    registry by :class:`~seglearn.job.TrainJob`, and ``seglearn models`` lists the registered models."""
    parser = _Parser(prog="seglearn", description=__doc__.split("\n\n")[0])
    commands = "{train,evaluate,predict,export,download,demo,models}"
    sub = parser.add_subparsers(dest="command", required=True, metavar=commands)
    train = sub.add_parser("train", help="train a model; under torchrun, data-parallel")
    _train_parser(train, DATASETS)
    train.set_defaults(**(train_defaults or {}))
    _other_parsers(sub, DATASETS)
    p = sub.add_parser("models", help="list the registered models (the names --model takes)")
    p.set_defaults(func=cmd_models)
    return parser


def _train_parser(p: argparse.ArgumentParser, datasets: Sequence[str]) -> None:
    p.add_argument("--model", type=_model_name, help="e.g. unet (`seglearn models` lists them)")
    p.add_argument("--recipe", choices=list(TRAIN_RECIPES), help="a named setup, model included; options given too win")
    _data_args(p, datasets)
    p.add_argument("--split", default=JOB["split"], help="training split (voc: train or trainaug; default: train)")
    p.add_argument("--epochs", type=int, default=JOB["epochs"])
    p.add_argument(
        "--crop", type=int, nargs="+", default=JOB["crop"], metavar="N", help="training crop: H W or one int"
    )
    p.add_argument("--lr", type=float, default=JOB["lr"])
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=JOB["optimizer"])
    p.add_argument("--out", default=JOB["out"], help="run folder (default: runs/MODEL)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint under --out")
    p.add_argument("--time-budget", type=float, default=JOB["time_budget"], metavar="S", help="stop after S seconds")
    plan = "with --time-budget: after epoch 1, run the epochs that fit the budget (at most --epochs)"
    p.add_argument("--plan-epochs", action="store_true", help=plan)
    p.add_argument("--eval-scale", type=float, default=JOB["eval_scale"], help="score val at this input scale")
    p.add_argument("--weight-decay", type=float, default=JOB["weight_decay"])
    p.add_argument("--schedule", default=JOB["schedule"], help="poly (default) or step:N, x0.1 every N iterations")
    p.add_argument("--lr-mult", action="append", default=[], metavar="PREFIX=MULT",
                   help="learning rate x MULT for parameters named PREFIX.* (e.g. classifier=10); repeatable")
    p.add_argument(
        "--warmup-iters", type=int, default=JOB["warmup_iters"], help="linear warm-up steps before the poly schedule"
    )
    p.add_argument("--rotate", type=float, default=JOB["rotate"], metavar="DEG", help="random rotation, up to DEG")
    p.add_argument("--scale", type=float, nargs=2, default=JOB["scale"], metavar=("MIN", "MAX"),
                   help="random rescale range of training images before the crop (default: 0.5 2.0)")  # fmt: skip
    p.add_argument("--class-weights", choices=CLASS_WEIGHTS, default=JOB["class_weights"],
                   help="median: SegNet's median-frequency loss weights; enet: ENet's 1/ln(1.02 + p); counted on the "
                        "train split")  # fmt: skip
    p.add_argument(
        "--val-every", type=int, default=JOB["val_every"], metavar="N", help="validate every N epochs (and at the end)"
    )
    p.add_argument("--channels-last", action="store_true", help="NHWC memory layout (faster convolutions on GPUs)")
    p.add_argument("--no-amp", action="store_true", help="train in fp32 (default: bf16/fp16 autocast on CUDA)")
    p.add_argument("--aux-loss", action="store_true")
    p.add_argument("--backbone", default=JOB["backbone"], help="e.g. resnet50 (default: the paper's)")
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a builder keyword, repeatable: e.g. output_stride=16, base_channels=32")  # fmt: skip
    p.add_argument("--pretrained-backbone", action="store_true", help="ImageNet weights (torchvision cache)")
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs under torchrun")
    p.add_argument("--preload", action="store_true",
                   help="decode every image once into RAM before training (CamVid: about 250 MB) so DataLoader "
                   "workers only augment; same data, faster loading (synthetic: no-op)")  # fmt: skip
    p.add_argument("--seed", type=int, default=JOB["seed"])
    p.set_defaults(func=cmd_train)


def _other_parsers(sub: Any, datasets: Sequence[str]) -> None:
    p = sub.add_parser("evaluate", help="score a trained model and print the per-class table")
    p.add_argument("--checkpoint", required=True, help="model.pt written by train")
    _data_args(p, datasets)
    p.add_argument("--split", default="val")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("predict", help="write a coloured mask and an overlay PNG per image")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files or folders of images")
    p.add_argument("--checkpoint", required=True, help="model.pt written by train")
    p.add_argument("--out", default="runs/predict", help="folder for the masks (default: runs/predict)")
    p.add_argument("--scales", type=float, nargs="+", default=[1.0], help="multi-scale inference, e.g. 0.75 1 1.25")
    p.add_argument("--flip", action="store_true", help="also average the horizontally flipped image")
    p.add_argument("--device", default=None)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", help="export a trained model to ONNX (dynamic batch, height and width)")
    p.add_argument("checkpoint", metavar="MODEL.pt", help="model.pt written by train (or a last.pt/best.pt)")
    p.add_argument("--onnx", required=True, metavar="OUT.onnx", help="the ONNX file to write")
    p.add_argument("--size", type=int, nargs="+", default=[64, 96], metavar="N", help="tracing size H W")
    fixed = (
        "a graph for --size images only: pyramid pooling (upernet) needs it, with a size whose stride-32 map the "
        "bins divide (e.g. 192 192 for bins 1 2 3 6)"
    )
    p.add_argument("--fixed-size", action="store_true", help=fixed)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("download", help="download a dataset")
    p.add_argument("dataset", choices=DOWNLOADABLE)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m seglearn`` and the ``seglearn`` script; returns the exit code."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    args.argv = argv  # the exact command, for run.json
    try:
        return args.func(args)
    except (UsageError, JobError) as err:
        parser.exit(2, f"{parser.prog}: error: {one_line(err)}\n")
    except KeyboardInterrupt:
        parser.exit(130, "interrupted\n")
    finally:
        torch = sys.modules.get("torch")  # only a command that ran has imported it
        if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()  # left by an error


if __name__ == "__main__":
    sys.exit(main())
