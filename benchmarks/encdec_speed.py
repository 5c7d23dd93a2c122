"""Forward+backward speed of seglearn's encoder-decoders against reference implementations, in the same run.

* ``fcn`` (ResNet-50, output stride 8, aux head) against torchvision's ``fcn_resnet50``: the same network, so
  the seglearn model is built from the torchvision one with :func:`seglearn.models.from_torchvision` (same weights).
* ``unet`` against a hand-written U-Net in the layout of the widely used milesial/Pytorch-UNet (padded 3x3
  convs with BN, transposed-convolution up-steps). segmentation_models_pytorch's ``Unet`` is not this network
  (a ResNet/VGG encoder, five decoder stages of 256..16 channels, nearest-neighbour upsampling) and cannot be
  configured into it, so timing it would compare different amounts of work. The weights are copied into the
  reference and its outputs checked equal before timing.

Repeats are interleaved (A, B, B, A, ...) and the median is reported; the ratio is seglearn / reference
(goal: <= 1.00).

    python benchmarks/encdec_speed.py                      # CPU, 2x3x128x160
    python benchmarks/encdec_speed.py --device cuda --size 512 512 --batch 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from seglearn.models import create_model, from_torchvision


class ReferenceDoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class ReferenceUp(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.up = nn.ConvTranspose2d(cin, cin // 2, 2, stride=2)
        self.conv = ReferenceDoubleConv(cin, cout)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        x1 = self.up(x1)
        dy, dx = x2.shape[2] - x1.shape[2], x2.shape[3] - x1.shape[3]
        x1 = F.pad(x1, [dx // 2, dx - dx // 2, dy // 2, dy - dy // 2])
        return self.conv(torch.cat([x2, x1], dim=1))


class ReferenceUNet(nn.Module):
    """The milesial/Pytorch-UNet layout, written out by hand (no loops), as an independent reference."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.inc = ReferenceDoubleConv(in_channels, 64)
        self.down1 = nn.Sequential(nn.MaxPool2d(2), ReferenceDoubleConv(64, 128))
        self.down2 = nn.Sequential(nn.MaxPool2d(2), ReferenceDoubleConv(128, 256))
        self.down3 = nn.Sequential(nn.MaxPool2d(2), ReferenceDoubleConv(256, 512))
        self.down4 = nn.Sequential(nn.MaxPool2d(2), ReferenceDoubleConv(512, 1024))
        self.up1 = ReferenceUp(1024, 512)
        self.up2 = ReferenceUp(512, 256)
        self.up3 = ReferenceUp(256, 128)
        self.up4 = ReferenceUp(128, 64)
        self.outc = nn.Conv2d(64, num_classes, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        x1 = self.inc(x)
        x2 = self.down1(x1)
        x3 = self.down2(x2)
        x4 = self.down3(x3)
        x5 = self.down4(x4)
        x = self.up1(x5, x4)
        x = self.up2(x, x3)
        x = self.up3(x, x2)
        x = self.up4(x, x1)
        return {"out": self.outc(x)}


def copy_weights(src: nn.Module, dst: nn.Module) -> None:
    """Copy parameters and buffers in registration order (the two layouts register them in the same order)."""
    s, d = list(src.state_dict().values()), dst.state_dict()
    if len(s) != len(d) or any(a.shape != b.shape for a, b in zip(s, d.values(), strict=True)):
        raise ValueError("the two networks differ in their parameter layout")
    dst.load_state_dict(dict(zip(d, s, strict=True)))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step(model: nn.Module, x: Tensor) -> None:
    out = model(x)
    loss = sum(v.float().mean() for v in out.values())
    loss.backward()
    model.zero_grad(set_to_none=True)


def time_pair(
    ours: nn.Module, ref: nn.Module, x: Tensor, repeats: int, warmup: int, clock=time.perf_counter
) -> tuple[float, float]:
    """Median seconds per forward+backward of each model, interleaved A B B A ... on the same input."""
    for _ in range(warmup):
        step(ours, x)
        step(ref, x)
    times: dict[int, list[float]] = {0: [], 1: []}
    models = (ours, ref)
    for r in range(repeats):
        for i in (0, 1) if r % 2 == 0 else (1, 0):
            _sync(x.device)
            t0 = clock()
            step(models[i], x)
            _sync(x.device)
            times[i].append(clock() - t0)
    return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(128, 160), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--num-classes", type=int, default=21)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="process: CPU time of this process (steadier than wall time on a CPU shared with other jobs)",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch, 3, *args.size, device=device)
    c = args.num_classes
    print(f"device={device} input={tuple(x.shape)} threads={torch.get_num_threads()} torch={torch.__version__}")
    clock = time.perf_counter if args.clock == "wall" else time.process_time
    print(f"forward+backward, train mode, median of {args.repeats} interleaved repeats, {args.clock} clock")

    rows = []
    tv = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None, num_classes=c, aux_loss=True)
    ours = from_torchvision(tv.train())
    rows.append(("fcn (ResNet-50, OS 8, aux)", "torchvision fcn_resnet50", ours.to(device), tv.to(device)))

    unet = create_model("unet", c)
    ref = ReferenceUNet(3, c)
    copy_weights(unet, ref)
    with torch.no_grad():
        diff = (unet.eval()(x.cpu())["out"] - ref.eval()(x.cpu())["out"]).abs().max().item()
    if diff > 1e-4:
        raise RuntimeError(f"seglearn U-Net and the reference differ by {diff}; the timing would be meaningless")
    print(f"unet vs reference U-Net (copied weights, eval): max |diff| = {diff:.2e}")
    rows.append(("unet (64 ch, depth 4)", "hand-written U-Net", unet.train().to(device), ref.train().to(device)))

    print(f"{'model':30s} {'reference':26s} {'seglearn s':>11s} {'ref s':>9s} {'ratio':>7s}")
    for name, ref_name, a, b in rows:
        ta, tb = time_pair(a, b, x, args.repeats, args.warmup, clock)
        print(f"{name:30s} {ref_name:26s} {ta:11.4f} {tb:9.4f} {ta / tb:7.3f}")


if __name__ == "__main__":
    main()
