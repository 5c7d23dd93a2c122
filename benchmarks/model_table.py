"""Parameters and FLOPs of every registered model at one input size (default 360x480, CamVid's), or of every row
of the FULL results table with the compute its training costs.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass in eval mode on PyTorch's
``meta`` device (shapes without data: nothing is computed, so any machine measures a paper-sized model at once; a
multiply-add counts as 2 FLOPs; convolutions, transposed convolutions and matmuls are counted, elementwise ops,
pooling and interpolation are not). Every name in ``list_models()`` is measured and ``--recipes`` reads the rows from
``full_recipes()``, so models registered later show up without editing this file; a model that fails to build or run
is listed with its error instead of stopping the table.

    python benchmarks/model_table.py
    python benchmarks/model_table.py --size 512 512 --num-classes 21 --markdown
    python benchmarks/model_table.py --recipes      # each FULL row: forward GFLOPs and training PFLOPs
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from seglearn.estimate import BACKWARD_FACTOR  # forward + backward: about three forward passes
from seglearn.models import count_parameters, create_model, full_recipes, list_models

TRAIN_IMAGES = 367  # CamVid's train split: the images one FULL epoch sees


def measure(
    name: str, num_classes: int, size: tuple[int, int], aux_loss: bool = False, model_kwargs: Mapping[str, Any] = {}
) -> tuple[int, int, tuple]:
    """(parameters, forward FLOPs, output shape) of ``create_model(name, num_classes, ...)`` on a (1, 3, H, W) input."""
    with torch.device("meta"):
        model = create_model(name, num_classes, aux_loss=aux_loss, **model_kwargs).eval()
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            out = model(torch.empty(1, 3, *size))
    return count_parameters(model), counter.get_total_flops(), tuple(out["out"].shape)


def model_rows(names: list[str], num_classes: int, size: tuple[int, int]) -> list[tuple[str, ...]]:
    """(model, params M, GFLOPs, output shape) of each paper configuration."""
    rows = []
    for name in names:
        try:
            params, flops, shape = measure(name, num_classes, size)
            rows.append((name, f"{params / 1e6:.2f}", f"{flops / 1e9:.1f}", "x".join(map(str, shape))))
        except Exception as err:  # a model still being written must not hide the others
            rows.append((name, "-", "-", f"error: {type(err).__name__}: {err}"[:80]))
    return rows


def recipe_rows(num_classes: int) -> list[tuple[str, ...]]:
    """(row, model, configuration, params M, forward GFLOPs, epochs, training PFLOPs) of each FULL results row,
    measured at the row's crop with the heads it trains (the aux head included when the recipe uses it)."""
    rows = []
    for info, recipe in full_recipes():
        kwargs = dict(recipe.model_kwargs)
        parts = [*(f"{k}={v}" for k, v in kwargs.items()), *["aux head"] * recipe.aux_loss]
        parts += [f"{recipe.class_weights} class weights"] if recipe.class_weights else []
        config = ", ".join(parts) or "default"
        try:
            params, flops, _ = measure(info.name, num_classes, recipe.crop, recipe.aux_loss, kwargs)
        except Exception as err:
            rows.append((recipe.row, info.name, config, "-", "-", str(recipe.epochs), f"error: {err}"[:60]))
            continue
        train = flops * BACKWARD_FACTOR * TRAIN_IMAGES * recipe.epochs
        rows.append((recipe.row, info.name, config, f"{params / 1e6:.2f}", f"{flops / 1e9:.1f}", str(recipe.epochs),
                     f"{train / 1e15:.1f}"))  # fmt: skip
    return rows


def print_table(header: tuple[str, ...], rows: list[tuple[str, ...]], markdown: bool, numeric: set[int]) -> None:
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---:" if i in numeric else "---" for i in range(len(header))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        cells = zip(row, widths, strict=True)
        print("  ".join(f"{c:>{w}}" if i in numeric else f"{c:<{w}}" for i, (c, w) in enumerate(cells)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("--models", nargs="*", default=None, help="names to measure (default: all registered)")
    parser.add_argument("--recipes", action="store_true", help="the FULL rows: forward GFLOPs, training PFLOPs")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args(argv)
    if args.recipes:
        print(f"FULL rows, {args.num_classes} classes; training = {BACKWARD_FACTOR} x forward x {TRAIN_IMAGES} "
              "images x epochs (validation adds about a tenth)")  # fmt: skip
        header = ("row", "model", "configuration", "params (M)", "forward GFLOPs", "epochs", "training PFLOPs")
        print_table(header, recipe_rows(args.num_classes), args.markdown, {3, 4, 5, 6})
        return
    size = tuple(args.size)
    print(f"input 1x3x{size[0]}x{size[1]}, {args.num_classes} classes, forward only, eval mode")
    header = ("model", "params (M)", "GFLOPs", "output")
    print_table(header, model_rows(args.models or list_models(), args.num_classes, size), args.markdown, {1, 2})


if __name__ == "__main__":
    main()
