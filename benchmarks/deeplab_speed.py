"""Training-step time of seglearn's DeepLabv3-ResNet-50 against torchvision's ``deeplabv3_resnet50``, same run.

    python benchmarks/deeplab_speed.py                           # CPU, batch 2 of 129x129
    python benchmarks/deeplab_speed.py --device cuda --size 513 --batch 8 --amp

Both models have torchvision's configuration (output stride 8, no multi-grid, ASPP rates 12/24/36, aux head) and
the same weights (seglearn's is ``from_torchvision`` of torchvision's), so the ratio compares two implementations of
one network. A step is forward + cross-entropy on "out" and 0.4 x "aux" + backward; the two models alternate step by
step (so drifting load hits both alike) and the medians over ``--repeats`` steps after ``--warmup`` are compared.
Goal: ratio seglearn / torchvision <= 1.00. ``--paper`` also times seglearn's default (OS16, multi-grid 1/2/4,
the paper's head).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn
from torchvision.models.segmentation import deeplabv3_resnet50

from seglearn.models import count_parameters, create_model, from_torchvision


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: nn.Module, x: torch.Tensor, target: torch.Tensor, amp: bool) -> float:
    """Seconds of one forward + loss + backward."""
    model.zero_grad(set_to_none=True)
    _sync(x.device)
    start = time.perf_counter()
    with torch.autocast(x.device.type, enabled=amp):
        out = model(x)
        loss = nn.functional.cross_entropy(out["out"], target)
        loss = loss + 0.4 * nn.functional.cross_entropy(out["aux"], target)
    loss.backward()
    _sync(x.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, default=129, help="square input side (default 129)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--amp", action="store_true", help="autocast (bf16 on CPU, fp16 on CUDA)")
    parser.add_argument("--paper", action="store_true", help="also time seglearn's default OS16 multi-grid model")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)

    tv = deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=args.num_classes, aux_loss=True)
    models = {"torchvision": tv, "seglearn": from_torchvision(tv)}
    if args.paper:
        models["seglearn OS16 multi-grid"] = create_model("deeplabv3", args.num_classes, aux_loss=True)
    for model in models.values():
        model.to(device).train()
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    target = torch.randint(0, args.num_classes, (args.batch, args.size, args.size), device=device)

    times: dict[str, list[float]] = {name: [] for name in models}
    for i in range(args.warmup + args.repeats):
        order = list(models) if i % 2 == 0 else list(reversed(models))
        for name in order:
            t = train_step(models[name], x, target, args.amp)
            if i >= args.warmup:
                times[name].append(t)

    print(
        f"device={device} input={args.batch}x3x{args.size}x{args.size} threads={torch.get_num_threads()} "
        f"amp={args.amp} repeats={args.repeats}"
    )
    reference = statistics.median(times["torchvision"])
    print(f"{'model':<26} {'params':>11} {'median s':>9} {'min s':>7} {'ratio':>6}")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(
            f"{name:<26} {count_parameters(models[name]):>11,} {median:9.3f} {min(ts):7.3f} {median / reference:6.2f}"
        )


if __name__ == "__main__":
    main()
