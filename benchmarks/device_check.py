"""Smoke check of the lent GPU machine's environment (or its CPU simulation) before a GPU session spends its time.

Run from the repository root after installing the wheels from ``benchmarks/device_wheels.sh`` (see
``benchmarks/GPU_SESSION.md``)::

    python3 benchmarks/device_check.py                  # about a minute on a CPU; benchmarks only with CUDA
    python3 benchmarks/device_check.py --require-cuda   # on the GPU machine: no CUDA is a failure
    python3 benchmarks/device_check.py --benchmarks     # also run both speed benchmarks tiny on a CPU
    python3 benchmarks/device_check.py --execute notebooks/01_fcn.ipynb --out $OUT   # run chapters, keep outputs

Checks, in order: versions (the package's floors, albumentations as in uv.lock, compiled wheels that load), every
seglearn module imports, the notebook and test stacks import, CUDA (when present), CamVid under ``$SEGLEARN_DATA``
(when set), a one-epoch ``python -m seglearn train`` on synthetic scenes, a dense CRF call that must fix a noisy
segmentation, ``benchmarks/train_throughput.py`` and ``benchmarks/data_throughput.py`` at toy sizes, and
``notebooks/00_data_and_metrics.ipynb`` executed in QUICK mode with nbclient. One ``OK`` line per check; the first
failure prints ``FAIL`` with the reason and exits 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import pkgutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
# uv.lock's albumentations: 2.x renamed value=/mask_value= to fill=/fill_mask= (silently ignored if mismatched).
ALBUMENTATIONS = "2.0.8"
# pyproject.toml's floors.
FLOORS = {"torch": (2, 4), "torchvision": (0, 19), "numpy": (2, 0), "matplotlib": (3, 8), "PIL": (10, 0)}
NOTEBOOK = REPO_ROOT / "notebooks" / "00_data_and_metrics.ipynb"


class CheckFailed(Exception):
    """A check's reason for failing, printed after FAIL."""


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("+")[0].split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def check_versions() -> str:
    import numpy
    import torch

    versions = {}
    for name, floor in FLOORS.items():
        module = importlib.import_module(name)
        versions[name] = module.__version__
        if _version_tuple(module.__version__) < floor:
            raise CheckFailed(
                f"{name} {module.__version__} is older than pyproject.toml's >= {'.'.join(map(str, floor))}"
            )
    import albumentations

    if albumentations.__version__ != ALBUMENTATIONS:
        raise CheckFailed(
            f"albumentations {albumentations.__version__} from {albumentations.__file__}, expected {ALBUMENTATIONS}: "
            "rerun benchmarks/device_wheels.sh and reinstall .whl/ into /tmp/site"
        )
    # Compiled wheels built elsewhere: a wrong Python ABI or glibc shows here, not in the middle of a notebook.
    import cv2
    import pydantic_core
    import pydensecrf.densecrf  # noqa: F401
    import torchvision

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0]])
    keep = torchvision.ops.nms(boxes, torch.tensor([0.9, 0.8]), 0.5)  # torchvision's C++ ops match this torch
    if keep.tolist() != [0]:
        raise CheckFailed(f"torchvision.ops.nms returned {keep.tolist()}, expected [0]")
    site = Path(albumentations.__file__).parents[1]
    return (
        f"python {sys.version.split()[0]}, torch {torch.__version__}, torchvision {versions['torchvision']}, "
        f"numpy {numpy.__version__}, albumentations {albumentations.__version__} (from {site}), "
        f"pydantic-core {pydantic_core.__version__}, opencv {cv2.__version__}, matplotlib {versions['matplotlib']}"
    )


