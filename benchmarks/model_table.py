"""Parameters and FLOPs of every registered model at one input size (default 360x480, CamVid's).

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` for one forward pass in eval mode
(a multiply-add counts as 2 FLOPs; convolutions, transposed convolutions and matmuls are counted, elementwise ops,
pooling and interpolation are not). Every name in ``list_models()`` is measured, so models registered later show up
without editing this file; a model that fails to build or run is listed with its error instead of stopping the table.

    python benchmarks/model_table.py
    python benchmarks/model_table.py --size 512 512 --num-classes 21 --markdown
"""

from __future__ import annotations

import argparse

import torch
from torch.utils.flop_counter import FlopCounterMode

from seglearn.models import count_parameters, create_model, list_models


def measure(name: str, num_classes: int, size: tuple[int, int], aux_loss: bool = False) -> tuple[int, int, tuple]:
    """(parameters, forward FLOPs, output shape) of ``create_model(name, num_classes)`` on a (1, 3, H, W) input."""
    model = create_model(name, num_classes, aux_loss=aux_loss).eval()
    x = torch.randn(1, 3, *size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        out = model(x)
    return count_parameters(model), counter.get_total_flops(), tuple(out["out"].shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    parser.add_argument("--num-classes", type=int, default=11)
    parser.add_argument("--models", nargs="*", default=None, help="names to measure (default: all registered)")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    size = tuple(args.size)
    names = args.models or list_models()
    torch.manual_seed(0)
    header = ("model", "params (M)", "GFLOPs", "output")
    rows = []
    for name in names:
        try:
            params, flops, shape = measure(name, args.num_classes, size)
            rows.append((name, f"{params / 1e6:.2f}", f"{flops / 1e9:.1f}", "x".join(map(str, shape))))
        except Exception as err:  # a model still being written must not hide the others
            rows.append((name, "-", "-", f"error: {type(err).__name__}: {err}"[:80]))
    print(f"input 1x3x{size[0]}x{size[1]}, {args.num_classes} classes, forward only, eval mode")
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join(["---"] + ["---:"] * 2 + ["---"]) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
    else:
        print(f"{header[0]:16s} {header[1]:>11s} {header[2]:>9s}  {header[3]}")
        for name, params, flops, shape in rows:
            print(f"{name:16s} {params:>11s} {flops:>9s}  {shape}")


if __name__ == "__main__":
    main()
