"""Forward+backward time and parameter count of EncNet and UPerNet, with smp's UPerNet side by side.

    python benchmarks/context_speed.py                      # CPU, batch 2 of 128x128
    python benchmarks/context_speed.py --device cuda --size 512 --batch 8
    python benchmarks/context_speed.py --encoding-memory    # peak memory of the Encoding layer vs its naive form

smp.UPerNet(decoder_channels=512) is the same network as seglearn's ``upernet`` except for one LayerNorm per
encoder feature (tests/test_upernet.py loads one's weights into the other and gets the same outputs), so the time
ratio compares two implementations of one architecture. Times are medians over ``--repeats`` training steps
(model in train mode, SegLoss on random labels, backward), after ``--warmup`` steps.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from seglearn.losses import SegLoss
from seglearn.memory import peak_new_bytes
from seglearn.models import count_parameters, create_model
from seglearn.models.encoding import Encoding


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_time(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, warmup: int, repeats: int
) -> tuple[float, float]:
    """Median (wall, process CPU) seconds of one forward + loss + backward.

    CPU time (all threads summed) is the steadier number on a shared machine; wall time is what a user waits.
    """
    loss_fn = SegLoss()
    model.train()
    wall, cpu = [], []
    for i in range(warmup + repeats):
        model.zero_grad(set_to_none=True)
        _sync(x.device)
        start, start_cpu = time.perf_counter(), time.process_time()
        loss_fn(model(x), target).backward()
        _sync(x.device)
        if i >= warmup:
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def build_models(num_classes: int, aux_loss: bool) -> dict[str, Callable[[], nn.Module]]:
    builders: dict[str, Callable[[], nn.Module]] = {
        "encnet (R50, OS8)": lambda: create_model("encnet", num_classes, aux_loss=aux_loss),
        "upernet (R50, OS32)": lambda: create_model("upernet", num_classes, aux_loss=aux_loss),
    }
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        return builders
    builders["smp.UPerNet (R50, 512 ch)"] = lambda: smp.UPerNet(
        "resnet50", encoder_weights=None, decoder_channels=512, classes=num_classes
    )
    return builders


def encoding_memory(size: int = 64, channels: int = 512, num_codes: int = 32) -> None:
    torch.manual_seed(0)
    layer = Encoding(channels, num_codes)
    x = torch.randn(1, channels, size, size)

    def naive() -> torch.Tensor:
        r = x.flatten(2).transpose(1, 2)[:, :, None, :] - layer.codewords  # (N, HW, K, D)
        a = torch.softmax(layer.scale * r.pow(2).sum(-1), dim=2)
        return (a[..., None] * r).sum(1)

    mib = 2**20
    print(f"Encoding, x (1, {channels}, {size}, {size}) float32 = {x.numel() * 4 / mib:.1f} MiB, K = {num_codes}")
    print(f"  (N, HW, K, D) residual tensor: {size * size * num_codes * channels * 4 / mib:.1f} MiB")
    with torch.no_grad():
        print(f"  seglearn forward, peak new:    {peak_new_bytes(lambda: layer(x)) / mib:.2f} MiB")
        print(f"  naive forward, peak new:       {peak_new_bytes(naive) / mib:.2f} MiB")
    x.requires_grad_(True)
    print(f"  seglearn forward+backward:     {peak_new_bytes(lambda: layer(x).sum().backward()) / mib:.2f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", type=int, nargs="+", default=[128], help="H [W] of the input (default 128)")
    parser.add_argument("--batch", type=int, default=2, help="batch size (>= 2: the PPM's 1x1 bin needs it)")
    parser.add_argument("--classes", type=int, default=21)
    parser.add_argument("--aux", action="store_true", help="add the FCN aux head on layer3 (seglearn models)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads for CPU runs")
    parser.add_argument("--encoding-memory", action="store_true", help="only measure the Encoding layer's memory")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.encoding_memory:
        encoding_memory()
        return

    device = torch.device(args.device)
    h, w = (args.size * 2)[:2]
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, h, w, device=device)
    target = torch.randint(0, args.classes, (args.batch, h, w), device=device)
    print(f"device {device}, input {tuple(x.shape)}, {args.classes} classes, threads {torch.get_num_threads()}")
    print(f"{'model':<28}{'params (M)':>12}{'wall fwd+bwd (ms)':>19}{'cpu (ms)':>10}")
    results = {}
    for name, build in build_models(args.classes, args.aux).items():
        model = build().to(device)
        wall, cpu = step_time(model, x, target, args.warmup, args.repeats)
        results[name] = (wall, cpu)
        print(f"{name:<28}{count_parameters(model) / 1e6:>12.3f}{wall * 1e3:>19.1f}{cpu * 1e3:>10.1f}")
        del model
    ours, theirs = "upernet (R50, OS32)", "smp.UPerNet (R50, 512 ch)"
    if theirs in results:
        (w1, c1), (w2, c2) = results[ours], results[theirs]
        print(f"upernet / smp.UPerNet: wall {w1 / w2:.2f}, cpu {c1 / c2:.2f}")


if __name__ == "__main__":
    main()