def check_seglearn_imports() -> str:
    import seglearn

    where = Path(seglearn.__file__).resolve().parent
    if where != REPO_ROOT / "seglearn":
        raise CheckFailed(f"seglearn imports from {where}, not this checkout: put $PWD on PYTHONPATH")
    names = [m.name for m in pkgutil.walk_packages(seglearn.__path__, "seglearn.") if m.name != "seglearn.__main__"]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:
            raise CheckFailed(f"import {name}: {type(err).__name__}: {err}") from err
    from seglearn.models import list_models

    return f"{len(names)} modules of seglearn {seglearn.__version__}; models: {' '.join(list_models())}"


def check_stack_imports() -> str:
    found = []
    # The chapters' kernel and their `import d2l.torch`; the tests' smp reference and pyproject's --nbval-lax.
    for name in (
        "nbclient",
        "nbformat",
        "ipykernel",
        "zmq",
        "IPython",
        "matplotlib_inline",
        "d2l.torch",
        "nbval.plugin",
    ):
        try:
            module = importlib.import_module(name)
        except Exception as err:
            raise CheckFailed(f"import {name}: {type(err).__name__}: {err}") from err
        found.append(f"{name} {getattr(module, '__version__', '')}".strip())
    try:
        import segmentation_models_pytorch as smp
    except Exception as err:  # smp imports timm and huggingface_hub, which the device should already have
        raise CheckFailed(
            f"import segmentation_models_pytorch (tests/test_upernet.py): {type(err).__name__}: {err}"
        ) from err
    return ", ".join([*found, f"smp {smp.__version__}"])


def check_cuda(require: bool) -> str:
    import torch
    import torch.nn.functional as F

    if not torch.cuda.is_available():
        if require:
            raise CheckFailed("torch.cuda.is_available() is False on a machine that should have a GPU")
        return "no CUDA device (CPU run); pass --require-cuda on the GPU machine"
    x = torch.randn(2, 3, 64, 64, device="cuda")
    w = torch.randn(8, 3, 3, 3, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = F.conv2d(x.contiguous(memory_format=torch.channels_last), w, padding=1)
    ref = F.conv2d(x.double(), w.double(), padding=1)
    err = (y.double() - ref).abs().max().item()
    if y.dtype != torch.bfloat16 or err > 0.5:
        raise CheckFailed(f"bf16 conv on CUDA: dtype {y.dtype}, max error {err:.3g} against fp64")
    props = torch.cuda.get_device_properties(0)
    return (
        f"{torch.cuda.device_count()} x {props.name}, {props.total_memory / 2**30:.0f} GiB, capability "
        f"{props.major}.{props.minor}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}"
    )


def _run(cmd: list[str], timeout: float, cwd: Path = REPO_ROOT) -> str:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise CheckFailed(f"`{' '.join(cmd[1:])}` exited {proc.returncode}:\n{tail}")
    return proc.stdout


def check_data() -> str:
    env = os.environ.get("SEGLEARN_DATA")
    if not env:
        return "SEGLEARN_DATA unset: QUICK runs on SyntheticScenes (FULL needs CamVid, see GPU_SESSION.md)"
    if not Path(env).is_absolute():
        raise CheckFailed(
            f"SEGLEARN_DATA={env} is relative: notebook kernels run in notebooks/ and would not find it; "
            f"export SEGLEARN_DATA=$PWD/{env}"
        )
    import numpy as np

    from seglearn.data import CamVid
    from seglearn.data.paths import is_camvid_root

    root = Path(env) / "camvid"
    if not is_camvid_root(root):
        raise CheckFailed(f"no CamVid under {root}: python ../shared/tools/pack_camvid.py {root} (then carry it)")
    sizes, mib = {}, 0.0
    for split, expected in (("train", 367), ("val", 101)):
        ds = CamVid(root, split=split, preload=True)  # as FULL training loads it: every file decoded and checked once
        mib += ds.preloaded_bytes / 2**20
        image, mask = ds[0]
        labels = set(np.unique(mask).tolist())
        if len(ds) != expected or image.shape != (360, 480, 3) or not labels <= {*range(11), 255}:
            raise CheckFailed(
                f"CamVid {split} at {root}: {len(ds)} images (want {expected}), image {image.shape}, labels {labels}"
            )
        sizes[split] = len(ds)
    return (
        f"CamVid at {root}: {sizes['train']} train + {sizes['val']} val images, 360x480, labels 0-10 and 255, "
        f"{mib:.0f} MiB preloaded"
    )


def check_train() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "seglearn", "train", "--model", "tinyfcn", "--dataset", "synthetic"]
        cmd += ["--num-images", "16", "--crop", "64", "64", "--batch-size", "4", "--workers", "1", "--epochs", "1"]
        _run([*cmd, "--out", str(out)], timeout=300)
        missing = [f for f in ("model.pt", "history.json", "scores.json", "curves.png") if not (out / f).is_file()]
        if missing:
            raise CheckFailed(f"seglearn train did not write {', '.join(missing)} under {out}")
        history = json.loads((out / "history.json").read_text())
        scores = json.loads((out / "scores.json").read_text())
    loss = history["train_loss"]
    if len(loss) != 1 or not math.isfinite(loss[0]) or not 0.0 <= scores["miou"] <= 1.0:
        raise CheckFailed(f"train loss {loss}, val mIoU {scores['miou']}: expected one finite loss, mIoU in [0, 1]")
    return f"python -m seglearn train: 1 epoch, loss {loss[0]:.3f}, val mIoU {scores['miou']:.3f}"


