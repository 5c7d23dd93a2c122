"""Overhead of ``seglearn.engine.fit`` over a bare PyTorch training loop (same model, data, optimizer and loss).

Both loops train the same model on the same in-memory batches with SGD (momentum 0.9, weight decay 1e-4); the bare
loop has no schedule, no checks and no bookkeeping; fit runs with validation, checkpoints and progress off. Epochs
alternate (bare, fit, bare, fit, ...) so drifting machine load hits both alike; the ratio is median(fit epoch time)
/ median(bare epoch time) over the epochs after the warm-up. It must stay <= 1.05.

    python benchmarks/engine_overhead.py                      # CPU or the first GPU, tinyfcn at 96x128
    python benchmarks/engine_overhead.py --model unet --size 256 256 --batch 8 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from seglearn.engine import default_device, fit
from seglearn.losses import SegLoss
from seglearn.models import create_model

LIMIT = 1.05


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_epoch(model, loader, opt, loss_fn, device, amp_dtype) -> float:
    """One epoch of the plainest loop that does the same work; returns its wall time in seconds."""
    _sync(device)
    start = time.perf_counter()
    model.train()
    for images, masks in loader:
        images, masks = images.to(device, non_blocking=True), masks.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = loss_fn(model(images), masks)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    _sync(device)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tinyfcn")
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=12, help="batches per epoch")
    p.add_argument("--epochs", type=int, default=7, help="timed epochs of each loop")
    p.add_argument("--warmup", type=int, default=2, help="untimed epochs of each loop first")
    p.add_argument("--device", default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    amp_dtype = None
    if device.type == "cuda":  # fit's default AMP: bf16 where supported
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp_dtype == torch.float16:
        sys.exit("fp16 needs a GradScaler in the bare loop; run this benchmark on a bf16-capable GPU or the CPU")
    g = torch.Generator().manual_seed(0)
    n = args.batch * args.steps
    images = torch.randn(n, 3, *args.size, generator=g)
    masks = torch.randint(0, args.num_classes, (n, *args.size), generator=g)
    loader = DataLoader(TensorDataset(images, masks), batch_size=args.batch, shuffle=True, drop_last=True)
    torch.manual_seed(0)
    model = create_model(args.model, args.num_classes).to(device)
    loss_fn = SegLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    bare, engine = [], []
    for i in range(args.warmup + args.epochs):
        for group in opt.param_groups:  # fit's poly schedule left it decayed; the bare loop runs at a fixed lr
            group["lr"] = 0.01
        t_bare = bare_epoch(model, loader, opt, loss_fn, device, amp_dtype)
        h = fit(model, loader, epochs=1, lr=0.01, optimizer=opt, loss=loss_fn, device=device, progress=False)
        if i >= args.warmup:
            bare.append(t_bare)
            engine.append(h.epoch_time[0])
    ratio = statistics.median(engine) / statistics.median(bare)
    print(
        f"{args.model} {tuple(args.size)} batch {args.batch} x {args.steps} steps on {device} "
        f"(threads {torch.get_num_threads()}): bare {statistics.median(bare) * 1e3:.1f} ms/epoch, "
        f"fit {statistics.median(engine) * 1e3:.1f} ms/epoch, ratio {ratio:.3f} (limit {LIMIT})"
    )
    return 0 if ratio <= LIMIT else 1


if __name__ == "__main__":
    raise SystemExit(main())
