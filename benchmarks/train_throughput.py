"""Training throughput and peak memory: seglearn's fast path against torchvision's reference recipe, in one run.

For ``fcn`` and ``deeplabv3`` (ResNet-50, output stride 8, aux head) three recipes train side by side, each on
its own copy of the same weights (:func:`seglearn.models.from_torchvision`):

* ``torchvision`` -- torchvision's ``fcn_resnet50`` / ``deeplabv3_resnet50`` under the loop of torchvision's
  ``references/segmentation/train.py``: fp32 (convolutions may use TF32, PyTorch's default), channels-first, SGD
  (momentum 0.9, weight decay 1e-4, aux head at 10x lr), poly lr, ``CE(out) + 0.5 * CE(aux)`` with ignore 255,
  ``loss.item()`` every step. This is the reference (ratio 1.00).
* ``seglearn fp32`` -- the seglearn twin trained by ``seglearn.fit(amp=False, channels_last=False)``: the same
  recipe through seglearn's engine (expect ~1.0x: model and engine add nothing).
* ``seglearn fast`` -- ``seglearn.fit(amp=True, channels_last=True)``: bf16 autocast on CUDA and channels-last
  tensors (``--compile`` adds a row with ``model.compile()``). Goal on a GPU: >= 1.3x the reference.

Each recipe is timed through its real loop (``fit`` itself for seglearn) over ``--steps`` steps per round; rounds
are interleaved in rotating order so drifting load hits every recipe alike, and images/s is the median over rounds.
Batches are pre-drawn SyntheticScenes images (CPU, pinned on CUDA) so data loading is not measured here (see
``benchmarks/data_throughput.py``). Memory: on CUDA the peak ``torch.cuda.max_memory_allocated`` during a recipe's
steps, less the other recipes' resident weights; on the CPU the bytes autograd saves for backward in one forward
(unique storages; activations only, no weights). On the CPU ``fit`` does not autocast, so "fast" there is fp32 +
channels-last.

``--check-accuracy N`` then trains the torchvision and the seglearn-fast recipe for N steps on the same
SyntheticScenes batches (fixed seed, same initial weights, same lr schedule) and reports their mean training loss
and val mIoU, to show that bf16/channels-last cost no accuracy.

    python benchmarks/train_throughput.py --device cuda                       # 360x480, batch 8 (GPU)
    python benchmarks/train_throughput.py --device cuda --compile --check-accuracy 200
    python benchmarks/train_throughput.py --size 128 160 --batch 2 --steps 3  # reduced, on the CPU
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from seglearn.data import SyntheticScenes, eval_transforms
from seglearn.engine import _amp_dtype, _to_device, default_device, evaluate, fit
from seglearn.losses import SegLoss
from seglearn.models import from_torchvision

Batch = tuple[Tensor, Tensor]
TV_BUILDERS = {
    "fcn": torchvision.models.segmentation.fcn_resnet50,
    "deeplabv3": torchvision.models.segmentation.deeplabv3_resnet50,
}
AUX_WEIGHT = 0.5  # torchvision references/segmentation/train.py: losses["out"] + 0.5 * losses["aux"]


def make_batches(num_batches: int, batch_size: int, size: tuple[int, int], seed: int, device: torch.device) -> list:
    """``num_batches`` (images (B, 3, H, W) normalized, masks (B, H, W) long) from SyntheticScenes, pinned on CUDA."""
    ds = SyntheticScenes(num_batches * batch_size, size=size, seed=seed, transforms=eval_transforms())
    batches = []
    for b in range(num_batches):
        items = [ds[b * batch_size + i] for i in range(batch_size)]
        images, masks = torch.stack([x for x, _ in items]), torch.stack([y for _, y in items]).long()
        if device.type == "cuda":
            images, masks = images.pin_memory(), masks.pin_memory()
        batches.append((images, masks))
    return batches


def param_groups(model: nn.Module, lr: float) -> list[dict[str, Any]]:
    """torchvision's reference groups: backbone, classifier at ``lr``, aux classifier at ``10 * lr``.

    Works for torchvision models (``classifier``/``aux_classifier``) and seglearn ones (``head``/``aux_head``).
    """
    tv = hasattr(model, "classifier")
    head = model.classifier if tv else model.head
    aux = model.aux_classifier if tv else model.aux_head
    groups = [{"params": list(model.backbone.parameters())}, {"params": list(head.parameters())}]
    if aux is not None:
        groups.append({"params": list(aux.parameters()), "lr": lr * 10})
    return groups


def sgd(model: nn.Module, lr: float) -> torch.optim.SGD:
    return torch.optim.SGD(param_groups(model, lr), lr=lr, momentum=0.9, weight_decay=1e-4)


def reference_criterion(output: dict[str, Tensor], target: Tensor) -> Tensor:
    """torchvision's ``criterion``: CE (ignore 255) on "out" + 0.5 x CE on "aux"."""
    losses = {k: F.cross_entropy(v, target, ignore_index=255) for k, v in output.items()}
    return losses["out"] + AUX_WEIGHT * losses["aux"] if "aux" in losses else losses["out"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_train(
    model: nn.Module, batches: list[Batch], opt: torch.optim.Optimizer, device: torch.device
) -> tuple[float, float]:
    """torchvision's ``train_one_epoch`` (fp32, poly lr over these steps); returns (seconds, mean loss)."""
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: (1 - it / len(batches)) ** 0.9)
    model.train()
    losses = []
    _sync(device)
    start = time.perf_counter()
    for image, target in batches:
        image, target = image.to(device), target.to(device)
        loss = reference_criterion(model(image), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    _sync(device)
    return time.perf_counter() - start, statistics.fmean(losses)


def fit_train(
    model: nn.Module,
    batches: list[Batch],
    opt: torch.optim.Optimizer,
    device: torch.device,
    fast: bool,
    val: list[Batch] | None = None,
    num_classes: int | None = None,
) -> Any:
    """One ``seglearn.fit`` epoch over ``batches``; the fast path is ``amp=True, channels_last=True``."""
    return fit(
        model,
        batches,
        val,
        epochs=1,
        lr=opt.defaults["lr"],
        optimizer=opt,
        loss=SegLoss(aux_weight=AUX_WEIGHT),
        device=device,
        num_classes=num_classes,
        amp=fast,
        channels_last=fast,
        progress=False,
        live_plot=False,
    )


def saved_tensor_bytes(model: nn.Module, batch: Batch, device: torch.device, fast: bool) -> int:
    """Bytes of the tensors autograd saves for backward in one training forward + loss (unique storages)."""
    seen: dict[tuple[torch.device, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[(t.device, storage.data_ptr())] = storage.nbytes()
        return t

    images, masks = _to_device(*batch, device, channels_last=fast)
    amp_dtype = _amp_dtype(device, fast)
    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = SegLoss(aux_weight=AUX_WEIGHT)(model(images), masks)
    del loss
    return sum(seen.values())


def resident_bytes(model: nn.Module, opt: torch.optim.Optimizer) -> int:
    """Weights, buffers, gradients and optimizer state of one recipe (what stays allocated between steps)."""
    tensors = [*model.parameters(), *model.buffers()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    tensors += [v for state in opt.state.values() for v in state.values() if isinstance(v, Tensor)]
    return sum(t.numel() * t.element_size() for t in tensors)


class Recipe:
    """One contender: a model, its optimizer and a ``train(batches) -> seconds`` loop."""

    def __init__(self, model_name: str, name: str, model: nn.Module, lr: float, device: torch.device, kind: str):
        self.model_name, self.name, self.kind = model_name, name, kind
        self.model = model.to(device)
        self.opt = sgd(self.model, lr)
        self.device = device
        self.seconds: list[float] = []
        self.peak_bytes = 0

    def train(self, batches: list[Batch]) -> float:
        if self.kind == "reference":
            return reference_train(self.model, batches, self.opt, self.device)[0]
        history = fit_train(self.model, batches, self.opt, self.device, fast=self.kind != "fp32")
        return history.epoch_time[0]

    def timed(self, batches: list[Batch]) -> None:
        cuda = self.device.type == "cuda"
        if cuda:
            _sync(self.device)
            others = torch.cuda.memory_allocated(self.device) - resident_bytes(self.model, self.opt)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.seconds.append(self.train(batches))
        if cuda:
            self.peak_bytes = max(self.peak_bytes, torch.cuda.max_memory_allocated(self.device) - others)


def build_recipes(model_name: str, args: argparse.Namespace, device: torch.device) -> list[Recipe]:
    tv = TV_BUILDERS[model_name](weights=None, weights_backbone=None, num_classes=args.num_classes, aux_loss=True)
    tv.train()
    recipes = [
        Recipe(model_name, "seglearn fp32", from_torchvision(tv), args.lr, device, "fp32"),
        Recipe(model_name, "seglearn fast", from_torchvision(tv), args.lr, device, "fast"),
    ]
    if args.compile:
        compiled = from_torchvision(tv)
        compiled.compile()
        recipes.append(Recipe(model_name, "seglearn fast+compile", compiled, args.lr, device, "compile"))
    return [Recipe(model_name, "torchvision", tv, args.lr, device, "reference"), *recipes]


def benchmark(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Interleaved timing of every recipe of every model; one record per (model, recipe)."""
    size = tuple(args.size)
    pool = make_batches(min(args.steps, 4), args.batch, size, args.seed, device)
    steps = [pool[i % len(pool)] for i in range(args.steps)]
    warm = [pool[i % len(pool)] for i in range(args.warmup)]
    records = []
    for model_name in args.models:
        torch.manual_seed(args.seed)
        recipes = build_recipes(model_name, args, device)
        if warm:
            for r in recipes:
                r.train(warm)
        for rnd in range(args.rounds):
            shift = rnd % len(recipes)
            for r in recipes[shift:] + recipes[:shift]:
                r.timed(steps)
        ref_ips = len(steps) * args.batch / statistics.median(recipes[0].seconds)
        for r in recipes:
            ips = len(steps) * args.batch / statistics.median(r.seconds)
            if device.type == "cuda":
                mem, mem_kind = r.peak_bytes, "cuda max_memory_allocated"
            elif r.kind == "compile":
                mem, mem_kind = None, "n/a (compiled)"
            else:
                mem = saved_tensor_bytes(r.model, pool[0], device, fast=r.kind != "reference" and r.kind != "fp32")
                mem_kind = "autograd saved tensors"
            records.append(
                {
                    "model": model_name,
                    "recipe": r.name,
                    "device": str(device),
                    "size": size,
                    "batch": args.batch,
                    "steps": len(steps),
                    "rounds": args.rounds,
                    "images_per_s": ips,
                    "ratio": ips / ref_ips,
                    "mem_mib": None if mem is None else mem / 2**20,
                    "mem_kind": mem_kind,
                }
            )
        del recipes
    return records


def check_accuracy(args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    """Train the reference and the fast recipe for ``args.check_accuracy`` steps on identical data; score both."""
    size, n = tuple(args.size), args.check_accuracy
    pool = make_batches(min(n, 16), args.batch, size, args.seed, device)
    train = [pool[i % len(pool)] for i in range(n)]
    val = make_batches(max(1, 8 // args.batch), args.batch, size, args.seed + 1, device)
    records = []
    for model_name in args.models:
        torch.manual_seed(args.seed)
        tv = TV_BUILDERS[model_name](weights=None, weights_backbone=None, num_classes=args.num_classes, aux_loss=True)
        ours = from_torchvision(tv.train()).to(device)
        tv.to(device)
        torch.manual_seed(args.seed)  # the same dropout stream for both
        _, ref_loss = reference_train(tv, train, sgd(tv, args.lr), device)
        ref_scores = evaluate(tv, val, args.num_classes, device, amp=False)
        torch.manual_seed(args.seed)
        history = fit_train(ours, train, sgd(ours, args.lr), device, fast=True, val=val, num_classes=args.num_classes)
        for recipe, loss, scores in (
            ("torchvision", ref_loss, ref_scores),
            ("seglearn fast", history.train_loss[0], history.val[-1]),
        ):
            records.append(
                {
                    "model": model_name,
                    "recipe": recipe,
                    "steps": n,
                    "train_loss": loss,
                    "val_miou": scores.miou,
                    "val_pixel_acc": scores.pixel_acc,
                }
            )
    return records


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def speed_table(records: list[dict[str, Any]]) -> str:
    mem_kind = records[0]["mem_kind"] if records else ""
    lines = [
        f"| model | recipe | images/s | ratio to torchvision | memory MiB ({mem_kind}) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['recipe']} | {r['images_per_s']:.2f} | {r['ratio']:.2f}x | "
            f"{_fmt(r['mem_mib'], '.0f')} |"
        )
    return "\n".join(lines)


def accuracy_table(records: list[dict[str, Any]]) -> str:
    lines = ["| model | recipe | steps | mean train loss | val mIoU | val pixel acc |", "|---|---|---:|---:|---:|---:|"]
    for r in records:
        lines.append(
            f"| {r['model']} | {r['recipe']} | {r['steps']} | {r['train_loss']:.4f} | {r['val_miou']:.4f} | "
            f"{r['val_pixel_acc']:.4f} |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", choices=sorted(TV_BUILDERS), default=["fcn", "deeplabv3"])
    p.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per round")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps of each recipe first")
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (median reported)")
    p.add_argument("--device", default=None, help="default: CUDA if available, else MPS, else CPU")
    p.add_argument("--num-classes", type=int, default=11)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="add a row with model.compile() on the fast path")
    p.add_argument("--check-accuracy", type=int, default=0, metavar="N", help="train both recipes N steps, score")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch must be >= 2 (BatchNorm in training needs more than one image)")
    if min(args.steps, args.rounds) < 1 or min(args.warmup, args.check_accuracy) < 0 or min(args.size) < 1:
        p.error("--steps and --rounds must be >= 1, --warmup and --check-accuracy >= 0, --size positive")
    return args


def main(argv: list[str] | None = None, out: Callable[[str], Any] = print) -> dict[str, list[dict[str, Any]]]:
    """Run the benchmark, print markdown tables through ``out``; returns ``{"speed": [...], "accuracy": [...]}``."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else default_device()
    amp = _amp_dtype(device, True)
    out(
        f"device={device} size={tuple(args.size)} batch={args.batch} steps={args.steps}x{args.rounds} rounds "
        f"(warm-up {args.warmup}) threads={torch.get_num_threads()} torch={torch.__version__}; "
        f"fast path autocast: {amp if amp is not None else 'none (fit autocasts only on CUDA)'}"
    )
    speed = benchmark(args, device)
    out(speed_table(speed))
    accuracy = check_accuracy(args, device) if args.check_accuracy else []
    if accuracy:
        out(f"\nsame data and initial weights, {args.check_accuracy} steps, SyntheticScenes {tuple(args.size)}:")
        out(accuracy_table(accuracy))
    return {"speed": speed, "accuracy": accuracy}


if __name__ == "__main__":
    main()