def check_crf() -> str:
    import numpy as np

    from seglearn.crf import DenseCRF, crf_batch

    rng = np.random.default_rng(0)
    truth = np.zeros((48, 64), dtype=np.int64)
    truth[:, 32:] = 1
    image = np.where(truth[..., None] == 1, 200, 40).astype(np.uint8).repeat(3, axis=2)
    logits = np.stack([truth == 0, truth == 1]).astype(np.float32) * 1.0 + rng.normal(0, 1.0, (2, 48, 64))
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    before = float((probs.argmax(0) == truth).mean())
    refined = DenseCRF()(image, probs.astype(np.float32))
    after = float((refined.argmax(0) == truth).mean())
    if refined.shape != (2, 48, 64) or not np.allclose(refined.sum(0), 1, atol=1e-4) or after < 0.98:
        raise CheckFailed(f"DenseCRF: shape {refined.shape}, pixel accuracy {before:.3f} -> {after:.3f} (want >= 0.98)")
    batch = crf_batch([image, image[:, ::-1]], [probs, probs[:, :, ::-1]], workers=2)  # worker processes
    if not np.array_equal(batch[0], refined):
        raise CheckFailed("crf_batch(workers=2) differs from DenseCRF() on the same image")
    return f"DenseCRF fixes a noisy two-region map: pixel accuracy {before:.3f} -> {after:.3f}; crf_batch workers=2"


def check_benchmarks(device: str) -> str:
    bench = REPO_ROOT / "benchmarks"
    train = _run(
        [sys.executable, str(bench / "train_throughput.py"), "--models", "fcn", "--size", "64", "64", "--batch", "2"]
        + ["--steps", "1", "--rounds", "1", "--warmup", "1", "--device", device],
        timeout=300,
    )
    data = _run(
        [sys.executable, str(bench / "data_throughput.py"), "--synthetic", "--max-workers", "1", "--crop", "64", "64"]
        + ["--batch", "2", "--batches", "2", "--warmup", "1"],
        timeout=120,
    )
    rows = [line for line in train.splitlines() if line.startswith("| fcn |")]
    if len(rows) < 3 or "| 1 |" not in data:
        raise CheckFailed(f"unexpected benchmark output:\n{train}\n{data}")
    return f"train_throughput.py ({len(rows)} recipes on {device}) and data_throughput.py (workers 0, 1) ran"


