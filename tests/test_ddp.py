"""Data-parallel helpers, and a real two-process ``torchrun`` job whose merged scores must match one process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DistributedSampler

from seglearn import distributed as D

REPO_ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- single-process behaviour


def test_without_torchrun_everything_is_one_process(monkeypatch):
    for var in D.TORCHRUN_VARS:
        monkeypatch.delenv(var, raising=False)
    assert not D.launched_by_torchrun()
    info = D.init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device) == (0, 1, 0, torch.device("cpu"))
    assert info.is_main and not info.distributed
    assert D.get_rank() == 0 and D.get_world_size() == 1 and D.is_main_process()
    assert D.train_sampler(list(range(10))) is None and D.eval_sampler(list(range(10))) is None
    D.barrier()
    D.teardown_distributed()  # no group: a no-op


def test_torchrun_env_with_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("LOCAL_RANK", "0")
    info = D.init_distributed("cpu")
    assert D.launched_by_torchrun() and info.world_size == 1
    assert not torch.distributed.is_initialized()


def test_bad_torchrun_env_is_explained(monkeypatch):
    monkeypatch.setenv("RANK", "zero")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(ValueError, match="RANK='zero' is not an integer"):
        D.init_distributed("cpu")


@pytest.mark.parametrize("n, world", [(10, 3), (5, 2), (2, 4), (0, 2)])
def test_shard_sampler_covers_every_item_exactly_once(n, world):
    shards = [list(D.ShardSampler(range(n), rank=r, world_size=world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert [len(D.ShardSampler(range(n), rank=r, world_size=world)) for r in range(world)] == [len(s) for s in shards]
    # DistributedSampler pads instead: that would double-count images in a merged confusion matrix.
    padded = [list(DistributedSampler(range(n), num_replicas=world, rank=r, shuffle=False)) for r in range(world)]
    assert sum(map(len, padded)) == -(-n // world) * world


def test_shard_sampler_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\)"):
        D.ShardSampler(range(4), rank=2, world_size=2)


def test_train_sampler_reshuffles_each_epoch_without_set_epoch():
    s = D.ShuffledDistributedSampler(range(64), num_replicas=2, rank=1, shuffle=True, seed=3)
    first, second = list(s), list(s)
    assert sorted(first) != first and first != second  # shuffled, and a new order each pass
    other = D.ShuffledDistributedSampler(range(64), num_replicas=2, rank=0, shuffle=True, seed=3)
    assert not set(list(other)) & set(first)  # rank 0 and rank 1 split the same epoch's permutation
    s.set_epoch(0)
    assert list(s) == first  # an explicit set_epoch still wins


def test_wrap_model_in_one_process_only_moves_it():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    info = D.DistInfo(0, 1, 0, torch.device("cpu"))
    assert D.wrap_model(model, info, sync_bn=True) is model
    assert D.unwrap_model(model) is model


def test_fits_helpers_are_no_ops_without_a_process_group():
    from torch.utils.data import DataLoader

    model = nn.Conv2d(3, 4, 1)
    assert D.wrap_if_distributed(model, torch.device("cpu")) is model
    loader = DataLoader(list(range(4)), batch_size=2, shuffle=True)
    assert D.shard_loader(loader, train=True) is loader and D.shard_loader(None, train=False) is None
    assert D.any_rank(True, torch.device("cpu")) and not D.any_rank(False, torch.device("cpu"))
    t = torch.ones(2)
    assert D.all_reduce_sum(t) is t and t.tolist() == [1.0, 1.0]
    assert D.process_device(torch.device("cuda")) == torch.device("cuda")  # no group: no LOCAL_RANK index


def test_sync_bn_on_cpu_is_refused_with_advice():
    info = D.DistInfo(0, 2, 0, torch.device("cpu"))
    with pytest.raises(ValueError, match="drop --sync-bn"):
        D.wrap_model(nn.BatchNorm2d(4), info, sync_bn=True)


# ---------------------------------------------------------------- two real processes


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory) -> Path:
    """``torchrun --nproc_per_node=2 -m seglearn train`` on tiny synthetic scenes (gloo on the CPU)."""
    out = tmp_path_factory.mktemp("ddp") / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": ""}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "seglearn", "train", "--model", "tinyfcn", "--dataset", "synthetic", "--num-images", "20",
        "--image-size", "32", "48", "--crop", "32", "--epochs", "2", "--batch-size", "4", "--workers", "0",
        "--lr", "0.05", "--time-budget", "120", "--plan-epochs", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def test_torchrun_job_writes_run_files_once(ddp_run):
    for name in ("model.pt", "history.json", "scores.json", "curves.png"):
        assert (ddp_run / name).is_file(), name
    scores = json.loads((ddp_run / "scores.json").read_text())
    assert scores["world_size"] == 2
    history = json.loads((ddp_run / "history.json").read_text())
    assert len(history["train_loss"]) == 2
    assert history["planned_epochs"] == 2  # both ranks planned from the pace averaged over them (at most --epochs)


def test_merged_val_scores_equal_one_process_evaluate(ddp_run):
    from torch.utils.data import DataLoader

    from seglearn.data import build_dataset, eval_transforms
    from seglearn.engine import evaluate
    from seglearn.model_file import load_model

    model, meta = load_model(ddp_run / "model.pt", return_meta=True)
    # 5 val scenes: rank 0 scores 3 and rank 1 scores 2 (no padding), so only an exact merge matches.
    val = build_dataset("synthetic", "val", num_images=5, size=(32, 48), transforms=eval_transforms())
    single = evaluate(model, DataLoader(val, batch_size=2), meta["model_spec"]["num_classes"], device="cpu")
    merged = json.loads((ddp_run / "scores.json").read_text())
    assert merged["pixel_acc"] == pytest.approx(single.pixel_acc, abs=1e-9)
    assert merged["miou"] == pytest.approx(single.miou, abs=1e-9)
    assert merged["iou"] == pytest.approx(single.as_dict()["iou"], abs=1e-9, nan_ok=True)
