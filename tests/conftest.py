"""Shared test fixtures: the real-data folder beside the checkout (skipped cleanly when absent), quiet plotting."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SEGLEARN_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# pytest -n 2 runs two workers on two cores: one thread each (their notebook kernels inherit this) avoids the
# oversubscription that made small-tensor tests ~10x slower in wall time.
os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_configure(config: pytest.Config) -> None:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread for a module, whatever OMP_NUM_THREADS says: tiny tensors gain nothing from more, and the
    resume test compares with a one-thread child process bit for bit."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def shared_camvid() -> Path:
    """Real CamVid (SegNet 11-class) from ../shared/data/camvid; skips when it is not there."""
    root = SHARED_DATA / "camvid"
    if not (root / "train").is_dir():
        pytest.skip(f"real CamVid not present at {root}")
    return root


@pytest.fixture(scope="session")
def shared_voc() -> Path:
    """The two real VOC 2012 pairs from ../shared/data/voc-sample; skips when they are not there."""
    root = SHARED_DATA / "voc-sample"
    if not (root / "VOCdevkit" / "VOC2012").is_dir():
        pytest.skip(f"VOC sample not present at {root}")
    return root


@pytest.fixture(scope="session")
def load_benchmark():
    """``load_benchmark("full_results")`` imports ``benchmarks/full_results.py`` (a script folder, not a package)."""

    def load(name: str) -> ModuleType:
        spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
        return module

    return load