def check_notebook(path: Path = NOTEBOOK, timeout: int = 600, out_dir: Path | None = None) -> str:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    )
    try:
        client.execute()
    except CellExecutionError as err:
        raise CheckFailed(f"{path.name}: " + "\n".join(str(err).strip().splitlines()[-12:])) from err
    finally:
        if out_dir is not None:  # also the failed run: its last outputs show where it stopped
            out_dir.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, out_dir / path.name)
    cells = sum(c.cell_type == "code" for c in nb.cells)
    mode = os.environ.get("SEGLEARN_MODE") or "by device"
    return f"{path.name} executed headless with nbclient ({mode}): {cells} code cells, no errors"


def execute_notebooks(paths: list[str], timeout: int, out_dir: Path | None) -> int:
    """``--execute``: run whole notebooks (mode from SEGLEARN_MODE, else FULL on a GPU), one OK/FAIL line each."""
    failed = 0
    for name in paths:
        t0 = time.perf_counter()
        try:
            detail = check_notebook(Path(name).resolve(), timeout, out_dir)
        except CheckFailed as err:
            print(f"FAIL {name}: {err}", flush=True)
            failed += 1
            continue
        print(f"OK   {time.perf_counter() - t0:6.1f}s  {detail}", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--require-cuda", action="store_true", help="fail when torch sees no CUDA device")
    p.add_argument("--benchmarks", action="store_true", help="run the speed benchmarks tiny even without CUDA")
    p.add_argument("--skip-notebook", action="store_true", help="do not execute notebooks/00 (the slowest check)")
    p.add_argument("--execute", nargs="+", metavar="NOTEBOOK", help="instead of the checks, run these notebooks")
    p.add_argument("--out", type=Path, default=None, help="with --execute: write the executed notebooks here")
    p.add_argument("--cell-timeout", type=int, default=1800, help="with --execute: seconds per cell")
    args = p.parse_args(argv)

    # Set before anything imports albumentations (its update check would wait on the network the device lacks);
    # children (seglearn train, the notebook kernel) inherit these.
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    # The notebook kernel starts in notebooks/: it finds this checkout's seglearn through PYTHONPATH.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        dict.fromkeys([*os.environ.get("PYTHONPATH", "").split(os.pathsep), str(REPO_ROOT)])
    ).strip(os.pathsep)
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))

    if args.execute:
        return execute_notebooks(args.execute, args.cell_timeout, args.out)
    os.environ["SEGLEARN_MODE"] = "QUICK"

    import torch

    cuda = torch.cuda.is_available()
    checks: list[tuple[str, Callable[[], str]]] = [
        ("versions", check_versions),
        ("seglearn imports", check_seglearn_imports),
        ("notebook and test stacks", check_stack_imports),
        ("cuda", lambda: check_cuda(args.require_cuda)),
        ("data", check_data),
        ("train", check_train),
        ("crf", check_crf),
    ]
    if cuda or args.benchmarks:
        checks.append(("benchmarks", lambda: check_benchmarks("cuda" if cuda else "cpu")))
    if not args.skip_notebook:
        checks.append(("notebook", check_notebook))

    start = time.perf_counter()
    for name, check in checks:
        t0 = time.perf_counter()
        try:
            detail = check()
        except CheckFailed as err:
            print(f"FAIL {name}: {err}", flush=True)
            return 1
        except Exception as err:  # an unexpected error is a failure too, with its type
            print(f"FAIL {name}: {type(err).__name__}: {err}", flush=True)
            return 1
        print(f"OK   {name:<25} {time.perf_counter() - t0:5.1f}s  {detail}", flush=True)
    skipped = [] if cuda or args.benchmarks else ["benchmarks (no CUDA; pass --benchmarks)"]
    skipped += ["notebook"] if args.skip_notebook else []
    print(f"all {len(checks)} checks passed in {time.perf_counter() - start:.0f}s", end="")
    print(f"; skipped: {', '.join(skipped)}" if skipped else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
